"""A training job's files in the data dir: `training/<job>/config-<attempt>.yaml` (what the trainer reads),
`train.log` (its output, and TuneDeck's own lines), and the run's `training_args.yaml` (as LLaMA Board
writes it, so the Runs and Export tabs know the run's template and "Train again" works on it)."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from .jobs import TrainJob
from .request import config_yaml

log = logging.getLogger(__name__)
LOG_TAIL = 64 * 1024
_ERROR_LINE = re.compile(r"^(\w+(Error|Exception)|RuntimeError|ValueError|AssertionError|KeyError)\b.*"
                         r"|.*\b(Error|error):")


def collapse_redraws(text: str) -> str:
    """A progress bar redrawn with `\\r` shows as its newest state only."""
    return "\n".join(line.rsplit("\r", 1)[-1] if "\r" in line.rstrip("\r") else line.rstrip("\r")
                     for line in text.split("\n"))


def error_line(text: str) -> str:
    """The last line of a trainer's output that states an error ("" if none)."""
    return next((ln.strip() for ln in reversed(text.splitlines()) if _ERROR_LINE.match(ln.strip())), "")


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


class JobFiles:
    def __init__(self, jobs_dir: Path) -> None:
        self.jobs_dir = Path(jobs_dir)

    def log_path(self, job_id: str) -> Path:
        return self.jobs_dir / job_id / "train.log"

    def prepare(self, job: TrainJob, where: str) -> Path:
        """The attempt's config file and the run's training_args.yaml; the log says how the attempt starts."""
        folder = self.jobs_dir / job.id
        folder.mkdir(parents=True, exist_ok=True)
        if folder.is_symlink() or self.jobs_dir.is_symlink():
            raise OSError(f"{folder} is a symbolic link; TuneDeck does not write through links")
        config = job.request["config"]
        config_path = folder / f"config-{job.attempt}.yaml"
        _write(config_path, config_yaml(config))
        self.write_run_args(Path(job.output_dir), config)
        how = f"resuming from {Path(job.resume_from).name}" if job.resume_from else "from the start"
        self.append(job.id, f"[tunedeck] attempt {job.attempt}, {how}, on {where}\n")
        return config_path

    def write_run_args(self, out: Path, config: dict) -> None:
        """training_args.yaml in a new run folder (one the trainer already wrote keeps its own: it may belong to
        the tool containers' user, and the job's config is in the job's folder anyway)."""
        try:
            out.mkdir(parents=True, exist_ok=True)
            if not (out / "training_args.yaml").exists():
                _write(out / "training_args.yaml", config_yaml({k: v for k, v in config.items()
                                                                if k != "resume_from_checkpoint"}))
        except OSError as exc:
            log.warning("cannot write training_args.yaml into %s: %s", out, exc)

    def append(self, job_id: str, text: str) -> None:
        try:
            (self.jobs_dir / job_id).mkdir(parents=True, exist_ok=True)
            with open(self.log_path(job_id), "a", encoding="utf-8") as f:
                f.write(text)
        except OSError as exc:
            log.warning("training job %s: cannot write its log: %s", job_id, exc)

    def size(self, job_id: str) -> int:
        try:
            return self.log_path(job_id).stat().st_size
        except OSError:
            return 0

    def replace_from(self, job_id: str, offset: int, text: str) -> None:
        """Everything after `offset` becomes `text` (a Ray job's complete output replaces what was followed)."""
        path = self.log_path(job_id)
        try:
            with open(path, "r+b" if path.exists() else "wb") as f:
                f.seek(offset)
                f.truncate()
                f.write(text.encode("utf-8", "replace"))
        except OSError as exc:
            log.warning("training job %s: cannot write its log: %s", job_id, exc)

    def text(self, job_id: str, tail: int = LOG_TAIL) -> str:
        """The last `tail` bytes of the log, from a line start, progress redraws collapsed."""
        try:
            with open(self.log_path(job_id), "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - tail))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        if size > tail:
            text = text.split("\n", 1)[-1]
        return collapse_redraws(text)
