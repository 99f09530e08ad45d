"""Export tab: LoRA run → merged → GGUF → quantized → Ollama → verified; history and Ollama models.

Only wiring: validation and work live in `app.export`, Ollama calls in `app.ollama`.
"""

from __future__ import annotations

import asyncio
import html
from datetime import datetime

import gradio as gr
import pandas as pd

from ..export.engine import ExportBusy, ExportJob
from ..export.plan import DEFAULT_VERIFY_PROMPT, STAGES, build_request, default_ollama_name
from ..export.runs import discover_runs, find_run
from ..export.validation import GGUF_DTYPES, QUANT_TYPES, InvalidInput, validate_ollama_name
from ..ollama import OllamaError
from ..runtime import DataDirUnavailable, Runtime

RUN_COLUMNS = ["run", "base model", "template", "finished", "last loss"]
HISTORY_COLUMNS = ["job", "started", "status", "run", "models", "seconds", "error"]
MODEL_COLUMNS = ["name", "size (MiB)", "quantization", "family", "modified"]
STAGE_COLUMNS = ["stage", "state", "time"]
TEMPLATES = ["default", "alpaca", "chatml", "llama2", "llama3", "mistral", "qwen", "qwen3", "gemma", "phi",
             "deepseek3", "glm4", "empty"]


def _fmt_time(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M") if ts else ""


def runs_frame(runs) -> pd.DataFrame:
    return pd.DataFrame(
        [[r.name, r.base_model, r.template or "?", _fmt_time(r.finished_at),
          "" if r.last_loss is None else f"{r.last_loss:.4f}"] for r in runs],
        columns=RUN_COLUMNS,
    )


def progress_html(status: dict | None) -> str:
    status = status or {}
    pct = int(100 * float(status.get("progress") or 0))
    state = status.get("status", "idle")
    stage = status.get("stage", "")
    label = {"running": f"{stage} · {pct}%", "succeeded": "done · 100%"}.get(state, f"{state} at {stage}")
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


def build(runtime: Runtime) -> dict:
    def list_runs() -> list[dict]:
        """All LoRA runs under saves/, newest first (public API: /runs)."""
        try:
            return [r.as_dict() for r in discover_runs(runtime.settings.data_dir)]
        except OSError as exc:
            raise gr.Error(f"Cannot read runs: {exc}") from None

    def refresh_runs(current: str | None):
        runs = discover_runs(runtime.settings.data_dir)
        names = [r.name for r in runs]
        value = current if current in names else (names[0] if names else None)
        return gr.update(choices=names, value=value), runs_frame(runs)

    def fill_form(run_name: str | None):
        if not run_name:
            return "", gr.update(), ""
        try:
            info = find_run(runtime.settings.data_dir, run_name)
        except InvalidInput as exc:
            raise gr.Error(str(exc)) from None
        if info is None:
            return "", gr.update(), ""
        return info.base_model, gr.update(value=info.template or None), default_ollama_name(info)

    async def run_export(run: str, base_model: str, template: str, dtype: str, quant_types: list[str],
                         ollama_name: str, system_prompt: str, overwrite: bool):
        """Export a LoRA run to Ollama, streaming the log; returns (log, status)."""
        try:
            request = build_request(
                runtime.settings.data_dir, run=run, base_model=base_model, template=template, dtype=dtype,
                quant_types=quant_types, ollama_name=ollama_name, system_prompt=system_prompt,
                overwrite=bool(overwrite),
            )
            job = runtime.exports.start(request)
        except (InvalidInput, ExportBusy, DataDirUnavailable) as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        async for update in follow(job):
            yield update

    async def follow(job: ExportJob):
        sent_lines, sent_state = -1, None
        try:
            while True:
                finished = job.finished
                summary = job.summary()
                state = (summary["status"], summary["stage"], tuple(summary["stages"].values()))
                count = job.line_count()
                if count != sent_lines or state != sent_state or finished:
                    sent_lines, sent_state = count, state
                    yield job.log_text(), summary
                if finished:
                    return
                await asyncio.sleep(0.1)
        finally:
            if not job.finished:
                runtime.exports.cancel(job.id)

    def cancel_export():
        try:
            job = runtime.exports.current
        except DataDirUnavailable:
            return
        if job is not None and runtime.exports.cancel(job.id):
            gr.Info("Cancelling the export…")

    def history_rows():
        """Recent export jobs (public API: /history)."""
        try:
            jobs = runtime.exports.history.recent(100)
        except DataDirUnavailable as exc:
            raise gr.Error(str(exc)) from None
        return [{k: j[k] for k in ("id", "created", "finished", "status", "run", "request", "stages", "result",
                                   "error")} for j in jobs]

    def history_table():
        rows = []
        for j in history_rows():
            secs = sum((j["stages"] or {}).values())
            rows.append([j["id"], _fmt_time(j["created"]), j["status"], j["run"],
                         ", ".join((j["result"] or {}).get("ollama_models", [])), f"{secs:.1f}", j["error"]])
        return pd.DataFrame(rows, columns=HISTORY_COLUMNS)

    def history_log(evt: gr.SelectData, table: pd.DataFrame):
        job_id = table.iloc[evt.index[0], 0]
        job = runtime.exports.history.get(str(job_id))
        return job["log"] if job else ""

    def ollama_models():
        try:
            models = runtime.ollama.tags()
        except OllamaError as exc:
            return pd.DataFrame(columns=MODEL_COLUMNS), f"⚠️ {exc}"
        rows = [[m.get("name"), round((m.get("size") or 0) / 2**20, 1),
                 (m.get("details") or {}).get("quantization_level", ""), (m.get("details") or {}).get("family", ""),
                 str(m.get("modified_at", ""))[:19]] for m in models]
        return pd.DataFrame(rows, columns=MODEL_COLUMNS), f"{len(rows)} models in Ollama at {runtime.ollama.base_url}"

    def ask_delete(name: str):
        try:
            name = validate_ollama_name(name)
        except InvalidInput as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        return gr.update(visible=True, value=f"Really delete {name}?"), gr.update(visible=True)

    def do_delete(name: str):
        try:
            runtime.ollama.delete(validate_ollama_name(name))
        except (InvalidInput, OllamaError) as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        gr.Info(f"Deleted {name}")
        return (gr.update(visible=False), gr.update(visible=False), *ollama_models())

    with gr.Tab("Export", id="export", elem_id="tab-export"):
        with gr.Row():
            run = gr.Dropdown(label="LoRA run (under saves/)", choices=[], elem_id="export-run", scale=4,
                              allow_custom_value=True)
            refresh = gr.Button("↻ Refresh runs", elem_id="export-refresh", scale=1)
        runs_table = gr.Dataframe(headers=RUN_COLUMNS, interactive=False, elem_id="export-runs", max_height=220)
        with gr.Row():
            base_model = gr.Textbox(label="Base model (path in the data dir or hub id)", elem_id="export-base")
            template = gr.Dropdown(TEMPLATES, label="Chat template (from the run)", allow_custom_value=True,
                                   elem_id="export-template")
        with gr.Row():
            dtype = gr.Radio(list(GGUF_DTYPES), value="f16", label="GGUF dtype", elem_id="export-dtype")
            quants = gr.Dropdown(list(QUANT_TYPES), value=["Q4_K_M"], multiselect=True, allow_custom_value=True,
                                 label="Quantization types (none: load the GGUF as converted)",
                                 elem_id="export-quants")
        with gr.Row():
            name = gr.Textbox(label="Ollama model name", elem_id="export-name")
            overwrite = gr.Checkbox(False, label="Overwrite an existing Ollama model", elem_id="export-overwrite")
        system = gr.Textbox(label="System prompt (optional, any characters)", lines=2, elem_id="export-system")
        with gr.Row():
            start = gr.Button("Export", variant="primary", elem_id="export-start")
            cancel = gr.Button("Cancel", variant="stop", elem_id="export-cancel")
        progress = gr.HTML(progress_html(None), elem_id="export-progress")
        with gr.Row():
            stages = gr.Dataframe(stages_frame(None), interactive=False, elem_id="export-stages", scale=1)
            log = gr.Textbox(label="Log", lines=16, max_lines=16, autoscroll=True, elem_id="export-log",
                             buttons=["copy"], scale=3)
        status = gr.JSON(label="Result", elem_id="export-status")
        gr.Markdown(f"Verification prompt: *{DEFAULT_VERIFY_PROMPT}*")

        with gr.Accordion("History", open=False):
            history_refresh = gr.Button("↻ Refresh history", elem_id="history-refresh")
            history = gr.Dataframe(headers=HISTORY_COLUMNS, interactive=False, elem_id="export-history")
            history_detail = gr.Textbox(label="Log of the selected job", lines=10, max_lines=10,
                                        elem_id="history-log")
        with gr.Accordion("Ollama models", open=False):
            models_info = gr.Markdown("", elem_id="ollama-info")
            models_refresh = gr.Button("↻ Refresh models", elem_id="ollama-refresh")
            models = gr.Dataframe(headers=MODEL_COLUMNS, interactive=False, elem_id="ollama-models")
            with gr.Row():
                delete_name = gr.Textbox(label="Model to delete", elem_id="ollama-delete-name")
                delete = gr.Button("Delete…", elem_id="ollama-delete")
            confirm_text = gr.Markdown(visible=False, elem_id="ollama-confirm-text")
            confirm = gr.Button("Yes, delete it", variant="stop", visible=False, elem_id="ollama-confirm")

        hidden_runs = gr.JSON(visible=False)
        private = {"api_visibility": "private"}
        refresh.click(refresh_runs, [run], [run, runs_table], **private)
        run.change(fill_form, [run], [base_model, template, name], **private)
        export_event = start.click(
            run_export, [run, base_model, template, dtype, quants, name, system, overwrite], [log, status],
            api_name="export", concurrency_limit=None,
        )
        status.change(lambda s: (progress_html(s), stages_frame(s)), [status], [progress, stages], **private,
                      show_progress="hidden")
        cancel.click(cancel_export, None, None, cancels=[export_event], api_name="cancel_export")
        gr.Button(visible=False).click(list_runs, None, [hidden_runs], api_name="runs")
        history_refresh.click(history_table, None, [history], **private)
        gr.Button(visible=False).click(history_rows, None, [hidden_runs], api_name="history")
        history.select(history_log, [history], [history_detail], **private)
        models_refresh.click(ollama_models, None, [models, models_info], **private)
        delete.click(ask_delete, [delete_name], [confirm_text, confirm], **private)
        confirm.click(do_delete, [delete_name], [confirm_text, confirm, models, models_info], **private)
    return {"run": run, "runs_table": runs_table, "refresh": refresh_runs, "base_model": base_model,
            "template": template, "name": name, "history": history, "history_table": history_table,
            "models": models, "models_info": models_info, "ollama_models": ollama_models}
