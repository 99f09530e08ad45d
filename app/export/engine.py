"""Runs export jobs: one at a time per data directory, each in its own thread, stage after stage.

The UI and the API only start, follow and cancel jobs here; the job runs in its own thread
so a closed browser tab never leaves a tool half-run without cleanup.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from ..config import Settings
from ..docker_gateway import DockerGateway, EngineUnavailable, ServiceUnavailable
from ..ollama import OllamaClient, OllamaError
from ..safe_fs import SafeDir, UnsafePath
from .history import History
from .jobs import Cancelled, ExportBusy, ExportJob, ExportLock, StageFailed, recover
from .plan import ExportRequest
from .runner import ToolRunner
from .stages import StageContext, convert, fidelity, imatrix, load, merge, preflight, quantize, report, verify

log = logging.getLogger(__name__)

# (stage, progress when it starts, what it runs)
PIPELINE: tuple[tuple[str, float, Callable[[StageContext], None]], ...] = (
    ("preflight", 0.0, preflight.run),
    ("merge", 0.05, merge.run),
    ("convert", 0.25, convert.run),
    ("imatrix", 0.35, imatrix.run),
    ("quantize", 0.42, quantize.run),
    ("fidelity", 0.52, fidelity.run),  # before Ollama changes: a failed helper leaves Ollama as it was
    ("load", 0.65, load.run),
    ("verify", 0.75, verify.run),
    ("report", 0.85, report.run),
)
REPORT_PIPELINE: tuple[tuple[str, float, Callable[[StageContext], None]], ...] = (
    ("preflight", 0.0, preflight.run_for_report),
    ("report", 0.1, report.run),
)
STAGES = tuple(name for name, _, _ in PIPELINE)
_EXPECTED_FAILURES = (StageFailed, OllamaError, EngineUnavailable, ServiceUnavailable, UnsafePath)


class ExportManager:
    """Starts export jobs, one at a time per data directory, and records them in History."""

    def __init__(self, settings: Settings, gateway: DockerGateway, ollama: OllamaClient,
                 history: History | None = None) -> None:
        self.settings = settings
        self.gateway = gateway
        self.ollama = ollama
        self.data_dir = Path(settings.data_dir)
        self.exports_dir = self.data_dir / "exports"
        self.fs = SafeDir(self.data_dir)
        self.history = history or History(self.data_dir / "tunedeck.db", self.data_dir)
        self.tools = ToolRunner(gateway, self.history)
        self._lock = threading.Lock()
        self._file_lock = ExportLock(self.exports_dir, self.fs)
        self._current: ExportJob | None = None
        recover(self._file_lock, self.history, gateway, self.exports_dir)

    @property
    def current(self) -> ExportJob | None:
        return self._current

    @contextmanager
    def hold(self) -> Iterator[ExportJob | None]:
        """No export starts while this is held (Storage checks and deletes files meanwhile); yields the
        export running now, or None. Keep it short: a start waits for it."""
        with self._lock:
            job = self._current
            yield job if job is not None and not job.finished else None

    def start(self, request: ExportRequest, pipeline=PIPELINE) -> ExportJob:
        """Register and start a job (blocking: SQLite; call it from a worker thread)."""
        stages = tuple(name for name, _, _ in pipeline)
        with self._lock:
            if self._current is not None and not self._current.finished:
                raise ExportBusy(
                    f"An export is already running (job {self._current.id}, stage {self._current.stage}); "
                    "wait for it to finish or cancel it."
                )
            if not self._file_lock.acquire():
                raise ExportBusy("Another TuneDeck process is exporting on this data directory; try again later.")
            try:
                job = ExportJob(uuid.uuid4().hex[:12], request, stages)
                self.history.add(job.id, request.run.name, request.summary())
            except BaseException:
                self._file_lock.release()
                raise
            self._current = job
        threading.Thread(target=self._run, args=(job, pipeline), name=f"export-{job.id}", daemon=True).start()
        return job

    def start_report(self, request: ExportRequest) -> ExportJob:
        """A quantization report on a finished export's files (the export's own stages are not rerun)."""
        return self.start(request, REPORT_PIPELINE)

    def cancel(self, job_id: str | None = None, grace: float = 3.0) -> bool:
        """Ask the job to stop; its tool gets SIGTERM, then SIGKILL after `grace` seconds."""
        job = self._current
        if job is None or job.finished or (job_id and job.id != job_id):
            return False
        job.cancel_event.set()
        job.emit("cancel requested", job.stage)
        handle = job.running_exec()
        if handle is not None:
            threading.Thread(target=handle.kill, args=(grace,), name=f"kill-{job.id}", daemon=True).start()
        return True

    def shutdown(self, timeout: float = 4.0) -> bool:
        """Cancel the running export and wait for its cleanup; True if nothing is left running."""
        job = self._current
        if job is None or job.finished:
            return True
        log.warning("shutting down: cancelling export %s (stage %s)", job.id, job.stage)
        self.cancel(job.id, grace=min(1.0, timeout / 4))
        return job.done_event.wait(timeout)

    # -- the job ------------------------------------------------------------------------
    def _run(self, job: ExportJob, pipeline) -> None:
        ctx = StageContext(job, self.settings, self.gateway, self.ollama, self.history, self.tools)
        try:
            ends = [p for _, p, _ in pipeline[1:]] + [1.0]
            for (name, progress, fn), end in zip(pipeline, ends):
                self._stage(ctx, name, progress, fn, end)
            job.status = "succeeded"
            job.progress = 1.0
            job.emit(f"export finished in {time.time() - job.started:.1f} s", "done")
        except Cancelled:
            job.status = "cancelled"
            job.error = f"Cancelled during {job.stage}."
            job.emit(job.error, job.stage)
        except _EXPECTED_FAILURES as exc:
            job.status = "failed"
            job.error = f"{job.stage} failed: {exc}"
            job.emit(job.error, job.stage)
        except Exception as exc:  # noqa: BLE001 - reported to the user and logged, never swallowed
            log.exception("export %s: unexpected error in stage %s", job.id, job.stage)
            job.status = "failed"
            job.error = f"{job.stage} failed unexpectedly: {type(exc).__name__}: {exc}"
            job.emit(job.error, job.stage)
        finally:
            if job.status != "succeeded":
                job.set_stage_status(job.stage, job.status)
                job.remove_partials(self.fs)
            try:
                self.history.update(job.id, status=job.status, stages=job.stage_seconds(), result=job.result(),
                                    error=job.error, log=job.log_text())
            except Exception:  # noqa: BLE001 - the job must still end and release the lock
                log.exception("export %s: could not record the end of the job", job.id)
            with self._lock:
                self._file_lock.release()
            job.done_event.set()

    def _stage(self, ctx: StageContext, stage: str, progress: float, fn: Callable[[StageContext], None],
               end: float = 1.0) -> None:
        job = ctx.job
        job.check_cancel()
        job.enter_stage(stage, progress, end)
        start = time.time()
        job.emit(f"— {stage} —", stage)
        try:
            fn(ctx)
        finally:  # a failed or cancelled stage still says how long it ran
            job.finish_stage(stage, time.time() - start)
        self.history.update(job.id, stages=job.stage_seconds(), log=job.log_text())
        job.check_cancel()
