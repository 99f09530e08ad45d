"""A training job's files in the data dir: `training/<job>/config-<attempt>.yaml` (what the trainer reads) and
`train.log` (its output, and TuneDeck's own lines). The trainer's own command copies the config into a new
run as `training_args.yaml` (commands.py)."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from ..runs import tail_text
from ..safe_fs import SafeDir
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


class JobFiles:
    """Every write goes through the data dir's SafeDir: no link planted by a tool container is followed."""

    def __init__(self, data_dir: Path) -> None:
        self.fs = SafeDir(data_dir)
        self.jobs_dir = Path(data_dir) / "training"

    def log_path(self, job_id: str) -> Path:
        return self.jobs_dir / job_id / "train.log"

    def prepare(self, job: TrainJob, where: str) -> Path:
        """The attempt's config file; the log says how the attempt starts."""
        folder = self.jobs_dir / job.id
        config = job.request["config"]
        config_path = folder / f"config-{job.attempt}.yaml"
        self.fs.write_text(config_path, config_yaml(config))
        how = f"resuming from {Path(job.resume_from).name}" if job.resume_from else "from the start"
        self.append(job.id, f"[tunedeck] attempt {job.attempt}, {how}, on {where}\n")
        return config_path

    def append(self, job_id: str, text: str) -> None:
        try:
            with self.appender(job_id) as f:
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
        try:
            fd = self.fs.open_fd(self.log_path(job_id), os.O_RDWR | os.O_CREAT)
            with os.fdopen(fd, "r+b") as f:
                f.seek(offset)
                f.truncate()
                f.write(text.encode("utf-8", "replace"))
        except OSError as exc:
            log.warning("training job %s: cannot write its log: %s", job_id, exc)

    def appender(self, job_id: str):
        """The log opened for appending (a Ray job's output as it is followed); the caller closes it."""
        fd = self.fs.open_fd(self.log_path(job_id), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        return os.fdopen(fd, "a", encoding="utf-8")

    def text(self, job_id: str, tail: int = LOG_TAIL) -> str:
        """The last `tail` bytes of the log, from a line start, progress redraws collapsed."""
        return collapse_redraws(tail_text(self.log_path(job_id), tail, whole_lines=True))
