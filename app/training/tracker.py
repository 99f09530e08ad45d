"""Every training run under saves/: a summary row each and their curves, updated incrementally."""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from ..runs import base_model_of, checkpoints, discover_run_dirs, is_exportable, loss_at, read_yaml, tail_text
from .status import derive_status, finite
from .trainer_log import TrainerLogReader

MAX_POINTS = 1500  # per series, what the browser plots
COLUMNS = ["run", "base model", "stage", "status", "progress %", "steps", "epoch", "last loss", "elapsed",
           "remaining", "throughput", "checkpoints"]


@dataclass(frozen=True)
class TrainingRun:
    name: str
    path: str
    base_model: str
    stage: str
    status: str
    progress: float | None
    steps: str
    epoch: float | None
    last_loss: float | None
    elapsed: str
    remaining: str
    throughput: float | None
    updated: float
    exportable: bool = False  # holds a LoRA adapter or model weights, or a checkpoint of either
    checkpoints: tuple = ()   # ({"name", "step", "loss"}, …): exportable as `<run>/checkpoint-N`

    def row(self) -> list:
        return [self.name, self.base_model, self.stage, self.status,
                "" if self.progress is None else round(self.progress, 1), self.steps,
                "" if self.epoch is None else round(self.epoch, 2),
                "" if self.last_loss is None else round(self.last_loss, 4), self.elapsed, self.remaining,
                "" if self.throughput is None else round(self.throughput, 1),
                ", ".join(f"{c['step']}" + ("" if c["loss"] is None else f" (loss {c['loss']:.3f})")
                          for c in self.checkpoints)]

    def as_dict(self) -> dict:
        d = asdict(self)
        d["folder"] = d.pop("path")
        d["checkpoints"] = [dict(c) for c in self.checkpoints]
        return d


def decimate(df: pd.DataFrame, limit: int = MAX_POINTS) -> pd.DataFrame:
    """Keep at most `limit` evenly spaced points (and always the newest)."""
    if len(df) <= limit:
        return df
    step = len(df) / limit
    idx = sorted({int(i * step) for i in range(limit)} | {len(df) - 1})
    return df.iloc[idx]


class RunTracker:
    """Holds one incremental log reader per run, so a refresh reads only what was appended."""

    def __init__(self, data_dir: Path) -> None:
        self.saves = Path(data_dir) / "saves"
        self._readers: dict[str, TrainerLogReader] = {}
        self._lock = threading.Lock()

    def _reader(self, path: Path) -> TrainerLogReader:
        key = str(path)
        if key not in self._readers:
            self._readers[key] = TrainerLogReader(path / "trainer_log.jsonl")
        return self._readers[key]

    def scan(self) -> list[TrainingRun]:
        now = time.time()
        runs: list[TrainingRun] = []
        with self._lock:
            for path in discover_run_dirs(self.saves):
                reader = self._reader(path)
                reader.read_new()
                last = reader.last
                log = path / "trainer_log.jsonl"
                try:
                    age_source = log if log.exists() else path / "running_log.txt"
                    mtime = age_source.stat().st_mtime
                except OSError:
                    mtime = path.stat().st_mtime
                status = derive_status(last=last, has_results=(path / "train_results.json").exists(),
                                       log_age_s=now - mtime, running_log_tail=tail_text(path / "running_log.txt"))
                args = read_yaml(path / "training_args.yaml")
                cur, total = (last or {}).get("current_steps"), (last or {}).get("total_steps")
                progress = finite((last or {}).get("percentage"))
                if progress is None and isinstance(cur, (int, float)) and total:
                    progress = 100.0 * cur / total
                runs.append(TrainingRun(
                    name=str(path.relative_to(self.saves)),
                    path=str(path),
                    base_model=base_model_of(path),
                    stage=f"{args.get('stage', '?')}/{args.get('finetuning_type', '?')}" if args else "",
                    status=status,
                    progress=100.0 if status == "finished" else progress,
                    steps=f"{cur}/{total}" if last else "",
                    epoch=finite((last or {}).get("epoch")),
                    last_loss=reader.latest.get("loss"),
                    elapsed=str((last or {}).get("elapsed_time", "")),
                    remaining="" if status != "running" else str((last or {}).get("remaining_time", "")),
                    throughput=reader.latest.get("throughput"),
                    updated=mtime,
                    exportable=is_exportable(path),
                    checkpoints=tuple({"name": str(p.relative_to(self.saves)), "step": step,
                                       "loss": loss_at(reader.losses, step)} for step, p in checkpoints(path)),
                ))
            known = {r.path for r in runs}
            for key in list(self._readers):
                if key not in known:
                    del self._readers[key]
        runs.sort(key=lambda r: r.updated, reverse=True)
        return runs

    def frame(self, runs: list[TrainingRun]) -> pd.DataFrame:
        return pd.DataFrame([r.row() for r in runs], columns=COLUMNS)

    def curves(self, names: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(loss and eval_loss against step, learning rate against step) for the chosen runs."""
        loss_parts, lr_parts = [], []
        with self._lock:
            for name in names:
                reader = self._readers.get(str(self.saves / name))
                if reader is None:
                    continue
                for key in ("loss", "eval_loss"):
                    steps, values = reader.series[key]
                    if steps:
                        df = pd.DataFrame({"step": steps, "value": values})
                        df["series"] = f"{name} · {key}"
                        loss_parts.append(decimate(df))
                steps, values = reader.series["lr"]
                if steps:
                    df = pd.DataFrame({"step": steps, "value": values})
                    df["series"] = name
                    lr_parts.append(decimate(df))
        empty = pd.DataFrame({"step": pd.Series(dtype=float), "value": pd.Series(dtype=float),
                              "series": pd.Series(dtype=str)})
        loss = pd.concat(loss_parts, ignore_index=True) if loss_parts else empty
        lr = pd.concat(lr_parts, ignore_index=True) if lr_parts else empty.copy()
        return loss, lr

    def points(self, name: str) -> int:
        reader = self._readers.get(str(self.saves / name))
        return reader.count if reader else 0
