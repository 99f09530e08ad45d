"""Trainings on this host: `llamafactory-cli train` in the LLaMA-Factory container, by `docker exec`.

A running trainer is found again from its handle (container, exec id, PID) alone, so a restarted app
re-attaches to it instead of losing or killing it. A cancel signals the trainer's whole process group.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Callable

from docker.errors import APIError, NotFound

from ..config import Settings
from ..docker_gateway import DockerGateway, EngineUnavailable, ServiceUnavailable
from .commands import alive_command, group_signal_command, train_command

log = logging.getLogger(__name__)
PID_WAIT_S = 15.0


class TrainerUnavailable(Exception):
    """The trainer could not be started; the message is one sentence for the user."""


class LocalTrainer:
    def __init__(self, settings: Settings, gateway: DockerGateway) -> None:
        self.settings = settings
        self.gateway = gateway

    def start(self, config_path: Path, log_path: Path, output_dir: Path, gpus: tuple[int, ...],
              on_exit: Callable[[], None] | None = None) -> dict:
        """Start the trainer; returns its handle once the wrapper has reported its PID."""
        try:
            handle = self.gateway.exec_tool(train_command(self.settings, config_path, log_path, output_dir, gpus))
        except (ServiceUnavailable, EngineUnavailable) as exc:
            raise TrainerUnavailable(f"Cannot start the trainer: {exc}") from None
        got_pid = threading.Event()
        early: list[str] = []  # what the wrapper printed before the log took over (e.g. a missing CLI)

        def follow() -> None:
            try:
                for _, line in handle.lines(on_pid=lambda _pid: got_pid.set()):
                    early.append(line)
            except Exception as exc:  # noqa: BLE001 - the stream may break with the engine; polling takes over
                log.warning("lost the output stream of trainer exec %s: %s", handle.exec_id[:12], exc)
            finally:
                got_pid.set()
                if on_exit:
                    on_exit()

        threading.Thread(target=follow, name=f"trainer-{handle.exec_id[:8]}", daemon=True).start()
        got_pid.wait(PID_WAIT_S)
        if handle.pid is None:
            handle.kill(grace=5.0)  # a late PID is still signalled the moment it arrives: nothing runs on
            code = self._exit_code(handle.exec_id)
            detail = early[-1] if early else "no process id reported"
            raise TrainerUnavailable(f"The trainer did not start (exit code {code}): {detail[:300]}")
        return {"container": handle.container, "exec_id": handle.exec_id, "pid": handle.pid, "early": early[-5:]}

    def _exit_code(self, exec_id: str) -> int | None:
        try:
            return self.gateway.exec_exit_code(exec_id)
        except (NotFound, APIError, EngineUnavailable):
            return None

    def state(self, handle: dict) -> tuple[str, int | None]:
        """("running", None), ("exited", exit code), or ("unknown", None) while the engine does not answer."""
        exec_id = handle.get("exec_id")
        if not exec_id:
            return "exited", None
        try:
            if self.gateway.exec_running(exec_id):
                return "running", None
            return "exited", self.gateway.exec_exit_code(exec_id)
        except NotFound:  # its container was recreated: the exec, and the trainer with it, are gone
            return "exited", None
        except (APIError, EngineUnavailable) as exc:
            log.info("cannot ask the engine about trainer exec %s: %s", exec_id[:12], exc)
            return "unknown", None

    def cancel(self, handle: dict, grace: float = 10.0) -> bool:
        """SIGTERM the trainer's process group, SIGKILL it after `grace` seconds; True once nothing runs."""
        pid = handle.get("pid")
        if not pid:
            return True
        try:
            self.gateway.run_tool(group_signal_command(self.settings, int(pid), "TERM"))
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                if not self._group_alive(int(pid)):
                    return True
                time.sleep(0.2)
            self.gateway.run_tool(group_signal_command(self.settings, int(pid), "KILL"))
            time.sleep(0.2)
            return not self._group_alive(int(pid))
        except (ServiceUnavailable, EngineUnavailable) as exc:  # no container: no trainer either
            log.info("stopping trainer %s: %s", pid, exc)
            return True

    def _group_alive(self, pid: int) -> bool:
        code, _ = self.gateway.run_tool(alive_command(self.settings, pid))
        return code == 0
