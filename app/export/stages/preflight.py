"""Preflight: resolve the template, make the plan (hashing the inputs, off the UI's event loop),
decide what can be reused, and check every part the export needs before any work starts."""

from __future__ import annotations

import shutil
from dataclasses import replace

from ...docker_gateway import EngineUnavailable, ServiceUnavailable
from ...ollama import OllamaError
from ..checks import base_model_problems, disk_problem
from ..jobs import StageFailed
from ..plan import make_plan
from ..reuse import Stamps
from . import StageContext


def run(ctx: StageContext) -> None:
    job, settings = ctx.job, ctx.settings
    resolve_template(ctx)
    job.plan = make_plan(ctx.data_dir, job.request)
    ctx.stamps = Stamps(job.plan)
    ctx.skip = ctx.stamps.reusable()
    plan, req, skip = job.plan, job.request, ctx.skip
    job.set_result("workdir", str(plan.workdir))
    problems: list[str] = []
    need_tools = {settings.llamafactory_service: "merge" not in skip,
                  settings.llamacpp_service: not {"convert", *(f"quantize:{q}" for q in plan.quantized)} <= skip}
    for service, needed in need_tools.items():
        if not needed:
            continue
        try:
            ctx.gateway.running_service_container(service)
            ctx.emit(f"tool container for {service}: running")
        except (ServiceUnavailable, EngineUnavailable) as exc:
            problems.append(str(exc))
    try:
        ctx.emit(f"Ollama {ctx.ollama.version()} at {ctx.ollama.base_url}")
    except OllamaError as exc:
        problems.append(str(exc))
    problems += base_model_problems(plan, "merge" not in skip)
    disk, need = disk_problem(ctx.data_dir, plan, skip)
    if disk:
        problems.append(disk)
    elif need:
        ctx.emit(f"disk: about {need / 2**30:.2f} GiB needed, "
                 f"{shutil.disk_usage(ctx.data_dir).free / 2**30:.1f} GiB free")
    if not problems:
        for target in plan.targets:
            try:
                exists = ctx.ollama.exists(target.name)
            except OllamaError as exc:
                problems.append(str(exc))
                break
            if exists and not req.overwrite:
                problems.append(f"Ollama already has a model named {target.name!r}; tick 'overwrite' "
                                "to replace it or choose another name.")
    if problems:
        raise StageFailed(" ".join(problems))
    for stage in sorted(skip):
        ctx.emit(f"{stage}: inputs unchanged since a previous export, will be reused")


def resolve_template(ctx: StageContext) -> None:
    """The chat template the run was trained with: given, from training_args.yaml, or inferred."""
    req = ctx.job.request
    if req.template:
        source = "given" if req.template_source == "given" else "from the run's training_args.yaml"
        ctx.job.set_result("template", {"name": req.template, "source": source})
        ctx.emit(f"template: {req.template} ({source})")
        return
    from ..templates import infer_template

    name, note = infer_template(ctx)
    ctx.job.request = replace(req, template=name, template_source="inferred")
    ctx.job.set_result("template", {"name": name, "source": "inferred from the run's tokenizer"})
    ctx.emit(f"template: {name} (inferred from the run's tokenizer){note}")
