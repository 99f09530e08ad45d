"""The engine between the UI and the work: one object holding the app's long-lived parts."""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import Settings
from .docker_gateway import DockerGateway
from .status_monitor import StatusMonitor


@dataclass
class Runtime:
    settings: Settings
    gateway: DockerGateway
    monitor: StatusMonitor
    _closers: list = field(default_factory=list)

    @classmethod
    def create(cls, settings: Settings) -> "Runtime":
        gateway = DockerGateway(settings.project, base_url=settings.docker_host)
        monitor = StatusMonitor(gateway, settings.services)
        return cls(settings=settings, gateway=gateway, monitor=monitor)

    def start(self) -> "Runtime":
        self.monitor.start()
        return self

    def on_close(self, fn) -> None:
        self._closers.append(fn)

    def close(self) -> None:
        for fn in reversed(self._closers):
            fn()
        self.monitor.close()
