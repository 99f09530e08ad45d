"""The tiny-model zoo built by .ci/setup.sh (tests/tools/make_zoo.py), installed into a data dir.

Models are hard-linked (read-only use); runs and datasets are copied with the zoo's absolute
paths rewritten to the data dir, as if they had been trained there.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .parts import require

FAMILIES = {  # family: (template, stop tokens its template ends turns with)
    "llama3": ("llama3", {"<|eot_id|>", "<|eom_id|>"}),
    "qwen2": ("qwen", {"<|im_end|>"}),
    "llama2": ("llama2", {"</s>"}),
}
TEXT_SUFFIXES = {".json", ".yaml", ".yml", ".md", ".jsonl", ".jinja", ".txt"}


def zoo_dir() -> Path:
    zoo = os.environ.get("TUNEDECK_ZOO", "")
    require("model zoo", bool(zoo) and Path(zoo, ".done").exists(), "run `bash tests/run.sh`, which builds it")
    return Path(zoo)


def zoo_facts() -> dict:
    return json.loads((zoo_dir() / "zoo.json").read_text())


def install(data_dir: Path, families=tuple(FAMILIES)) -> None:
    zoo = zoo_dir()
    data_dir.mkdir(parents=True, exist_ok=True)
    for family in families:
        shutil.copytree(zoo / "models" / family, data_dir / "models" / family, copy_function=os.link,
                        dirs_exist_ok=True)
        shutil.copytree(zoo / "saves" / family, data_dir / "saves" / family, dirs_exist_ok=True)
    shutil.copytree(zoo / "data", data_dir / "data", dirs_exist_ok=True)
    for root in (data_dir / "saves", data_dir / "data"):
        for path in root.rglob("*"):
            if path.is_file() and path.suffix in TEXT_SUFFIXES and path.stat().st_size < 4 << 20:
                text = path.read_text(encoding="utf-8", errors="surrogateescape")
                if str(zoo) in text:
                    path.write_text(text.replace(str(zoo), str(data_dir)), encoding="utf-8", errors="surrogateescape")
