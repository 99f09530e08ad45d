"""Importance matrix: `llama-imatrix` on the run's own training text, for the k-quants and IQ types."""

from __future__ import annotations

from .. import commands
from ..jobs import StageFailed
from . import StageContext


def run(ctx: StageContext) -> None:
    plan, job = ctx.plan, ctx.job
    if plan.imatrix is None:
        job.set_stage_status("imatrix", "skipped")
        return
    if "imatrix" in ctx.skip or ctx.stamps.valid("imatrix", plan.imatrix):
        ctx.emit(f"reused {plan.imatrix.name}")
        job.set_stage_status("imatrix", "reused")
        return
    evals = ctx.extras["eval"]
    text = plan.eval_dir / f"calibration-{plan.keys['imatrix'][:12]}.txt"
    ctx.fs.write_text(text, evals.calibration)
    out = ctx.claim(plan.imatrix)
    ctx.emit(f"calibration text: {len(evals.calibration)} characters of {evals.source}")
    ctx.tools.run(job, commands.imatrix_command(ctx.settings, plan.gguf, text, out), "imatrix")
    if not out.is_file() or out.stat().st_size == 0:
        raise StageFailed("llama-imatrix finished but wrote no importance matrix.")
    ctx.fs.replace(out, plan.imatrix)
    ctx.stamps.write("imatrix", plan.imatrix)
    job.set_result("imatrix", str(plan.imatrix))
