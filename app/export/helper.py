"""Run TuneDeck's helper (scripts/lf_helper.py) in the LLaMA-Factory container and read its answer,
with results cached on disk by a content key, so a repeated export asks again only what changed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from . import commands
from .jobs import StageFailed
from .stages import StageContext

RESULT = "@@tunedeck-result "
_NOISE = ("Warning", "warn(", "FutureWarning", "UserWarning", "DeprecationWarning", "[WARNING")


def run_helper(ctx: StageContext, label: str, *args: str) -> dict:
    """The helper's JSON answer; its progress lines go to the job log (library warnings are dropped)."""
    answers: list[str] = []

    def on_line(line: str) -> None:
        if line.startswith(RESULT):
            answers.append(line[len(RESULT):])
        elif line.strip() and not any(n in line for n in _NOISE):
            ctx.job.emit(line, label)

    ctx.tools.run(ctx.job, commands.helper_command(ctx.settings, *args), label, on_line=on_line, echo=False)
    if not answers:
        raise StageFailed(f"TuneDeck's helper in the {ctx.settings.llamafactory_service} container gave no answer.")
    return json.loads(answers[-1])


def cached(ctx: StageContext, folder: Path, key_parts: tuple, compute) -> tuple[dict, bool]:
    """(result, reused): `compute()` once per content key, stored as JSON under `folder` (in the data
    directory: written through `ctx.fs`)."""
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True, default=str).encode()).hexdigest()[:24]
    path = Path(folder) / f"{key}.json"
    try:
        return json.loads(path.read_text()), True
    except (OSError, ValueError):
        pass
    result = compute()
    ctx.fs.write_text(path, json.dumps(result))
    return result, False


def file_fingerprint(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        if Path(p).is_file():
            h.update(Path(p).name.encode())
            h.update(Path(p).read_bytes())
    return h.hexdigest()
