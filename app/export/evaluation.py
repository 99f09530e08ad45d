"""Shared evaluation artifacts of an export: the evaluation text, the converted GGUF's reference
logits (llama-perplexity --kl-divergence-base), and KL-divergence runs against a reference.

Each is keyed by content: a second export of the same GGUF on the same text reuses them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..docker_gateway import ToolCommand
from . import commands
from .helper import cached
from .jobs import StageFailed
from .llama_output import ToolOutputError, kl_divergence, perplexity
from .stages import StageContext

ATTEMPTS = 3


def run_parsed(ctx: StageContext, command: ToolCommand, label: str, parse: Callable[[list[str]], object]):
    """Run a llama.cpp tool and parse its output, running it again when the output was cut short.

    llama.cpp's logger writes from a background thread and is not flushed at exit (common/log.cpp,
    ggml-org/llama.cpp#22142), so now and then a tool that exited 0 lost its last lines."""
    for attempt in range(1, ATTEMPTS + 1):
        lines = ctx.tools.run(ctx.job, command, label, echo=False)
        try:
            return parse(lines)
        except ToolOutputError as exc:
            if attempt == ATTEMPTS or "too short" in str(exc):
                for line in lines[-8:]:
                    ctx.job.emit(line, label)
                raise StageFailed(f"{label}: {exc}") from None
            ctx.emit(f"{label}: the tool's output was cut short at exit (llama.cpp's logger); running it again")


def eval_text(ctx: StageContext) -> Path:
    evals = ctx.extras["eval"]
    ctx.fs.check_dir(ctx.plan.eval_dir)  # the tools read and write here: a real folder, no link on the way
    path = ctx.plan.eval_dir / f"eval-{evals.digest[:12]}.txt"
    if not path.is_file():
        ctx.fs.write_text(path, evals.text)
    return path


def reference(ctx: StageContext) -> tuple[Path, float | None]:
    """(logits file of the converted GGUF on the evaluation text, its perplexity)."""
    plan = ctx.plan
    if "reference" in ctx.extras:
        return ctx.extras["reference"]
    ref = plan.eval_dir / f"{plan.gguf.stem}-{plan.keys['reference'][:12]}.kld"
    stamp = ctx.stamps.valid("reference", ref)
    if stamp:
        ctx.emit(f"reference logits of {plan.gguf.name}: reused")
        ctx.extras["reference"] = (ref, stamp.get("ppl"))
        return ctx.extras["reference"]
    text = eval_text(ctx)
    out = ctx.claim(ref)
    ppl = run_parsed(ctx, commands.reference_logits_command(ctx.settings, plan.gguf, text, out), "reference",
                     perplexity)
    if not out.is_file() or out.stat().st_size == 0:
        raise StageFailed("llama-perplexity wrote no reference logits.")
    ctx.fs.replace(out, ref)
    ctx.stamps.write("reference", ref, ppl=ppl)
    ctx.emit(f"reference logits of {plan.gguf.name}: perplexity {ppl:.3f} on the evaluation text")
    ctx.extras["reference"] = (ref, ppl)
    return ctx.extras["reference"]


def compare(ctx: StageContext, gguf: Path, ref: Path, ref_key: str, model_key: str, label: str) -> dict:
    """KL divergence, same-top-token % and perplexity of `gguf` against a reference logits file."""

    def compute() -> dict:
        return run_parsed(ctx, commands.kl_divergence_command(ctx.settings, gguf, ref), label, kl_divergence)

    result, reused = cached(ctx, ctx.plan.eval_dir / ".results", ("kld", model_key, ref_key), compute)
    if reused:
        ctx.emit(f"{label}: reused")
    return result
