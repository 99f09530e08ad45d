"""The evaluation text of an export: a deterministic slice of the run's own training data.

The run's arguments (training_args.yaml, else its model card) name its datasets; LLaMA-Factory's
`dataset_info.json` in the run's dataset dir maps them to files and columns. Examples are taken
in the order of their content hash (independent of file order), rendered as plain text for
llama.cpp's perplexity and imatrix tools. When the data cannot be reached from TuneDeck, fixed
text is used and the report says so.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..runs import datasets_of
from .validation import InvalidInput, confine

TARGET_CHARS = 9000        # ~2,000 tokens: 12 chunks of 128 for llama-perplexity
MIN_CHARS = 3000           # below this, fixed text fills up
MAX_FILE_BYTES = 256 << 20
FIXED_TEXT = (
    "The river rose through the night and by morning the low fields were under water. Farmers moved their "
    "animals to the hill pastures, where the grass was thin but dry. In the village the baker kept his ovens "
    "burning, and people came for bread and news. Some said the bridge would hold; others had seen the "
    "water reach the second arch and doubted it. By noon the rain stopped, the clouds broke apart, and the "
    "light came down on the flooded plain like a sheet of hammered metal.\n"
    "A good explanation starts with what the reader already knows. It names the problem, shows one example "
    "in full, and only then generalises. Numbers help: saying that a process takes three steps and ten "
    "minutes is clearer than saying it is quick. When a rule has exceptions, state the rule first, then the "
    "exceptions, each with the reason it exists.\n"
    "Question: What is the capital of France? Answer: Paris.\nQuestion: How many legs does a spider have? "
    "Answer: Eight.\nQuestion: Which gas do plants take in? Answer: Carbon dioxide.\n"
)


@dataclass
class EvalSet:
    examples: list[list[dict]]            # conversations (role/content), in hash order
    source: str                           # one sentence: where the text came from
    from_run: bool
    text: str = ""
    calibration: str = ""                 # all examples (capped), for llama-imatrix
    notes: list[str] = field(default_factory=list)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def _conversations(rows: list, entry: dict) -> list[list[dict]]:
    """LLaMA-Factory's converters, reduced to text: alpaca and sharegpt/openai records → messages."""
    formatting = entry.get("formatting", "alpaca")
    columns = entry.get("columns") or {}
    tags = entry.get("tags") or {}
    out = []
    for r in rows:
        if not isinstance(r, dict):
            continue
        if formatting == "alpaca":
            prompt = r.get(columns.get("prompt", "instruction"))
            query = r.get(columns.get("query", "input")) or ""
            response = r.get(columns.get("response", "output"))
            system = r.get(columns["system"]) if columns.get("system") else ""
            if not isinstance(prompt, str) or not isinstance(response, str):
                continue
            user = "\n".join(p for p in (prompt, query) if p)
            conv = ([{"role": "system", "content": system}] if system else []) + \
                [{"role": "user", "content": user}, {"role": "assistant", "content": response}]
        else:
            turns = r.get(columns.get("messages", "conversations" if formatting == "sharegpt" else "messages"))
            if not isinstance(turns, list):
                continue
            role_tag, content_tag = tags.get("role_tag", "from" if formatting == "sharegpt" else "role"), \
                tags.get("content_tag", "value" if formatting == "sharegpt" else "content")
            names = {tags.get("user_tag", "human" if formatting == "sharegpt" else "user"): "user",
                     tags.get("assistant_tag", "gpt" if formatting == "sharegpt" else "assistant"): "assistant",
                     tags.get("system_tag", "system"): "system"}
            conv = [{"role": names[t[role_tag]], "content": str(t.get(content_tag, ""))} for t in turns
                    if isinstance(t, dict) and t.get(role_tag) in names]
            if not any(m["role"] == "assistant" for m in conv):
                continue
        out.append(conv)
    return out


def render(conv: list[dict]) -> str:
    return "\n".join(m["content"] for m in conv if m["content"]) + "\n\n"


def _load_rows(path: Path) -> list:
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ValueError(f"{path.name} is larger than {MAX_FILE_BYTES >> 20} MiB")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    data = json.loads(text)
    return data if isinstance(data, list) else []


def run_examples(data_dir: Path, run_dir: Path) -> tuple[list[list[dict]], str]:
    """(conversations, one sentence on their source) — empty list when the data is unreachable."""
    names, dataset_dir = datasets_of(run_dir)
    if not names:
        return [], "the run does not record which dataset it was trained on"
    base = Path(dataset_dir) if Path(dataset_dir or "data").is_absolute() else Path(data_dir) / (dataset_dir or "data")
    try:
        folder = confine(data_dir, str(base), "Dataset dir")
        info = json.loads((folder / "dataset_info.json").read_text(encoding="utf-8"))
    except (InvalidInput, OSError, ValueError):
        return [], f"its dataset dir {base} is not readable inside the data directory"
    convs: list[list[dict]] = []
    for name in names:
        entry = info.get(name) if isinstance(info, dict) else None
        if not isinstance(entry, dict) or not entry.get("file_name"):
            return [], f"dataset {name!r} is not a local file in {folder / 'dataset_info.json'}"
        try:
            path = confine(data_dir, str(folder / entry["file_name"]), "Dataset file")
            convs += _conversations(_load_rows(path), entry)
        except (InvalidInput, OSError, ValueError) as exc:
            return [], f"dataset {name!r} could not be read ({exc})"
    if not convs:
        return [], f"the datasets {', '.join(names)} hold no usable examples"
    return convs, f"{', '.join(names)} (the run's own training data)"


def eval_set(data_dir: Path, run_dir: Path) -> EvalSet:
    convs, source = run_examples(data_dir, run_dir)
    convs.sort(key=lambda c: hashlib.sha256(json.dumps(c, sort_keys=True).encode()).hexdigest())
    text, used = "", 0
    for conv in convs:
        if len(text) >= TARGET_CHARS:
            break
        text += render(conv)
        used += 1
    calibration = "".join(render(c) for c in convs)[: TARGET_CHARS * 8]
    notes = []
    if not convs:
        notes.append(f"fixed text was used: {source}")
    elif len(text) < MIN_CHARS:
        notes.append(f"the run's data gave only {len(text)} characters; fixed text fills up the rest")
    while len(text) < MIN_CHARS * 2:
        text += FIXED_TEXT
    if len(calibration) < MIN_CHARS * 2:
        calibration = text
    described = f"{used} examples of {source}" if convs else "fixed text"
    return EvalSet(convs, described, bool(convs), text, calibration, notes)
