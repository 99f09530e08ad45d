"""Checks a training job passes before it is queued, beyond TuneDeck's own (request.py): LLaMA-Factory's
argument parser in its container, and what a Ray cluster can ever run. One sentence per refusal."""

from __future__ import annotations

import json

from ..config import Settings
from ..docker_gateway import DockerGateway, EngineUnavailable, ServiceUnavailable
from ..export.validation import InvalidInput
from .commands import helper_command
from .ray_jobs import RayJobs, RayUnavailable
from .request import TrainRequest

RESULT = "@@tunedeck-result "


def ask_helper(settings: Settings, gateway: DockerGateway, script: str, *args: str, what: str) -> dict:
    """A training helper's JSON answer (app/training/scripts/), run in LLaMA-Factory's container; `what` names
    it in the sentence when it cannot answer."""
    try:
        code, lines = gateway.run_tool(helper_command(settings, script, *args), timeout=180)
    except (ServiceUnavailable, EngineUnavailable) as exc:
        raise InvalidInput(f"{what} cannot run: {exc}") from None
    answers = [ln[len(RESULT):] for ln in lines if ln.startswith(RESULT)]
    if not answers:
        last = next((ln for ln in reversed(lines) if ln.strip()), f"exit code {code}")
        raise InvalidInput(f"{what} did not answer: {last[:300]}")
    return json.loads(answers[-1])


def parser_check(settings: Settings, gateway: DockerGateway, config: dict) -> dict:
    """LLaMA-Factory's own `get_train_args` on the config, in its container (what `llamafactory-cli train`
    would refuse at start, refused now)."""
    result = ask_helper(settings, gateway, "check_args.py", json.dumps(config), what="LLaMA-Factory's argument check")
    if not result.get("ok"):
        raise InvalidInput(f"LLaMA-Factory refuses this config: {result.get('error')}")
    return result


def cluster_check(ray: RayJobs, request: TrainRequest) -> None:
    """Refuse what the cluster can never run, instead of a job that waits forever."""
    try:
        totals = ray.totals()
    except RayUnavailable as exc:
        raise InvalidInput(str(exc)) from None
    gpus_total, cpus_total = totals.get("GPU", 0.0), totals.get("CPU", 0.0)
    workers = int(request.config.get("ray_num_workers") or 1)
    if workers > 1:
        # LLaMA-Factory 0.9.5 (train/trainer_utils.py get_placement_group) reserves {"CPU": 10, "GPU": 1} for every
        # GPU of the cluster; on CPUs only it asks 10 CPUs for each CPU and never starts
        if gpus_total < workers:
            raise InvalidInput(f"ray_num_workers {workers} needs {workers} GPUs on the cluster; it has "
                               f"{gpus_total:g} (LLaMA-Factory's Ray mode trains one worker per GPU).")
        if cpus_total < 10 * gpus_total:
            raise InvalidInput(f"LLaMA-Factory's Ray mode reserves 10 CPUs per GPU of the cluster: {gpus_total:g} "
                               f"GPUs need {10 * gpus_total:g} CPUs, the cluster has {cpus_total:g}.")
    elif request.gpus.count > gpus_total:
        raise InvalidInput(f"The job asks for {request.gpus.count} GPUs; the Ray cluster has {gpus_total:g}.")
    if request.cpus and request.cpus > cpus_total:
        raise InvalidInput(f"The job asks for {request.cpus:g} CPUs; the Ray cluster has {cpus_total:g}.")
