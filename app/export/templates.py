"""The chat template of a run: named in its arguments, or inferred by LLaMA-Factory itself from the
chat template the run's tokenizer saved; and the chat format Ollama must reproduce for it."""

from __future__ import annotations

from pathlib import Path

from .helper import cached, file_fingerprint, run_helper
from .jobs import StageFailed
from .stages import StageContext

TOKENIZER_FILES = ("chat_template.jinja", "tokenizer_config.json", "tokenizer.json", "tokenizer.model",
                   "special_tokens_map.json")
WHERE_TO_CHOOSE = "choose it in the Export tab's Chat template field (API: the template argument)"


def infer_template(ctx: StageContext, quiet: bool = False) -> tuple[str, str]:
    """(template name, a note for the log); raises StageFailed with one sentence when nothing matches."""
    run, base = Path(ctx.request.run.path), ctx.request.base_model
    key = ("infer-template", file_fingerprint(*(run / n for n in TOKENIZER_FILES)),
           file_fingerprint(*(Path(base) / n for n in TOKENIZER_FILES)))
    result, reused = cached(ctx.data_dir / "exports" / ".cache", key,
                            lambda: run_helper(ctx, "template", "infer-template", str(run), base))
    if reused and not quiet:
        ctx.emit("template inference: reused (same tokenizer files as before)")
    if not result.get("source"):
        raise StageFailed("The run does not record a chat template (no chat_template.jinja and no chat_template in "
                          f"tokenizer_config.json), so its template cannot be inferred; {WHERE_TO_CHOOSE}.")
    matches = result.get("matches") or []
    ctx.extras["template_matches"] = tuple(matches)
    if not matches:
        closest = ", ".join(f"{name} ({score:.0%} alike)" for name, score in result.get("closest") or []) or "none"
        raise StageFailed(f"The run does not record a known LLaMA-Factory template: its saved chat template matches "
                          f"none (closest: {closest}); {WHERE_TO_CHOOSE}.")
    note = f"; equally matching: {', '.join(matches[1:4])}" if len(matches) > 1 else ""
    return matches[0], note


def chat_format(ctx: StageContext, adds_bos: bool) -> dict:
    """LLaMA-Factory's training-time prompts of two fixed conversations, its stop tokens, and the Ollama
    template that reproduces them (computed once per merged model, template and BOS behaviour)."""
    plan = ctx.plan
    key = ("chat-format", plan.keys["chat"], adds_bos)
    result, reused = cached(plan.workdir / ".cache", key,
                            lambda: run_helper(ctx, "chat format", "chat-format", str(plan.merged_dir),
                                               ctx.request.template, "1" if adds_bos else "0"))
    if reused:
        ctx.emit("chat format: reused")
    return result
