"""Quantize: `llama-quantize` writes one GGUF per chosen type from the converted file."""

from __future__ import annotations

from .. import commands
from ..jobs import StageFailed
from ..plan import IMATRIX_SUFFIX
from . import StageContext

PROGRESS = (0.42, 0.55)


def run(ctx: StageContext) -> None:
    plan, job = ctx.plan, ctx.job
    if not plan.quantized:
        ctx.emit("no quantization type chosen: the converted GGUF goes to Ollama")
        job.set_stage_status("quantize", "skipped")
        return
    reused = 0
    for i, (q, path) in enumerate(plan.quantized.items()):
        job.check_cancel()
        job.progress = PROGRESS[0] + (PROGRESS[1] - PROGRESS[0]) * i / len(plan.quantized)
        if f"quantize:{q}" in ctx.skip:
            ctx.emit(f"reused {path.name}")
            reused += 1
        else:
            out = ctx.claim(path)
            imatrix = plan.imatrix if q.endswith(IMATRIX_SUFFIX) else None
            ctx.tools.run(job, commands.quantize_command(ctx.settings, plan.gguf, out, plan.qtype(q), imatrix),
                          f"quantize {q}")
            if not out.is_file() or out.stat().st_size == 0:
                raise StageFailed(f"llama-quantize finished but wrote no {q} file.")
            ctx.fs.replace(out, path)
            ctx.stamps.write(f"quantize:{q}", path)
        ctx.artifact(path)
    if reused == len(plan.quantized):
        job.set_stage_status("quantize", "reused")
