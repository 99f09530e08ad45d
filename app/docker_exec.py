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
        self._lock = threading.Lock()
        self._kill_grace: float | None = None  # a kill asked for before the PID was known

    def lines(self, on_pid: Callable[[int], None] | None = None) -> Iterator[tuple[str, str]]:
        """Yield (channel, line) as the tool prints them. A redraw ended by `\\r` (a progress bar) comes on
        channel "progress": it replaces the previous one instead of becoming a log line.

        `on_pid` is called with the tool's PID as soon as the wrapper reports it."""
        buffers = {"stdout": "", "stderr": ""}
        try:
            for out, err in self._stream:
                for channel, chunk in (("stdout", out), ("stderr", err)):
                    if not chunk:
                        continue
                    text = buffers[channel] + chunk.decode("utf-8", "replace")
                    held = "\r" if text.endswith("\r") else ""  # a \r\n may be split across chunks
                    *parts, rest = re.split(r"(\r\n|\n|\r)", text[:-1] if held else text)
                    buffers[channel] = rest + held
                    for line, end in zip(parts[0::2], parts[1::2]):
                        if end == "\r":
                            if line.strip():
                                yield "progress", line
                            continue
                        if channel == "stdout" and self.pid is None and line.startswith(PID_MARKER):
                            self._got_pid(int(line[len(PID_MARKER):]), on_pid)
                            continue
                        yield channel, line
        finally:
            self.close()
        for channel, rest in buffers.items():
            if rest.rstrip("\r"):
                yield channel, rest.rstrip("\r")

    def _got_pid(self, pid: int, on_pid: Callable[[int], None] | None) -> None:
        with self._lock:
            self.pid = pid
            pending = self._kill_grace
        if on_pid:
            on_pid(pid)
        if pending is not None:  # cancelled before it started: stop it now
            threading.Thread(target=self._signal, args=(pending,), name="tool-kill", daemon=True).start()

    def exit_code(self) -> int | None:
        return self.gateway.exec_exit_code(self.exec_id)

    def kill(self, grace: float = 3.0) -> None:
        """SIGTERM the tool, then SIGKILL it if it is still running after `grace` seconds.

        Whenever it lands: before the wrapper has reported the PID (nobody may be reading yet), the kill
        is remembered and sent by the reader the moment the PID arrives, so the tool never runs on."""
        with self._lock:
            if self.pid is None:
                self._kill_grace = grace
                return
        self._signal(grace)

    def _signal(self, grace: float) -> None:
        from .docker_gateway import EngineUnavailable  # the gateway module imports this one

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
