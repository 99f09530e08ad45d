"""Discover finished LoRA runs under `<data>/saves/` (pure filesystem reads, no Docker)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
MAX_DEPTH = 8


@dataclass(frozen=True)
class RunInfo:
    name: str            # path relative to saves/, e.g. "Qwen2-0.5B/lora/train_2026-11-28"
    path: str            # absolute path of the run folder
    base_model: str
    template: str
    finetuning_type: str
    finished_at: float   # mtime of the adapter weights
    last_loss: float | None

    def as_dict(self) -> dict:
        """JSON for the API; `folder`, not `path`, since gradio_client treats `path` keys as files."""
        d = asdict(self)
        d["folder"] = d.pop("path")
        return d


def is_run_dir(path: Path) -> bool:
    return (path / "adapter_config.json").is_file() and any((path / w).is_file() for w in ADAPTER_WEIGHTS)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, yaml.YAMLError):
        return {}


def last_loss(log_path: Path, tail_bytes: int = 65536) -> float | None:
    """The last finite `loss` in trainer_log.jsonl, reading only the file's tail."""
    try:
        with open(log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - tail_bytes))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            value = json.loads(line).get("loss")
        except (ValueError, AttributeError):
            continue
        if isinstance(value, (int, float)) and math.isfinite(value):
            return float(value)
    return None


def read_run(saves: Path, path: Path) -> RunInfo:
    adapter = _read_json(path / "adapter_config.json")
    args = _read_yaml(path / "training_args.yaml")
    weights = next(path / w for w in ADAPTER_WEIGHTS if (path / w).is_file())
    base = args.get("model_name_or_path") or adapter.get("base_model_name_or_path") or ""
    return RunInfo(
        name=str(path.relative_to(saves)),
        path=str(path),
        base_model=str(base),
        template=str(args.get("template") or ""),
        finetuning_type=str(args.get("finetuning_type") or "lora"),
        finished_at=weights.stat().st_mtime,
        last_loss=last_loss(path / "trainer_log.jsonl"),
    )


def discover_runs(data_dir: Path) -> list[RunInfo]:
    """Every run folder under saves/ at any depth (not descending into a run), newest first."""
    saves = Path(data_dir) / "saves"
    runs: list[RunInfo] = []
    if not saves.is_dir():
        return runs
    root_depth = len(saves.parts)
    for dirpath, dirnames, _ in os.walk(saves, followlinks=False):
        here = Path(dirpath)
        if is_run_dir(here):
            runs.append(read_run(saves, here))
            dirnames.clear()
            continue
        if len(here.parts) - root_depth >= MAX_DEPTH:
            dirnames.clear()
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    runs.sort(key=lambda r: r.finished_at, reverse=True)
    return runs


def find_run(data_dir: Path, name: str) -> RunInfo | None:
    from .validation import InvalidInput, confine

    saves = Path(data_dir) / "saves"
    try:
        path = confine(saves, name, "Run")
    except InvalidInput:
        raise InvalidInput(f"Run {name!r} is outside {saves}.") from None
    if not path.is_dir() or not is_run_dir(path):
        return None
    return read_run(saves.resolve(), path)
