"""Pure renderers for the Export tab: tables, progress bar, verdicts (no Gradio events here)."""

from __future__ import annotations

import html
from datetime import datetime

import pandas as pd

from ..export.engine import STAGES

RUN_COLUMNS = ["run", "base model", "template", "finished", "last loss"]
HISTORY_COLUMNS = ["job", "started", "status", "run", "models", "seconds", "error"]
MODEL_COLUMNS = ["name", "size (MiB)", "quantization", "family", "modified"]
STAGE_COLUMNS = ["stage", "state", "time"]


def fmt_time(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M") if ts else ""


def runs_frame(runs) -> pd.DataFrame:
    return pd.DataFrame(
        [[r.name, r.base_model, r.template or "(inferred at export)", fmt_time(r.finished_at),
          "" if r.last_loss is None else f"{r.last_loss:.4f}"] for r in runs],
        columns=RUN_COLUMNS,
    )


def progress_html(status: dict | None) -> str:
    status = status or {}
    pct = int(100 * float(status.get("progress") or 0))
    state = status.get("status", "idle")
    stage = status.get("stage", "")
    label = {"running": f"{stage} · {pct}%", "succeeded": "done · 100%"}.get(state, f"{state} at {stage}")
    if state == "running" and status.get("activity"):
        label += f" · {status['activity']}"
    if state == "idle":
        label, pct = "idle", 0
    return (f'<div id="export-progress-bar" data-state="{html.escape(state)}" data-pct="{pct}" '
            f'style="border:1px solid #ccc;border-radius:6px;height:22px;position:relative">'
            f'<div style="width:{pct}%;height:100%;background:#f97316;border-radius:6px"></div>'
            f'<span style="position:absolute;left:8px;top:1px;font-size:13px">{html.escape(label)}</span></div>')


def stages_frame(status: dict | None) -> pd.DataFrame:
    status = status or {}
    seconds = status.get("stage_seconds") or {}
    states = status.get("stages") or {}
    return pd.DataFrame(
        [[s, states.get(s, "pending"), f"{seconds[s]:.1f} s" if s in seconds else ""] for s in STAGES],
        columns=STAGE_COLUMNS,
    )


def history_frame(jobs: list[dict]) -> pd.DataFrame:
    rows = []
    for j in jobs:
        secs = sum((j["stages"] or {}).values())
        rows.append([j["id"], fmt_time(j["created"]), j["status"], j["run"],
                     ", ".join((j["result"] or {}).get("ollama_models", [])), f"{secs:.1f}", j["error"]])
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)


def models_frame(models: list[dict]) -> pd.DataFrame:
    rows = [[m.get("name"), round((m.get("size") or 0) / 2**20, 1),
             (m.get("details") or {}).get("quantization_level", ""), (m.get("details") or {}).get("family", ""),
             str(m.get("modified_at", ""))[:19]] for m in models]
    return pd.DataFrame(rows, columns=MODEL_COLUMNS)


REPORT_COLUMNS = ["type", "size (MiB)", "perplexity", "mean KLD", "p99 KLD", "same top %", "tokens/s"]


def _num(value, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def report_frame(report: dict | None) -> pd.DataFrame:
    rows = (report or {}).get("rows") or []
    return pd.DataFrame([[r["type"], round(r["bytes"] / 2**20, 1), _num(r["ppl"], 3), _num(r["kld_mean"], 5),
                          _num(r["kld_p99"], 5), _num(r["same_top"], 2), _num(r["tokens_per_s"], 1)] for r in rows],
                        columns=REPORT_COLUMNS)


def report_points(report: dict | None) -> pd.DataFrame:
    """Size against mean KL divergence, one point per type (the f16 reference at KL 0)."""
    rows = (report or {}).get("rows") or []
    return pd.DataFrame({"size_mib": [r["bytes"] / 2**20 for r in rows],
                         "kld_mean": [r["kld_mean"] or 0.0 for r in rows],
                         "type": [r["type"] for r in rows]})


def verdict_markdown(result: dict | None) -> str:
    """The export's outcome in words: fidelity verdict, chat format, stop, recommendation."""
    result = result or {}
    lines = []
    template = result.get("template") or {}
    if template:
        lines.append(f"**Template:** {template.get('name')} ({template.get('source')})")
    fidelity = result.get("fidelity")
    if fidelity:
        lines.append(fidelity["summary"])
    for name, v in (result.get("verify") or {}).items():
        check = v.get("template_check") or {}
        convs = check.get("conversations") or {}
        fmt = ", ".join(f"{c['served_tokens']}/{c['train_tokens']} tokens" for c in convs.values())
        stop = "stops on its own" if v.get("clean_stop") else f"does not stop on its own ({v.get('done_reason')})"
        lines.append(f"**{name}:** chat format {'matches training' if check.get('ok') else 'differs'}"
                     f"{f' ({fmt})' if fmt else ''}; {stop}.")
    report = result.get("quant_report")
    if report:
        lines.append(f"**Recommendation:** {report['recommendation']['text']}")
    deleted = result.get("deleted") or {}
    if deleted:  # recorded by the Storage tab: exporting again rebuilds what an export needs
        lines.append("**Deleted since (Storage):** " + "; ".join(
            f"{name} ({v.get('what')}, {v.get('bytes', 0) / 2**20:.1f} MiB, {fmt_time(v.get('at'))})"
            for name, v in deleted.items()) + ". Exporting again rebuilds what the export needs.")
    return "\n\n".join(lines)
