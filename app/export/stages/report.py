"""Quantization report: which GGUF to ship, measured on the run's own data.

Every quantized type is compared with the export's own f16/bf16 GGUF (the reference logits
written once per GGUF and evaluation text): perplexity, mean and 99th-percentile KL divergence,
same top token; plus file size and generation speed (llama-bench). The recommendation is the
smallest type whose mean KL divergence stays under the threshold.
"""

from __future__ import annotations

from .. import commands
from ..evaluation import compare, reference, run_parsed
from ..helper import cached
from ..llama_output import bench_tokens_per_second
from . import StageContext


def speed(ctx: StageContext, gguf, key: str, label: str) -> float | None:
    def compute() -> dict:
        return {"tokens_per_s": run_parsed(ctx, commands.bench_command(ctx.settings, gguf), f"speed {label}",
                                           bench_tokens_per_second)}

    result, _ = cached(ctx, ctx.plan.eval_dir / ".results", ("bench", key), compute)
    return result["tokens_per_s"]


def recommend(rows: list[dict], threshold: float) -> dict:
    """The smallest quantized row under the threshold (else the most faithful one), in words."""
    quantized = [r for r in rows if r["type"] != rows[0]["type"]]
    under = [r for r in quantized if r["kld_mean"] is not None and r["kld_mean"] < threshold]
    ref = rows[0]
    if under:
        best = min(under, key=lambda r: r["bytes"])
        text = (f"Ship {best['type']}: {ref['bytes'] / best['bytes']:.1f}× smaller than {ref['type']}, mean KL "
                f"divergence {best['kld_mean']:.4f} (under {threshold:g}), same top token {best['same_top']:.1f}%.")
    else:
        best = min(quantized, key=lambda r: r["kld_mean"] if r["kld_mean"] is not None else 1e9)
        text = (f"No type stays under a mean KL divergence of {threshold:g}; the most faithful is {best['type']} "
                f"({best['kld_mean']:.4f}). Ship {ref['type']}, or raise the threshold.")
    return {"type": best["type"] if under else None, "text": text, "threshold": threshold}


def run(ctx: StageContext) -> None:
    plan, req, job = ctx.plan, ctx.request, ctx.job
    if not plan.quantized or not req.report:
        ctx.emit("no quantized type to report on" if not plan.quantized else "report not asked for")
        job.set_stage_status("report", "skipped")
        return
    if req.dtype == "q8_0":
        ctx.emit("the report compares with an f16/bf16 GGUF; this export converted to q8_0")
        job.set_stage_status("report", "skipped")
        return
    ref, ppl = reference(ctx)
    rows = [{"type": req.dtype, "file": plan.gguf.name, "bytes": plan.gguf.stat().st_size, "ppl": ppl,
             "kld_mean": 0.0, "kld_p99": 0.0, "same_top": 100.0,
             "tokens_per_s": speed(ctx, plan.gguf, plan.keys["convert"], req.dtype)}]
    for label, path in plan.quantized.items():
        job.check_cancel()
        r = compare(ctx, path, ref, plan.keys["reference"], plan.keys[f"quantize:{label}"], f"report {label}")
        rows.append({"type": label, "file": path.name, "bytes": path.stat().st_size, "ppl": r["ppl_q"],
                     "kld_mean": r["kld_mean"], "kld_p99": r["kld_p99"], "same_top": r["same_top"],
                     "tokens_per_s": speed(ctx, path, plan.keys[f"quantize:{label}"], label)})
        ctx.emit(f"{label}: {rows[-1]['bytes'] / 2**20:.1f} MiB, PPL {r['ppl_q']:.3f}, mean KLD {r['kld_mean']:.5f}, "
                 f"p99 KLD {r['kld_p99']:.5f}, same top {r['same_top']:.2f}%, {rows[-1]['tokens_per_s']:.1f} tok/s")
    evals = ctx.extras["eval"]
    report = {"rows": rows, "recommendation": recommend(rows, req.kl_threshold), "reference": req.dtype,
              "eval": {"source": evals.source, "from_run": evals.from_run, "notes": evals.notes}}
    job.set_result("quant_report", report)
    ctx.emit(report["recommendation"]["text"])
