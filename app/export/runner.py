"""Runs a pipeline `ToolCommand` in its container for a job: streams its lines into the job log,
records its PID (so a restarted app can stop it), honours cancel, and turns a failure into one sentence."""

from __future__ import annotations

import time
from typing import Callable

from ..docker_gateway import DockerGateway, EngineUnavailable, ServiceUnavailable, ToolCommand
from .history import History
from .jobs import Cancelled, ExportJob, StageFailed
from .progress import read_progress


class ToolRunner:
    def __init__(self, gateway: DockerGateway, history: History) -> None:
        self.gateway = gateway
        self.history = history

    def run(self, job: ExportJob, command: ToolCommand, label: str,
            on_line: Callable[[str], None] | None = None, echo: bool = True) -> list[str]:
        """Run to completion; returns the tool's output lines. Raises StageFailed or Cancelled.

        A cancel that lands before the tool starts starts nothing; one that lands while it is being started
        (before its PID is known, or before anyone reads its output) is sent the moment the PID arrives."""
        job.check_cancel()
        job.emit("$ " + " ".join(_short(a) for a in command.argv), label)
        handle = self.gateway.exec_tool(command)
        job.attach_exec(handle)
        lines: list[str] = []
        try:
            if job.cancelled:
                handle.kill()

            def record(pid: int) -> None:
                self.history.update(job.id, result={**job.result(), "tool": {"container": handle.container,
                                                                           "pid": pid}})

            for channel, line in handle.lines(on_pid=record):
                reading = read_progress(line)
                if reading:
                    job.tool_progress(reading.fraction, f"[{label}] {line}", reading.eta)
                if channel == "progress":  # a redrawn bar: shown in place, not one log line per redraw
                    continue
                lines.append(line)
                if on_line:
                    on_line(line)
                if echo:
                    job.emit(line, label)
            job.check_cancel()
            code = handle.exit_code()
        finally:
            job.attach_exec(None)
        if code is None or code == 137:  # killed: by us, by the OOM killer, or with its container
            for _ in range(20):
                try:
                    self.gateway.running_service_container(command.service)
                except (ServiceUnavailable, EngineUnavailable) as exc:
                    raise StageFailed(f"the tool was killed because its container stopped: {exc}") from None
                time.sleep(0.1)
        if code != 0:
            last = next((ln.strip() for ln in reversed(lines) if ln.strip()), "")
            raise StageFailed(f"{_short(command.argv[0])} {_short(command.argv[1])} exited with code {code}: "
                              f"{last[:300]}")
        return lines


def _short(arg: str) -> str:
    """Inline scripts (`python -c ...`) are shown by their first line only."""
    first = arg.split("\n", 1)[0]
    return first if first == arg else first + " …"


def cancel_running_tool(job: ExportJob) -> None:
    handle = job.running_exec()
    if handle is not None:
        handle.kill()


__all__ = ["ToolRunner", "cancel_running_tool", "Cancelled"]
