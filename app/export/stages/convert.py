"""Convert: llama.cpp's `convert_hf_to_gguf.py` turns the merged folder into one GGUF file."""

from __future__ import annotations

import os

from .. import commands
from ..jobs import StageFailed
from ..plan import partial
from . import StageContext


def run(ctx: StageContext) -> None:
    plan = ctx.plan
    if "convert" in ctx.skip:
        ctx.emit(f"reused {plan.gguf.name}")
        ctx.job.set_stage_status("convert", "reused")
    else:
        out = ctx.job.add_partial(partial(plan.gguf))
        out.touch()
        ctx.tools.run(ctx.job, commands.convert_command(ctx.settings, plan.merged_dir, ctx.request.dtype, out),
                      "convert")
        if not out.is_file() or out.stat().st_size == 0:
            raise StageFailed("The converter finished but wrote no GGUF file.")
        os.replace(out, plan.gguf)
        ctx.stamps.write("convert", plan.gguf)
    ctx.artifact(plan.gguf)
