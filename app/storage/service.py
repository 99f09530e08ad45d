"""The app's long-lived storage part: one scan at a time (callers during a scan share its result), the
delete flow under the export manager's hold, Ollama's free space (measured at most once a minute), and
the low-disk banner (statvfs, cached a few seconds). Every method blocks: call them from worker threads."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Callable

from ..config import Settings
from ..docker_gateway import DockerGateway
from ..export.jobs import ExportLock
from ..export.validation import InvalidInput
from ..ollama import OllamaClient, OllamaError
from . import delete
from .commands import remove_command
from .freespace import FreeSpace, banner, data_dir_free
from .ollama_disk import ollama_free
from .report import StorageReport, build

log = logging.getLogger(__name__)
OLLAMA_FREE_TTL_S = 60.0
DATA_FREE_TTL_S = 5.0


class StorageService:
    def __init__(self, settings: Settings, gateway: DockerGateway, ollama: OllamaClient,
                 exports: Callable[[], object]) -> None:
        self.settings = settings
        self.gateway = gateway
        self.ollama = ollama
        self._exports = exports  # the ExportManager, created on first use (it may raise DataDirUnavailable)
        self._scan_lock = threading.Lock()
        self._scans = 0  # reports finished so far
        self._last: StorageReport | None = None
        self._ollama_free: FreeSpace | None = None
        self._ollama_at = 0.0
        self._ollama_lock = threading.Lock()
        self._data_free: tuple[float, FreeSpace] | None = None

    @property
    def last(self) -> StorageReport | None:
        return self._last

    # -- free space ----------------------------------------------------------------------------
    def ollama_space(self, max_age: float = OLLAMA_FREE_TTL_S) -> FreeSpace:
        """Ollama's volume, measured by `df` in its container when the last measure is older than `max_age`."""
        with self._ollama_lock:
            if self._ollama_free is None or time.monotonic() - self._ollama_at > max_age:
                self._ollama_free = ollama_free(self.gateway, self.settings.ollama_service)
                self._ollama_at = time.monotonic()
                if self._ollama_free.free_bytes is None:
                    log.info("Ollama's free space is unknown: %s", self._ollama_free.note)
            return self._ollama_free

    def data_space(self) -> FreeSpace:
        now = time.monotonic()
        if self._data_free is None or now - self._data_free[0] > DATA_FREE_TTL_S:
            self._data_free = (now, data_dir_free(self.settings.data_dir))
        return self._data_free[1]

    def banner(self) -> str:
        """The low-disk banner (empty when there is room): cheap, for the page's 1 s timer. Ollama's volume
        counts once it has been measured (the Storage tab measures it); it is re-measured in the background."""
        spaces = {"data_dir": self.data_space()}
        known = self._ollama_free
        if known is not None:
            spaces["ollama"] = known
            if time.monotonic() - self._ollama_at > OLLAMA_FREE_TTL_S and not self._ollama_lock.locked():
                threading.Thread(target=self._refresh_ollama, name="ollama-free", daemon=True).start()
        last = self._last
        return banner(spaces, self.settings.disk_warn_gb, last.safe_bytes() if last is not None else None)

    def _refresh_ollama(self) -> None:
        try:
            self.ollama_space()
        except Exception:  # noqa: BLE001 - a background refresh: logged, the banner keeps the last value
            log.exception("measuring Ollama's free space failed")

    # -- the report ----------------------------------------------------------------------------
    def _manager(self):
        return self._exports()

    def report(self, on_progress: Callable[[int, int], None] | None = None, with_ollama: bool = True,
               should_stop: Callable[[], bool] | None = None) -> StorageReport:
        """A fresh report. A caller arriving during another scan waits for it and shares its result."""
        arrived = self._scans
        with self._scan_lock:
            last = self._last
            if self._scans > arrived and last is not None and (not with_ollama or "ollama" in last.free):
                return last
            manager = self._manager()
            report = self._build(manager, manager.current, on_progress, should_stop, with_ollama)
            self._last = report
            self._scans += 1
            return report

    def _build(self, manager, running_job, on_progress=None, should_stop=None, with_ollama: bool = True,
               other_exporter: bool | None = None) -> StorageReport:
        """`other_exporter`: whether another process exports here (None: find out from the export lock)."""
        models, note, free = None, "", {"data_dir": data_dir_free(self.settings.data_dir)}
        if with_ollama:
            try:
                models = self.ollama.tags()
            except OllamaError as exc:
                note = f"Ollama's models are not listed: {exc}"
            free["ollama"] = self.ollama_space()
        if running_job is not None and running_job.finished:
            running_job = None
        if other_exporter is None:
            other_exporter = running_job is None and self._other_exporter(manager)
        return build(self.settings.data_dir, manager.history, running_job, other_exporter=other_exporter,
                     ollama_models=models, ollama_note=note, loaded_by=manager.history.loaded_models(), free=free,
                     on_progress=on_progress, should_stop=should_stop)

    @staticmethod
    def _other_exporter(manager) -> bool:
        """Another process holds the export lock of this data dir (our own job is checked apart)."""
        probe = ExportLock(manager.exports_dir, manager.fs)
        if probe.acquire():
            probe.release()
            return False
        return True

    # -- delete ------------------------------------------------------------------------------------
    def _remove_as_owner(self, path: Path) -> None:
        """`rm -rf` of one checked path in the LLaMA-Factory container, whose user wrote it (the app runs as an
        unprivileged user; the path was just reached without a link, and rm follows none inside)."""
        code, lines = self.gateway.run_tool(remove_command(self.settings, path), timeout=600)
        if code != 0:
            raise OSError(f"the {self.settings.llamafactory_service} container could not delete it: "
                          + (lines[-1][:200] if lines else f"exit code {code}"))

    def delete(self, names: object, confirm: object) -> dict:
        """Delete the named items (or, without `confirm`, say what that frees). Everything is checked again
        on a fresh report made while no export can start; one sentence (InvalidInput) when anything is refused,
        and then nothing is deleted."""
        if not isinstance(confirm, bool):
            raise InvalidInput("Confirm must be true or false.")
        wanted = delete.parse_names(names)
        manager = self._manager()
        with self._scan_lock, manager.hold() as running:
            probe = None
            if running is None:
                probe = ExportLock(manager.exports_dir, manager.fs)
                other = not probe.acquire()
                if other:
                    probe = None
            else:
                other = False
            try:
                report = self._build(manager, running, with_ollama=any(n.startswith("ollama:") for n in wanted),
                                     other_exporter=other)
                items = delete.choose(report, wanted)
                outcome = delete.execute(report, items, confirm, manager.history, self.ollama, self._remove_as_owner)
            finally:
                if probe is not None:
                    probe.release()
            if confirm:
                self._last = None
                self._data_free = None
                if any(i.kind == "ollama" for i in items):
                    self._ollama_at = 0.0
        return outcome.as_dict()
