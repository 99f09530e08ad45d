"""Convert: llama.cpp's `convert_hf_to_gguf.py` turns the merged folder into one GGUF file."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .. import commands
from ..jobs import StageFailed
from . import StageContext


def vocabulary_problem(model_dir: Path) -> str | None:
    """A tokenizer with more tokens than the model has embeddings, which llama.cpp cannot convert: the usual
    cause is a template whose stop words the vocabulary lacks, added at training without resize_vocab."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
        tok = json.loads((model_dir / "tokenizer.json").read_text())
    except (OSError, ValueError):
        return None
    size = (config.get("text_config") or config).get("vocab_size")
    extra = [t for t in tok.get("added_tokens") or [] if isinstance(t.get("id"), int) and size and t["id"] >= size]
    if not size or not extra:
        return None
    names = ", ".join(t["content"] for t in extra[:4])
    return (f"The merged tokenizer has tokens the model has no embeddings for ({names}: ids from {extra[0]['id']}, "
            f"vocab_size {size}); the chat template added them to the vocabulary at training time without "
            "resize_vocab, so llama.cpp cannot convert the model. Train with resize_vocab: true, or use a "
            "template whose stop tokens the vocabulary has.")


def run(ctx: StageContext) -> None:
    plan = ctx.plan
    problem = None if "convert" in ctx.skip else vocabulary_problem(plan.merged_dir)
    if problem:
        raise StageFailed(problem)
    if not ctx.reused("convert", plan.gguf.name):
        out = ctx.claim(plan.gguf)
        ctx.tools.run(ctx.job, commands.convert_command(ctx.settings, plan.merged_dir, ctx.request.dtype, out),
                      "convert")
        if not out.is_file() or out.stat().st_size == 0:
            raise StageFailed("The converter finished but wrote no GGUF file.")
        os.replace(out, plan.gguf)
        ctx.stamps.write("convert", plan.gguf)
    ctx.artifact(plan.gguf)
