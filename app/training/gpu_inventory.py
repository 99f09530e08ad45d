"""This host's GPUs as `nvidia-smi` sees them in the LLaMA-Factory container, read at most every few
seconds: the scheduler's inventory and the GPU panel."""

from __future__ import annotations

import threading
import time

from ..config import Settings
from ..docker_gateway import DockerGateway, EngineUnavailable, ServiceUnavailable
from .commands import gpu_apps_command, gpu_query_command
from .gpus import Gpu, parse_gpus, parse_processes

CACHE_S = 15.0
NO_GPU_CACHE_S = 120.0  # no nvidia-smi in the container: asking again every few seconds changes nothing
PROCESS_CACHE_S = 3.0


class GpuInventory:
    def __init__(self, settings: Settings, gateway: DockerGateway) -> None:
        self.settings = settings
        self.gateway = gateway
        self._cache: tuple[float, list[Gpu], str] = (float("-inf"), [], "")
        self._procs: tuple[float, list[dict]] = (float("-inf"), [])
        self._lock = threading.Lock()

    def gpus(self, max_age: float = CACHE_S) -> tuple[list[Gpu], str]:
        """(GPUs, note): the note says why there are none (no nvidia-smi in the container, no container)."""
        with self._lock:
            at, gpus, note = self._cache
            if time.monotonic() - at < (max_age if gpus or not note.startswith("No GPU") else NO_GPU_CACHE_S):
                return gpus, note
        try:
            code, lines = self.gateway.run_tool(gpu_query_command(self.settings), timeout=20)
            if code == 0:
                gpus, note = parse_gpus("\n".join(lines)), ""
            elif code in (126, 127):
                gpus, note = [], ("No GPU: nvidia-smi is not available in the LLaMA-Factory container, so trainings "
                                  "run on the CPU.")
            else:
                gpus, note = [], f"nvidia-smi failed (exit code {code}): " + (lines[-1][:200] if lines else "")
        except (ServiceUnavailable, EngineUnavailable) as exc:
            gpus, note = [], f"GPUs unknown: {exc}"
        with self._lock:
            self._cache = (time.monotonic(), gpus, note)
        return gpus, note

    def processes(self) -> list[dict]:
        with self._lock:
            at, procs = self._procs
            if time.monotonic() - at < PROCESS_CACHE_S:
                return procs
        try:
            code, lines = self.gateway.run_tool(gpu_apps_command(self.settings), timeout=20)
            procs = parse_processes("\n".join(lines)) if code == 0 else []
        except (ServiceUnavailable, EngineUnavailable):
            procs = []
        with self._lock:
            self._procs = (time.monotonic(), procs)
        return procs

    def occupied(self) -> set[int]:
        """GPUs with a compute process on them now (a LLaMA Board training, a notebook): the queue does not
        start a job there, whoever the process belongs to."""
        gpus, _ = self.gpus()
        if not gpus:
            return set()
        by_uuid = {g.uuid: g.index for g in gpus}
        return {by_uuid[p["gpu_uuid"]] for p in self.processes() if p["gpu_uuid"] in by_uuid}
