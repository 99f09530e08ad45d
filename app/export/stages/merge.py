"""Merge: LLaMA-Factory folds the LoRA adapter into the base weights (`llamafactory-cli export`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ...safe_fs import SafeDir
from .. import commands
from ..jobs import StageFailed
from ..vocab import added_tokens, merge_keys, unmergeable
from . import StageContext

# Files llama.cpp's converter reads to build the GGUF vocabulary; LLaMA-Factory's export saves only
# what the current transformers writes (no `tokenizer.model` for SentencePiece families, say).
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "generation_config.json")


def run(ctx: StageContext) -> None:
    plan, req = ctx.plan, ctx.request
    if req.base_only:
        ctx.emit(f"base model {plan.merged_dir}: nothing to merge, it is converted as it is")
        ctx.job.set_stage_status("merge", "skipped")
        ctx.job.set_result("merged_dir", str(plan.merged_dir))
        return
    if not ctx.reused("merge", str(plan.merged_dir)):
        out = ctx.claim(plan.merged_dir, folder=True)
        if req.run.merges:
            chain = [*req.run.prior_adapters, req.run.path]
            if req.run.prior_adapters:
                ctx.emit(f"the run was trained on top of {len(req.run.prior_adapters)} adapter(s): merging "
                         f"{' → '.join(chain)} in that order, as training did")
            tokens = added_tokens(Path(req.run.path), Path(req.base_model))
            problem = unmergeable(tokens)
            if problem:
                raise StageFailed(problem)
            if tokens:
                ctx.emit(f"the run's trainer added {len(tokens)} token(s) to the vocabulary "
                         f"({', '.join(t['content'] for t in tokens[:6])}): the merge adds them again in the same "
                         "order and resizes the embeddings, as training did")
            ctx.fs.write_text(plan.merge_yaml, commands.merge_yaml(req.base_model, chain, req.template, str(out),
                                                                  merge_keys(tokens)))
            ctx.tools.run(ctx.job, commands.merge_command(ctx.settings, plan.merge_yaml), "merge")
            if tokens:
                for name in copy_run_tokenizer(ctx.fs, Path(req.run.path), out):
                    ctx.emit(f"{name}: the run's own (the merged model's tokenizer is the one it was trained with)")
                if record_added_tokens(ctx.fs, out):
                    ctx.emit("tokenizer_config.json: added_tokens_decoder written from tokenizer.json, so llama.cpp's "
                             "converter keeps the added tokens (and which are special)")
        else:
            linked = link_files(ctx.fs, Path(req.run.path), out)
            ctx.emit(f"{req.run.finetuning_type} fine-tune: nothing to merge; its {linked} files are linked, "
                     "not copied, beside the base model's tokenizer files")
        if not (out / "config.json").is_file():
            raise StageFailed("LLaMA-Factory finished but wrote no config.json into the merged folder.")
        for name in carry_tokenizer_files(ctx.fs, Path(req.base_model), out):
            ctx.emit(f"carried over {name} from the base model (the merge did not save it; the converter needs it)")
        ctx.fs.remove(plan.merged_dir)
        ctx.fs.replace(out, plan.merged_dir)
        ctx.stamps.write("merge", plan.merged_dir)
    ctx.job.set_result("merged_dir", str(plan.merged_dir))


def carry_tokenizer_files(fs: SafeDir, base: Path, merged: Path) -> list[str]:
    """Copy each tokenizer file of a local base that the merged folder lacks; returns their names."""
    if not base.is_dir():
        return []
    carried = []
    for name in TOKENIZER_FILES:
        src, dst = base / name, merged / name
        if src.is_file() and not fs.lexists(dst):
            fs.copy_in(src, dst)
            carried.append(name)
    return carried


def link_files(fs: SafeDir, src: Path, dst: Path) -> int:
    """Hard-link (else copy) every file of a full fine-tune's folder into `dst`, so the converter sees the
    model with the tokenizer files its trainer did not save, and the run folder itself is never written."""
    count = 0
    for entry in os.scandir(src):
        if entry.is_file(follow_symlinks=False):
            fs.link_in(entry.path, dst / entry.name)
            count += 1
    return count


RUN_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                       "chat_template.jinja")


def copy_run_tokenizer(fs: SafeDir, run: Path, merged: Path) -> list[str]:
    """The run's tokenizer files replace what the merge wrote (a new file each: nothing is written through)."""
    copied = []
    for name in RUN_TOKENIZER_FILES:
        src = run / name
        if src.is_file():
            fs.copy_in(src, merged / name)
            copied.append(name)
    return copied


def record_added_tokens(fs: SafeDir, merged: Path) -> bool:
    """transformers 5 no longer writes `added_tokens_decoder` into tokenizer_config.json, where llama.cpp's
    SentencePiece converter looks for added tokens: write it from tokenizer.json (a new file)."""
    try:
        config = json.loads((merged / "tokenizer_config.json").read_text(encoding="utf-8"))
        added = json.loads((merged / "tokenizer.json").read_text(encoding="utf-8")).get("added_tokens") or []
    except (OSError, ValueError):
        return False
    if config.get("added_tokens_decoder") or not added:
        return False
    config["added_tokens_decoder"] = {str(t["id"]): {k: t[k] for k in ("content", "special", "lstrip", "rstrip",
                                                                      "normalized", "single_word") if k in t}
                                      for t in added if isinstance(t.get("id"), int)}
    fs.write_text(merged / "tokenizer_config.json", json.dumps(config, indent=2, ensure_ascii=False))
    return True
