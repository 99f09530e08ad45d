"""A tool running in a container (`docker exec`): its output lines, its exit code, and how to stop it.

Docker has no "kill exec", so every tool runs under a wrapper that prints its PID first and then
replaces itself with the tool; a cancel signals that PID inside the container.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import TYPE_CHECKING, Callable, Iterator

from docker.errors import APIError, NotFound

if TYPE_CHECKING:
    from .docker_gateway import DockerGateway

log = logging.getLogger(__name__)
PID_MARKER = "@@tunedeck-pid "
# User data only ever travels in "$@", never in the script text.
WRAPPER = 'echo "' + PID_MARKER + '$$"; exec "$@"'


class ExecHandle:
    """A running tool: iterate its output lines, read its exit code, or kill it."""

    def __init__(self, gateway: DockerGateway, container: str, exec_id: str, stream) -> None:
        self.gateway = gateway
        self.container = container
        self.exec_id = exec_id
        self._stream = stream
        self.pid: int | None = None
        self._pid_ready = threading.Event()

    def lines(self, on_pid: Callable[[int], None] | None = None) -> Iterator[tuple[str, str]]:
        """Yield (channel, line) as the tool prints them; progress bars (\\r) become lines.

        `on_pid` is called with the tool's PID as soon as the wrapper reports it."""
        buffers = {"stdout": "", "stderr": ""}
        try:
            for out, err in self._stream:
                for channel, chunk in (("stdout", out), ("stderr", err)):
                    if not chunk:
                        continue
                    buffers[channel] += chunk.decode("utf-8", "replace")
                    *complete, buffers[channel] = re.split(r"\r\n|\n|\r", buffers[channel])
                    for line in complete:
                        if channel == "stdout" and self.pid is None and line.startswith(PID_MARKER):
                            self.pid = int(line[len(PID_MARKER):])
                            self._pid_ready.set()
                            if on_pid:
                                on_pid(self.pid)
                            continue
                        yield channel, line
        finally:
            self._pid_ready.set()
            self.close()
        for channel, rest in buffers.items():
            if rest:
                yield channel, rest

    def exit_code(self) -> int | None:
        return self.gateway.exec_exit_code(self.exec_id)

    def kill(self, grace: float = 3.0) -> None:
        """SIGTERM the tool, then SIGKILL it if it is still running after `grace` seconds."""
        from .docker_gateway import EngineUnavailable  # the gateway module imports this one

        self._pid_ready.wait(timeout=2)
        if self.pid is None:
            self.close()
            return
        try:
            self.gateway.signal_pid(self.container, self.pid, "TERM")
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                if not self.gateway.exec_running(self.exec_id):
                    return
                time.sleep(0.1)
            self.gateway.signal_pid(self.container, self.pid, "KILL")
        except (EngineUnavailable, APIError, NotFound) as exc:
            log.info("stopping a tool failed (%s); closing its stream", type(exc).__name__)
            self.close()

    def close(self) -> None:
        try:
            self._stream.close()
        except Exception as exc:  # noqa: BLE001 - closing an already broken stream
            log.debug("closing an exec stream failed: %s", exc)
