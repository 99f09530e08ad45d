"""Preflight: resolve the template, make the plan (hashing the inputs, off the UI's event loop),
decide what can be reused, and check every part the export needs before any work starts."""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import time
from dataclasses import replace

from ...docker_gateway import EngineUnavailable, ServiceUnavailable
from ...ollama import OllamaError
from ..checks import base_model_problems, disk_problem, room_needed
from ..evaltext import eval_set
from ..jobs import StageFailed
from ..plan import make_plan
from ..reuse import Stamps
from ..validation import IMATRIX_QUANT_TYPES
from . import StageContext

log = logging.getLogger(__name__)


def run(ctx: StageContext) -> None:
    job = ctx.job
    problems = tool_problems(ctx) + base_model_problems(job.request)  # before anything runs or is written
    if problems:
        raise StageFailed(" ".join(problems))
    resolve_template(ctx)
    evals = ctx.extras["eval"] = eval_set(ctx.data_dir, job.request.run.path)
    ctx.emit(f"evaluation text: {len(evals.text)} characters of {evals.source}")
    for note in evals.notes:
        ctx.emit(f"note: {note}")
    needs_imatrix = [q for q in job.request.quant_types if q in IMATRIX_QUANT_TYPES]
    if needs_imatrix and not evals.from_run:
        raise StageFailed(f"{', '.join(needs_imatrix)} need an importance matrix computed from the run's training "
                          f"text, which TuneDeck cannot read ({evals.notes[0] if evals.notes else evals.source}); "
                          "choose a K-quant such as Q4_K_M.")
    calib = hashlib.sha256(evals.calibration.encode()).hexdigest()
    job.plan = make_plan(ctx.data_dir, job.request, evals.digest, calib)
    ctx.stamps = Stamps(job.plan, ctx.fs)
    ctx.skip = ctx.stamps.reusable()
    plan, req, skip = job.plan, job.request, ctx.skip
    job.set_result("workdir", str(plan.workdir))
    problems: list[str] = []
    disk, parts = disk_problem(ctx.data_dir, plan, skip)
    if disk:
        problems.append(disk + freeable(ctx, disk_shortfall(ctx, parts)))
    elif parts:
        need = sum(v for k, v in parts.items() if k != "ollama")
        ctx.emit(f"disk: about {need / 2**30:.2f} GiB written here, "
                 f"{shutil.disk_usage(ctx.data_dir).free / 2**30:.1f} GiB free; Ollama keeps about "
                 f"{parts['ollama'] / 2**30:.2f} GiB more in its own store")
        job.set_result("disk_estimate", parts)
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


def disk_shortfall(ctx: StageContext, parts: dict) -> int:
    need = sum(v for k, v in parts.items() if k != "ollama")
    return max(0, room_needed(need) - shutil.disk_usage(ctx.data_dir).free)


def freeable(ctx: StageContext, shortfall: int) -> str:
    """What the Storage tab could free in the data dir, with the amount, to follow "not enough disk" (as
    once this export has stopped: it has written nothing yet)."""
    from ...storage.report import build
    from ...storage.rules import format_bytes

    try:
        report = build(ctx.data_dir, ctx.history)
    except Exception:  # noqa: BLE001 - the refusal still says what it needs; the scan's failure is logged
        log.exception("export %s: could not work out what could be freed", ctx.job.id)
        return ""
    safe = report.safe_bytes()
    if not safe:
        return " Nothing in the data directory is safe to delete by TuneDeck's rules (see the Storage tab)."
    enough = "enough to make room" if safe >= shortfall else \
        f"not enough on its own: {format_bytes(shortfall)} more is needed"
    return f" The Storage tab can free {report.safe_summary()} safely ({enough})."


def tool_problems(ctx: StageContext) -> list[str]:
    """Both tool containers running (every export evaluates) and Ollama answering."""
    problems: list[str] = []
    for service in (ctx.settings.llamafactory_service, ctx.settings.llamacpp_service):
        try:
            ctx.gateway.running_service_container(service)
            ctx.emit(f"tool container for {service}: running")
        except (ServiceUnavailable, EngineUnavailable) as exc:
            problems.append(str(exc))
    try:
        version = ctx.ollama.version()
        ctx.emit(f"Ollama {version} at {ctx.ollama.base_url}")
        old = runtime_too_old(version, ctx.settings.ollama_min_version)
        if old:
            problems.append(old)
    except OllamaError as exc:
        problems.append(str(exc))
    return problems


def version_tuple(text: str) -> tuple[int, ...] | None:
    match = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?", text.strip())
    return tuple(int(g or 0) for g in match.groups()) if match else None


def runtime_too_old(version: str, minimum: str) -> str | None:
    """One sentence when Ollama is older than the pinned pair (a dev build, 0.0.0, is let through)."""
    have, need = version_tuple(version), version_tuple(minimum)
    if not have or not need or have == (0, 0, 0) or have >= need:
        return None
    return (f"Ollama {version} is older than {minimum}, the oldest whose llama.cpp reads the GGUF files this "
            f"toolbox's converter writes; upgrade Ollama (OLLAMA_IMAGE in compose/.env.example) to {minimum} or "
            "newer.")


def resolve_template(ctx: StageContext) -> None:
    """The chat template the run was trained with: from training_args.yaml, given by hand (checked
    against the one the run's tokenizer recorded), or inferred from it."""
    from ..templates import inferred, prepare

    req = ctx.job.request
    mode = "infer" if not req.template else "check" if req.template_source == "given" and not req.base_only \
        else "given"
    started = time.monotonic()
    result = prepare(ctx, mode)
    # the template and chat-format helper is part of the checks, not of merge/convert/quantize: timed apart
    ctx.job.update_result("check_seconds", template_helper=round(time.monotonic() - started, 2))
    if mode == "infer":
        name, note = inferred(ctx, result["inference"] or {})
        ctx.job.request = req = replace(req, template=name, template_source="inferred")
        ctx.job.set_result("template", {"name": name, "source": "inferred from the run's tokenizer"})
        ctx.emit(f"template: {name} (inferred from the run's tokenizer){note}")
        return
    source = "given" if req.template_source == "given" else "from the run's training_args.yaml"
    ctx.job.set_result("template", {"name": req.template, "source": source})
    ctx.emit(f"template: {req.template} ({source})")
    inference = result.get("inference") or {}
    matches = inference.get("matches") or []
    if mode == "check" and matches and req.template not in matches:
        # serving another template than training's would answer a different prompt: refuse before any work
        raise StageFailed(f"The chosen template {req.template} is not the one the run was trained with: its "
                          f"tokenizer records {matches[0]}. Leave the template empty to use the run's own, "
                          f"or choose {matches[0]}.")


def run_for_report(ctx: StageContext) -> None:
    """Preflight of a report on a finished export: its plan, its files, the llama.cpp container."""
    job = ctx.job
    ctx.job.set_result("template", {"name": job.request.template, "source": "from the export"})
    evals = ctx.extras["eval"] = eval_set(ctx.data_dir, job.request.run.path)
    ctx.emit(f"evaluation text: {len(evals.text)} characters of {evals.source}")
    calib = hashlib.sha256(evals.calibration.encode()).hexdigest()
    job.plan = make_plan(ctx.data_dir, job.request, evals.digest, calib)
    ctx.stamps = Stamps(job.plan, ctx.fs)
    missing = [p.name for p in (job.plan.gguf, *job.plan.quantized.values()) if not p.is_file()]
    if missing:
        raise StageFailed(f"The export's GGUF files are gone ({', '.join(missing)}); export the run again.")
    job.set_result("workdir", str(job.plan.workdir))
    try:
        ctx.gateway.running_service_container(ctx.settings.llamacpp_service)
    except (ServiceUnavailable, EngineUnavailable) as exc:
        raise StageFailed(str(exc)) from None
