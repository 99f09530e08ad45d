"""Shared by TuneDeck's helpers run in the LLaMA-Factory container: `python3 -c <common + helper> COMMAND ...`.

Progress goes to stderr; the answer is one stdout line: `@@tunedeck-result <json>`.
"""

import json
import os
import sys

RESULT = "@@tunedeck-result "


def say(*args):
    print(*args, file=sys.stderr, flush=True)


def answer(obj):
    print(RESULT + json.dumps(obj), flush=True)


def tokenizer_of(*folders):
    from transformers import AutoTokenizer

    for folder in folders:
        if folder and any(os.path.isfile(os.path.join(folder, f)) for f in ("tokenizer.json", "tokenizer.model",
                                                                             "tokenizer_config.json")):
            return AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    raise SystemExit(f"no tokenizer in {folders}")
