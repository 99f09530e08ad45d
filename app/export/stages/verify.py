"""Verify: each loaded model stops on its own; its chat-format check (done by the load stage before
Ollama changed) is reported beside it.

Stop check: a held-out question from the run's own data (or the fixed verification prompt) must end
with done_reason "stop", not by running into the token limit. A model that does not stop is a
warning on the fidelity verdict: its prompt is training's, so the cause is the training itself.
"""

from __future__ import annotations

from . import StageContext

VERIFY_OPTIONS = {"num_predict": 64, "temperature": 0, "seed": 0}  # deterministic, bounded


def final_chunk(ctx: StageContext, model: str, messages: list[dict], options: dict) -> tuple[str, dict]:
    reply, last = [], {}
    for chunk in ctx.ollama.chat(model, messages, options, should_stop=ctx.job.cancel_event.is_set):
        reply.append((chunk.get("message") or {}).get("content", ""))
        if chunk.get("done"):
            last = chunk
    ctx.job.check_cancel()
    return "".join(reply), last


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
        check = (ctx.job.result().get("prompt_check") or {}).get(target.name)
        if check:
            ollama = check.get("ollama") if isinstance(check.get("ollama"), dict) else {}
            verdict["template_check"] = {
                "ok": bool(check.get("ok")), "corrected": check.get("corrected", False),
                "conversations": {k: {"served_tokens": (ollama.get(k) or {}).get("served_tokens", c["train_tokens"]),
                                      "train_tokens": c["train_tokens"], "served_ids": c["served_ids"]}
                                  for k, c in (check.get("conversations") or {}).items()}}
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
    from .fidelity import add_causes

    causes = [f"{name}: the model did not stop on its own within {v.get('eval_count')} tokens "
              f"(done_reason {v.get('done_reason')})" for name, v in verdicts.items() if not v["clean_stop"]]
    warning = (ctx.extras.get("prompt_check") or {}).get("warning")
    add_causes(ctx, ([warning] if warning else []) + causes)
