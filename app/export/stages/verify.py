"""Verify: each loaded model builds training's prompt (chat-format check) and stops on its own.

Chat-format check: after a fresh load, Ollama's `prompt_eval_count` for a conversation is the token
count of the prompt its template rendered; it must equal the count LLaMA-Factory's template gave
at training time. Stop check: a held-out question from the run's own data (or the fixed
verification prompt) must end with done_reason "stop", not by running into the token limit.
"""

from __future__ import annotations

from ...ollama import OllamaError
from . import StageContext

VERIFY_OPTIONS = {"num_predict": 64, "temperature": 0, "seed": 0}  # deterministic, bounded
COUNT_OPTIONS = {"num_predict": 1, "temperature": 0, "seed": 0}


def final_chunk(ctx: StageContext, model: str, messages: list[dict], options: dict) -> tuple[str, dict]:
    reply, last = [], {}
    for chunk in ctx.ollama.chat(model, messages, options, should_stop=ctx.job.cancel_event.is_set):
        reply.append((chunk.get("message") or {}).get("content", ""))
        if chunk.get("done"):
            last = chunk
    ctx.job.check_cancel()
    return "".join(reply), last


def template_check(ctx: StageContext, model: str) -> dict | None:
    fmt = ctx.extras.get("chat_format")
    if not fmt:
        return None
    out: dict = {"conversations": {}}
    for key, conv in fmt["conversations"].items():
        if key == "without_system" and ctx.request.system_prompt:
            continue  # a custom system prompt replaces the template's default: not what training saw
        ctx.ollama.unload(model)  # a fresh load: prompt_eval_count then counts the whole prompt
        _reply, last = final_chunk(ctx, model, conv["messages"], COUNT_OPTIONS)
        served = last.get("prompt_eval_count")
        out["conversations"][key] = {"served_tokens": served, "train_tokens": conv["train_tokens"]}
    counts = out["conversations"].values()
    out["ok"] = all(c["served_tokens"] == c["train_tokens"] for c in counts)
    out["extra_bos"] = not out["ok"] and all(c["served_tokens"] == c["train_tokens"] + 1 for c in counts)
    return out


def stop_prompt(ctx: StageContext) -> tuple[list[dict], str | None, str]:
    """(messages, reference answer, where the question came from)."""
    evals = ctx.extras.get("eval")
    if evals is not None and evals.from_run and evals.examples:
        conv = evals.examples[0]
        return conv[:-1], conv[-1]["content"], "a held-out example of the run's data"
    return [{"role": "user", "content": ctx.request.verify_prompt}], None, "the verification prompt"


def run(ctx: StageContext) -> None:
    verdicts = {}
    messages, reference, origin = stop_prompt(ctx)
    ctx.emit(f"stop check with {origin}: {messages[-1]['content']!r}"
             + (f" (reference answer {reference!r})" if reference else ""))
    for target in ctx.plan.targets:
        ctx.job.check_cancel()
        verdict: dict = {}
        try:
            check = template_check(ctx, target.name)
        except OllamaError as exc:
            check = {"ok": False, "error": str(exc)}
        if check is not None:
            verdict["template_check"] = check
            for key, c in check.get("conversations", {}).items():
                ctx.emit(f"{target.name}: chat format ({key.replace('_', ' ')}): Ollama prompt "
                         f"{c['served_tokens']} tokens, training prompt {c['train_tokens']} tokens "
                         + ("✓" if c["served_tokens"] == c["train_tokens"] else "✗"))
        text, last = final_chunk(ctx, target.name, messages, VERIFY_OPTIONS)
        reason = last.get("done_reason")
        clean = reason == "stop"
        ctx.emit(f"{target.name} → {text!r}")
        ctx.emit(f"done_reason={reason}: " + ("stopped on its own" if clean else
                                             "did not stop on its own (check the template and stop tokens)"))
        verdict.update(reply=text, done_reason=reason, clean_stop=clean, reference=reference,
                       eval_count=last.get("eval_count"), prompt=messages[-1]["content"])
        verdicts[target.name] = verdict
    ctx.job.set_result("verify", verdicts)
