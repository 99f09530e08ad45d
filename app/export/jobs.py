"""The export job model, the per-data-directory lock, and crash recovery.

A job is shared between its worker thread (which mutates it) and any number of viewers
(UI streams, API streams): every read a viewer makes goes through a copy taken under the
job's lock.
"""

from __future__ import annotations

import copy
import fcntl
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..safe_fs import SafeDir, UnsafePath
from .plan import ExportPlan, ExportRequest
from .progress import without_bar

if TYPE_CHECKING:
    from ..docker_gateway import DockerGateway, ExecHandle
    from .history import History

MAX_LOG_LINES = 20_000
log = logging.getLogger(__name__)


class ExportBusy(Exception):
    """Another export is running on this data directory."""


class StageFailed(Exception):
    """A stage cannot go on; the message is one sentence for the user."""


class Cancelled(Exception):
    pass


@dataclass
class ExportJob:
    id: str
    request: ExportRequest
    stages: tuple[str, ...]
    plan: ExportPlan | None = None
    status: str = "running"
    stage: str = "preflight"
    progress: float = 0.0
    error: str = ""
    started: float = field(default_factory=time.time)
    cancel_event: threading.Event = field(default_factory=threading.Event)
    done_event: threading.Event = field(default_factory=threading.Event)
    _stage_times: dict = field(default_factory=dict)
    _stage_status: dict = field(default_factory=dict)
    _result: dict = field(default_factory=dict)
    _lines: list = field(default_factory=list)
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _exec: ExecHandle | None = None
    _partials: list = field(default_factory=list)
    _dropped: int = 0           # log lines dropped at the front (past MAX_LOG_LINES)
    activity: str = ""          # the running tool's progress line (a redrawn bar), with its ETA
    _span: tuple = (0.0, 0.0)   # progress at the start of this stage and at the start of the next

    # -- log ----------------------------------------------------------------------------
    def emit(self, text: str, stage: str | None = None) -> None:
        prefix = f"[{stage or self.stage}] "
        with self._lock:
            for line in str(text).splitlines() or [""]:
                self._lines.append(prefix + line)
            if len(self._lines) > MAX_LOG_LINES:
                # a quarter at once: a viewer's log then only grows at the end (sent as an append) for the
                # next 5,000 lines, instead of changing at the front, and being sent whole, at every line
                cut = len(self._lines) - MAX_LOG_LINES + MAX_LOG_LINES // 4
                self._dropped += cut
                del self._lines[:cut]

    def log_text(self) -> str:
        with self._lock:
            head = [f"[log] … {self._dropped} earlier lines are not kept"] if self._dropped else []
            return "\n".join(head + self._lines)

    def line_count(self) -> int:
        """Every line emitted so far, kept or not: it only grows, so a viewer can tell a new line by it."""
        with self._lock:
            return self._dropped + len(self._lines)

    # -- state --------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.done_event.is_set()

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def check_cancel(self) -> None:
        if self.cancel_event.is_set():
            raise Cancelled()

    def enter_stage(self, stage: str, progress: float, end: float | None = None) -> None:
        with self._lock:
            self.stage = stage
            self.progress = progress
            self._span = (progress, max(progress, end if end is not None else progress))
            self.activity = ""
            self._stage_status[stage] = "running"

    def tool_progress(self, fraction: float, line: str, eta: str | None = None) -> None:
        """The running tool reported `fraction` of its work: the stage's share of the bar moves with it
        (never backwards), and its line is shown in place instead of filling the log."""
        start, end = self._span
        with self._lock:
            self.progress = max(self.progress, start + (end - start) * max(0.0, min(fraction, 1.0)))
            self.activity = without_bar(line.strip())[:300] + (f" · ETA {eta}" if eta else "")

    def set_stage_status(self, stage: str, state: str) -> None:
        with self._lock:
            self._stage_status[stage] = state

    def stage_state(self, stage: str) -> str:
        with self._lock:
            return self._stage_status.get(stage, "pending")

    def finish_stage(self, stage: str, seconds: float) -> None:
        with self._lock:
            self._stage_times[stage] = seconds
            if self._stage_status.get(stage) == "running":  # a stage may have said "reused" or "skipped"
                self._stage_status[stage] = "done"

    def stage_seconds(self) -> dict[str, float]:
        with self._lock:
            return {s: round(self._stage_times[s], 2) for s in self.stages if s in self._stage_times}

    def set_result(self, key: str, value) -> None:
        with self._lock:
            self._result[key] = value

    def update_result(self, key: str, **items) -> None:
        """Merge `items` into the dict result[key]."""
        with self._lock:
            self._result.setdefault(key, {}).update(items)

    def result(self) -> dict:
        """A deep copy: the worker thread keeps mutating the live one."""
        with self._lock:
            return copy.deepcopy(self._result)

    def summary(self) -> dict:
        with self._lock:
            return {
                "job_id": self.id, "status": self.status, "stage": self.stage, "progress": round(self.progress, 3),
                "activity": self.activity if not self.finished else "",
                "error": self.error, "stages": {s: self._stage_status.get(s, "pending") for s in self.stages},
                "stage_seconds": self.stage_seconds(), "result": copy.deepcopy(self._result),
            }

    # -- the running tool and what it is writing ---------------------------------------------
    def attach_exec(self, handle: ExecHandle | None) -> None:
        with self._lock:
            self._exec = handle

    def running_exec(self) -> ExecHandle | None:
        with self._lock:
            return self._exec

    def add_partial(self, path: Path) -> Path:
        """Register a path the current stage writes; removed if the job does not succeed."""
        with self._lock:
            self._partials.append(Path(path))
        return Path(path)

    def remove_partials(self, fs: SafeDir) -> list[Path]:
        """Remove what the stages registered, never following a link (a planted link is removed itself)."""
        with self._lock:
            partials, self._partials = list(self._partials), []
        removed = []
        for p in partials:
            try:
                if not fs.remove(p):
                    continue
            except (OSError, UnsafePath) as exc:
                log.warning("export %s: could not remove %s: %s", self.id, p, exc)
                self.emit(f"could not remove partial output {p.name}: {exc}", "cleanup")
                continue
            removed.append(p)
            self.emit(f"removed partial output {p.name}", "cleanup")
        return removed


class ExportLock:
    """An exclusive flock on `<exports>/.export.lock`: one export per data directory, across processes."""

    def __init__(self, exports_dir: Path, fs: SafeDir) -> None:
        self.exports_dir = Path(exports_dir)
        self.fs = fs
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = self.fs.open_fd(self.exports_dir / ".export.lock", os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def recover(lock: ExportLock, history: History, gateway: DockerGateway, exports_dir: Path) -> None:
    """After a crash: stop tools left running, mark their jobs interrupted, delete half-written outputs
    (walking by descriptors: a link planted under exports/ is removed, never entered)."""
    if not lock.acquire():
        return  # another process is exporting right now
    try:
        for job in history.running():
            tool = (job["result"] or {}).get("tool") or {}
            if tool.get("container") and tool.get("pid"):
                try:
                    gateway.kill_tool(tool["container"], int(tool["pid"]))
                except Exception as exc:  # noqa: BLE001 - the container may be gone already
                    log.info("could not stop the tool of interrupted job %s: %s", job["id"], exc)
        count = history.mark_interrupted()
        if count:
            log.warning("%d export(s) were interrupted by the previous app process", count)
        for name in lock.fs.remove_named(exports_dir, ".partial"):
            log.info("removed the half-written %s", name)
    finally:
        lock.release()
