"""Fidelity: does the exported model keep the fine-tune? Measured against the merged Hugging Face
model (the true reference) on the evaluation text, teacher-forced, token by token:

- the converted GGUF: top-1 agreement, largest log-probability gap, and whether its tokenizer
  splits the text as the model's own does (reference logits by llama-perplexity, the merged
  model's by transformers in the LLaMA-Factory container);
- each quantized type: top-1 agreement with the merged model (llama-perplexity --kl-divergence
  against the merged model's logits);
- from the verify stage: the chat-format check and whether the model stops on its own.
Below the threshold, the export ends with a warning that names the cause found.
"""

from __future__ import annotations

from ...gguf import NotGGUF, adds_bos, read_metadata
from ..evaluation import compare, eval_text, reference
from ..helper import cached, run_helper
from ..jobs import StageFailed
from ..plan import partial
from . import StageContext


def merged_logits(ctx: StageContext, ref) -> tuple[dict, object]:
    plan = ctx.plan
    out = plan.eval_dir / f"merged-{plan.keys['hf-logits'][:12]}.kld"
    try:
        meta = read_metadata(plan.gguf)
    except (OSError, NotGGUF) as exc:
        raise StageFailed(f"The converted GGUF cannot be read ({exc}).") from None
    bos = adds_bos(meta)
    bos_id = int(meta.get("tokenizer.ggml.bos_token_id") or 0)

    def compute() -> dict:
        ctx.job.add_partial(partial(out))
        ctx.fs.check_dir(plan.eval_dir)  # the helper writes here: a real folder, no link on the way
        req = ctx.request
        chain = [req.base_model, *req.run.prior_adapters, req.run.path] if req.run.merges and not req.base_only \
            else []
        result = run_helper(ctx, "fidelity", "hf-logits", str(plan.merged_dir), str(ref), str(out),
                            "1" if bos else "0", str(bos_id), str(eval_text(ctx)), *chain)
        if not out.is_file():
            raise StageFailed("the merged model's logits were not written")
        return result

    result, reused = cached(ctx, plan.eval_dir / ".results", ("hf-logits", plan.keys["hf-logits"]), compute)
    if reused and not out.is_file():  # the logits file went away: compute again
        result = compute()
    if reused:
        ctx.emit("merged model's logits: reused")
    return result, out


def causes(ctx: StageContext, report: dict) -> list[str]:
    found = []
    f16 = report["gguf"]
    tok = f16.get("tokenizer") or {}
    if tok.get("first_mismatch") is not None:
        found.append(f"the GGUF's tokenizer splits text differently from the model's own (first difference at "
                     f"token {tok['first_mismatch']} of {tok['compared']})")
    if f16["agreement"] < ctx.settings.fidelity_min:
        found.append(f"the GGUF predicts a different next token than the merged model on "
                     f"{1 - f16['agreement']:.1%} of {f16['tokens']} tokens (threshold {ctx.settings.fidelity_min:.0%})")
    return found


def add_causes(ctx: StageContext, extra: list[str]) -> None:
    """Causes found after this stage (the stop check on the served model) join the fidelity verdict."""
    report = ctx.job.result().get("fidelity")
    if not extra or not report:
        return
    report["causes"] = report["causes"] + extra
    report["verdict"] = "warning"
    report["summary"] = summary(report)
    ctx.job.set_result("fidelity", report)
    ctx.job.set_stage_status("fidelity", "warning")
    ctx.emit(report["summary"])


def summary(report: dict) -> str:
    f16 = report["gguf"]
    parts = [f"{f16['type']} GGUF agrees with the merged model on {f16['agreement']:.1%} of {f16['tokens']} next tokens "
             f"(largest log-prob gap {f16['max_logprob_diff']:.3f})"]
    if report["quantized"]:
        parts.append(", ".join(f"{q} {v['agreement']:.1%}" for q, v in report["quantized"].items()))
    parts.append(f"evaluated on {report['eval']['source']}")
    head = "✓ Fidelity OK" if report["verdict"] == "ok" else "⚠️ Fidelity warning: " + "; ".join(report["causes"])
    return head + ". " + "; ".join(parts) + "."


def run(ctx: StageContext) -> None:
    plan, job = ctx.plan, ctx.job
    evals = ctx.extras["eval"]
    ref, _ppl = reference(ctx)
    job.check_cancel()
    hf, hf_file = merged_logits(ctx, ref)
    gguf = {"type": ctx.request.dtype, "file": plan.gguf.name, "agreement": hf["agreement"], "tokens": hf["tokens"],
            "max_logprob_diff": hf["max_logprob_diff"], "mean_kl": hf["mean_kl"], "tokenizer": hf.get("tokenizer"),
            "reference": hf.get("reference", "merged")}  # peft: the base with the run's adapters applied by peft
    ctx.emit(f"{plan.gguf.name}: top-1 agreement with the merged model {hf['agreement']:.2%} on {hf['tokens']} "
             f"tokens, largest log-prob gap {hf['max_logprob_diff']:.4f}")
    quantized = {}
    for label in plan.delivered:
        job.check_cancel()
        r = compare(ctx, plan.quantized[label], hf_file, plan.keys["hf-logits"], plan.keys[f"quantize:{label}"],
                    f"agreement {label}")
        quantized[label] = {"agreement": r["same_top"] / 100, "kld_mean": r["kld_mean"]}
        ctx.emit(f"{label}: top-1 agreement with the merged model {r['same_top']:.2f}%")
    report = {"eval": {"source": evals.source, "from_run": evals.from_run, "notes": evals.notes},
              "gguf": gguf, "quantized": quantized}
    report["causes"] = causes(ctx, report)
    report["verdict"] = "ok" if not report["causes"] else "warning"
    report["summary"] = summary(report)
    job.set_result("fidelity", report)
    ctx.emit(report["summary"])
    if report["causes"]:
        job.set_stage_status("fidelity", "warning")
