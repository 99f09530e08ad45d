"""The engine between the UI and the work: one object holding the app's long-lived parts."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from .config import Settings
from .docker_gateway import DockerGateway
from .log_hub import LogHub
from .ollama import OllamaClient
from .safe_fs import UnsafePath
from .sessions import SessionGuard
from .status_monitor import StatusMonitor


class DataDirUnavailable(Exception):
    pass


@dataclass
class Runtime:
    settings: Settings
    gateway: DockerGateway
    monitor: StatusMonitor
    ollama: OllamaClient
    logs: LogHub
    sessions: SessionGuard
    _exports: object = None
    _exports_lock: threading.Lock = field(default_factory=threading.Lock)
    _training: object = None
    _storage: object = None

    @classmethod
    def create(cls, settings: Settings) -> "Runtime":
        gateway = DockerGateway(settings.project, base_url=settings.docker_host)
        monitor = StatusMonitor(gateway, settings.services)
        return cls(settings=settings, gateway=gateway, monitor=monitor, ollama=OllamaClient(settings.ollama_url),
                   logs=LogHub(gateway), sessions=SessionGuard(settings.session_hours * 3600))

    def start(self) -> "Runtime":
        self.monitor.start()
        try:
            self.exports  # recover after a crash now: interrupted jobs, half-written files
            self.training  # re-attach to trainings still running, start what is queued
        except DataDirUnavailable:
            pass  # the Export and Train tabs say so
        return self

    @property
    def exports(self):
        """The export manager, created on first use so a missing data dir never stops the app."""
        from .export.engine import ExportManager

        with self._exports_lock:
            if self._exports is None:
                try:
                    self.settings.data_dir.mkdir(parents=True, exist_ok=True)
                    self._exports = ExportManager(self.settings, self.gateway, self.ollama)
                except OSError as exc:
                    raise DataDirUnavailable(
                        f"The data directory {self.settings.data_dir} is not usable ({exc.strerror or exc}); "
                        "set TUNEDECK_DATA_DIR."
                    ) from exc
                except UnsafePath as exc:
                    raise DataDirUnavailable(str(exc)) from exc
            return self._exports

    @property
    def training(self):
        """The training queue, created (and its scheduler started) on first use."""
        from .training.queue import TrainingQueue

        self.exports  # the data dir must be usable (raises DataDirUnavailable like it)
        with self._exports_lock:
            if self._training is None:
                self._training = TrainingQueue(self.settings, self.gateway, start_export=self._export_run).start()
            return self._training

    def _export_run(self, run: str, options: dict) -> str:
        """'Export when done': the finished run exported with the settings saved with its job."""
        from .export.plan import build_request

        request = build_request(self.settings.data_dir, run=run, **options)
        return self.exports.start(request).id

    @property
    def storage(self):
        """The storage part (report, delete, low-disk banner); it reaches the export manager on first use."""
        from .storage.service import StorageService

        with self._exports_lock:
            if self._storage is None:
                self._storage = StorageService(self.settings, self.gateway, self.ollama, lambda: self.exports)
            return self._storage

    def shutdown(self, timeout: float) -> bool:
        """Stop for good: cancel a running export (tool killed, partial files removed, history says
        `cancelled`) within `timeout` seconds, then close every background part."""
        done = True
        if self._exports is not None:
            done = self._exports.shutdown(timeout)
        self.close()
        return done

    def close(self) -> None:
        if self._training is not None:
            self._training.close()  # the trainers keep running; a restarted app re-attaches to them
        self.sessions.close()
        self.logs.close()
        self.monitor.close()
        self.ollama.close()
