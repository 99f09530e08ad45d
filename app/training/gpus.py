"""GPUs: what a job asks for, which free ones it gets, and what `nvidia-smi` says about them. Pure functions.

A job asks for `all` GPUs, a count, or specific ids. The queue gives each running job its own GPUs
(set as CUDA_VISIBLE_DEVICES), so two running jobs never share one. A job with no GPU trains on the
CPU and takes the whole machine: it runs alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..export.validation import InvalidInput

# nvidia-smi's own query fields (`nvidia-smi --help-query-gpu`), in this order
GPU_FIELDS = ("index", "uuid", "name", "memory.used", "memory.total", "utilization.gpu", "temperature.gpu")
APP_FIELDS = ("gpu_uuid", "pid", "process_name", "used_memory")


@dataclass(frozen=True)
class GpuRequest:
    """`all` GPUs of the host, a `count` of free ones (0: the CPU), or the GPUs with these `ids`."""

    kind: str  # "all" | "count" | "ids"
    count: int = 0
    ids: tuple[int, ...] = ()

    def text(self) -> str:
        if self.kind == "all":
            return "all"
        return str(self.count) if self.kind == "count" else ",".join(map(str, self.ids))


def parse_gpu_request(value: object) -> GpuRequest:
    """`all` (or empty), a number of GPUs, or a comma-separated list of GPU ids; one sentence otherwise."""
    text = str(value if value is not None else "").strip().lower()
    if text in ("", "all"):
        return GpuRequest("all")
    if re.fullmatch(r"\d{1,3}", text):
        return GpuRequest("count", count=int(text))
    if re.fullmatch(r"\d{1,3}(\s*,\s*\d{1,3})*", text):
        ids = tuple(int(p) for p in text.split(","))
        if len(set(ids)) != len(ids):
            raise InvalidInput(f"GPU ids {value!r} name a GPU twice.")
        return GpuRequest("ids", count=len(ids), ids=tuple(sorted(ids)))
    raise InvalidInput(f"GPUs must be 'all', a number, or GPU ids such as '0,1'; not {str(value)[:40]!r}.")


def check_request(request: GpuRequest, inventory: list[int]) -> None:
    """Refuse what this host can never satisfy (so the job does not wait forever)."""
    if request.kind == "count" and request.count > len(inventory):
        have = f"only {len(inventory)}" if inventory else "none (nvidia-smi found no GPU)"
        raise InvalidInput(f"The job asks for {request.count} GPUs; this host has {have}.")
    if request.kind == "ids":
        missing = [i for i in request.ids if i not in inventory]
        if missing:
            have = ", ".join(map(str, inventory)) or "none"
            raise InvalidInput(f"GPU {missing[0]} does not exist on this host (GPUs: {have}).")


def allocate(request: GpuRequest, inventory: list[int], busy: set[int], others_running: int) -> tuple[int, ...] | None:
    """The GPUs a job gets now, `()` for a CPU job, or None when it must wait.

    `busy` are the GPUs of running jobs; `others_running` counts running jobs (a CPU job runs alone,
    and nothing starts beside it)."""
    if others_running and not busy:  # a CPU job is running: it has the machine
        return None
    free = [i for i in inventory if i not in busy]
    if request.kind == "all":
        if not inventory:
            return None if others_running else ()
        return tuple(inventory) if not busy else None
    if request.kind == "count":
        if request.count == 0:
            return None if others_running else ()
        return tuple(free[: request.count]) if len(free) >= request.count else None
    return request.ids if all(i in free for i in request.ids) else None


def visible_devices(gpus: tuple[int, ...]) -> str:
    """CUDA_VISIBLE_DEVICES for a job: its GPUs, or none at all (an empty value hides every GPU)."""
    return ",".join(map(str, gpus))


# -- nvidia-smi ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str
    name: str
    memory_used_mib: float | None
    memory_total_mib: float | None
    utilization_pct: float | None
    temperature_c: float | None


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # "[N/A]", "[Not Supported]"
        return None


def parse_gpus(csv_text: str) -> list[Gpu]:
    """`nvidia-smi --query-gpu=<GPU_FIELDS> --format=csv,noheader,nounits` output."""
    gpus = []
    for line in csv_text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < len(GPU_FIELDS) or not parts[0].isdigit():
            continue
        index, uuid, *rest = parts
        # a GPU name may itself hold a comma: the numeric fields are the last five
        name = ", ".join(rest[: len(rest) - 4])
        used, total, util, temp = (_number(p) for p in rest[-4:])
        gpus.append(Gpu(int(index), uuid, name, used, total, util, temp))
    return gpus


def parse_processes(csv_text: str) -> list[dict]:
    """`nvidia-smi --query-compute-apps=<APP_FIELDS> --format=csv,noheader,nounits` output."""
    procs = []
    for line in csv_text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < len(APP_FIELDS) or not parts[1].isdigit():
            continue
        procs.append({"gpu_uuid": parts[0], "pid": int(parts[1]), "process": ", ".join(parts[2:-1]),
                      "memory_mib": _number(parts[-1])})
    return procs
