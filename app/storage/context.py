"""What decides safety besides the files themselves: the export history, the running export, and each
run's training state and losses. Read from small files and SQLite; no Docker."""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..runs import has_adapter, has_model, prior_adapters, read_json, read_yaml, tail_text
from ..training.status import derive_status
from ..training.trainer_log import TrainerLogReader

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
STILL_TRAINING = ("running", "starting")


def overlaps(a: Path, b: Path) -> bool:
    """One path is the other or inside it."""
    return a == b or a in b.parents or b in a.parents


@dataclass(frozen=True)
class RunningExport:
    """The export running now, and every path it reads or writes."""

    job: str
    stage: str
    workdir: Path | None            # None while it plans: its folder is not known yet
    uses: tuple[Path, ...] = ()     # the run (or checkpoint), its run folder, prior adapters, a local base
    targets: tuple[str, ...] = ()   # the Ollama names it creates

    @classmethod
    def of(cls, job) -> "RunningExport | None":
        """From an `ExportJob` that has not finished (None otherwise)."""
        if job is None or job.finished:
            return None
        req = job.request
        source = Path(req.run.path)  # the run's folder, or one of its checkpoints
        uses = [source.parent if CHECKPOINT.match(source.name) else source, *map(Path, req.run.prior_adapters)]
        if os.path.isabs(req.base_model):
            uses.append(Path(req.base_model))
        plan = job.plan
        targets = tuple(t.name for t in plan.targets) if plan is not None else (req.ollama_name,)
        return cls(job.id, job.stage, Path(plan.workdir).resolve() if plan is not None else None,
                   tuple(p.resolve() for p in uses), targets)

    def conflict(self, path: Path, exports_dir: Path) -> str | None:
        """Why `path` (resolved) must not be deleted while this export runs; None when it is not used."""
        if self.workdir is None and overlaps(path, exports_dir):
            return f"an export is being planned (job {self.job}, {self.stage}) and may use it; try again in a moment"
        if self.workdir is not None and overlaps(path, self.workdir):
            return f"the running export (job {self.job}, {self.stage}) uses this export folder"
        for used in self.uses:
            if overlaps(path, used):
                return f"the running export (job {self.job}, {self.stage}) reads {used.name}"
        return None


@dataclass
class RunFacts:
    """One training run: its state (derive_status) and what ranks its checkpoints."""

    rel: str
    state: str
    age_s: float | None
    losses: dict[int, float] = field(default_factory=dict)
    eval_losses: dict[int, float] = field(default_factory=dict)
    trainer_best: int | None = None
    has_final: bool = True


_LOGS: dict[str, tuple[tuple[int, int], TrainerLogReader]] = {}  # trainer_log.jsonl read once per version
_LOGS_LOCK = threading.Lock()


def trainer_log(path: Path) -> TrainerLogReader:
    """The run's log, read in full once per (size, mtime): later scans reuse it."""
    try:
        st = path.stat()
        version = (st.st_size, st.st_mtime_ns)
    except OSError:
        version = (-1, -1)
    with _LOGS_LOCK:
        known = _LOGS.get(str(path))
        if known is not None and known[0] == version:
            return known[1]
    reader = TrainerLogReader(path)
    reader.read_new()
    with _LOGS_LOCK:
        if len(_LOGS) > 4096:
            _LOGS.clear()
        _LOGS[str(path)] = (version, reader)
    return reader


def run_facts(data_dir: Path, rel: str, checkpoint_steps: list[int], now: float | None = None) -> RunFacts:
    """The run's state as the Runs tab derives it, and (when it has checkpoints to rank) its losses."""
    path = Path(data_dir) / rel
    log = path / "trainer_log.jsonl"
    reader = trainer_log(log)
    try:
        mtime = (log if log.exists() else path / "running_log.txt").stat().st_mtime
    except OSError:
        mtime = None
    age = None if mtime is None else (now or time.time()) - mtime
    state = derive_status(last=reader.last, has_results=(path / "train_results.json").exists(), log_age_s=age,
                          running_log_tail=tail_text(path / "running_log.txt"))
    facts = RunFacts(rel, state, age, has_final=has_adapter(path) or has_model(path))
    if len(checkpoint_steps) < 2:
        return facts
    for key, target in (("loss", facts.losses), ("eval_loss", facts.eval_losses)):
        steps, values = reader.series[key]
        target.update({int(s): v for s, v in zip(steps, values)})
    states = [path / "trainer_state.json"] + [path / f"checkpoint-{s}" / "trainer_state.json"
                                              for s in sorted(checkpoint_steps, reverse=True)]
    for state_file in states:
        data = read_json(state_file)
        if not data:
            continue
        best = CHECKPOINT.match(Path(str(data.get("best_model_checkpoint") or "")).name)
        facts.trainer_best = int(best.group(1)) if best else None
        if not facts.losses:  # no trainer_log.jsonl: the trainer's own log history
            for record in data.get("log_history") or []:
                for key, target in (("loss", facts.losses), ("eval_loss", facts.eval_losses)):
                    value, step = record.get(key), record.get("step")
                    if isinstance(value, (int, float)) and isinstance(step, int):
                        target[step] = float(value)
        break
    return facts


def trained_on_top(data_dir: Path, run_rels: list[str]) -> dict[Path, str]:
    """Adapters other runs were trained on top of (LLaMA Board's adapter_name_or_path): resolved path → run."""
    used: dict[Path, str] = {}
    for rel in run_rels:
        args = read_yaml(Path(data_dir) / rel / "training_args.yaml")
        for adapter in prior_adapters(args):
            path = Path(adapter) if os.path.isabs(adapter) else Path(data_dir) / adapter
            used[path.resolve()] = rel
    return used


@dataclass
class ExportRow:
    """What one history row says about its export folder."""

    job: str
    status: str
    created: float
    verdict: str | None
    gguf: str | None

    def as_fact(self, workdir: Path) -> dict:
        return {"job": self.job, "status": self.status, "verdict": self.verdict, "gguf": self.gguf,
                "gguf_present": bool(self.gguf) and (workdir / self.gguf).is_file()}


def export_rows(rows: list[dict], data_dir: Path) -> dict[Path, list[ExportRow]]:
    """History rows by the export folder they name (resolved), oldest first."""
    root = Path(data_dir).resolve()
    out: dict[Path, list[ExportRow]] = {}
    real: dict[str, Path] = {}
    for row in sorted(rows, key=lambda r: r.get("created") or 0):
        result = row.get("result") or {}
        workdir = result.get("workdir")
        if not isinstance(workdir, str) or not workdir:
            continue
        if workdir not in real:
            path = Path(workdir)
            real[workdir] = (path if path.is_absolute() else root / path).resolve()
        path = real[workdir]
        fidelity = result.get("fidelity") or {}
        gguf = (fidelity.get("gguf") or {}).get("file")
        out.setdefault(path, []).append(ExportRow(row["id"], row.get("status") or "", row.get("created") or 0,
                                                  fidelity.get("verdict"), gguf if isinstance(gguf, str) else None))
    return out
