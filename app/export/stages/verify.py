"""Verify: ask each loaded model one question and record whether it stopped on its own."""

from __future__ import annotations

from . import StageContext

VERIFY_OPTIONS = {"num_predict": 48, "temperature": 0, "seed": 0}  # deterministic, bounded


def run(ctx: StageContext) -> None:
    verdicts = {}
    prompt = ctx.request.verify_prompt
    for target in ctx.plan.targets:
        ctx.job.check_cancel()
        ctx.emit(f"{target.name} ← {prompt!r}")
        reply, reason = [], None
        for chunk in ctx.ollama.chat(target.name, [{"role": "user", "content": prompt}], VERIFY_OPTIONS):
            reply.append((chunk.get("message") or {}).get("content", ""))
            if chunk.get("done"):
                reason = chunk.get("done_reason")
        text = "".join(reply)
        ctx.emit(f"{target.name} → {text!r}")
        clean = reason == "stop"
        ctx.emit(f"done_reason={reason}: " + ("stopped cleanly on a stop token" if clean else
                                             "did not stop on its own (check the template and stop tokens)"))
        verdicts[target.name] = {"reply": text, "done_reason": reason, "clean_stop": clean}
    ctx.job.set_result("verify", verdicts)
