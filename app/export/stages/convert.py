"""Convert: llama.cpp's `convert_hf_to_gguf.py` turns the merged folder into one GGUF file."""

from __future__ import annotations

import json
from pathlib import Path

from ...gguf import NotGGUF, add_bool, adds_bos, read_metadata, set_bool
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
        fix_bos(ctx, out)
        ctx.fs.replace(out, plan.gguf)
        ctx.stamps.write("convert", plan.gguf)
    ctx.artifact(plan.gguf)


def training_starts_with_bos(chat: dict) -> bool | None:
    """Whether every prompt LLaMA-Factory's template built at training starts with the BOS token; None
    when the chat format does not say."""
    convs = (chat or {}).get("conversations") or {}
    bos = (chat or {}).get("bos_id")
    if not convs or bos is None:
        return None
    return all(c["train_ids"][:1] == [bos] for c in convs.values())


def fix_bos(ctx: StageContext, gguf: Path) -> None:
    """A template that puts no BOS before the prompt (`default`, `vicuna`, …) on a tokenizer that asks for
    one: training never saw a BOS, so the runtime must not add one. The GGUF's `add_bos_token` is set to
    false (in place, one byte, or added to the header; quantized files inherit it). A template that starts with BOS needs no fix:
    the Ollama template writes it where the runtime does not add it."""
    starts = training_starts_with_bos((ctx.extras.get("prepared") or {}).get("chat"))
    try:
        meta = read_metadata(gguf)
    except (OSError, NotGGUF) as exc:
        raise StageFailed(f"The converted GGUF cannot be read ({exc}).") from None
    if starts is False and adds_bos(meta):
        if not set_bool(gguf, "tokenizer.ggml.add_bos_token", False, fs=ctx.fs):
            add_bool(gguf, "tokenizer.ggml.add_bos_token", False, fs=ctx.fs)  # the runtime's default for this vocabulary
        ctx.emit("tokenizer metadata: training's prompts start without a BOS token but the runtime would add one; "
                 "set tokenizer.ggml.add_bos_token = false in the GGUF")
