"""Export tab, lower half: the persisted job history and the models Ollama holds (with delete)."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from ..export.validation import InvalidInput, validate_ollama_name
from ..ollama import OllamaError
from ..runtime import DataDirUnavailable, Runtime
from .export_views import (
    HISTORY_COLUMNS,
    MODEL_COLUMNS,
    REPORT_COLUMNS,
    history_frame,
    models_frame,
    report_frame,
    verdict_markdown,
)

PRIVATE = {"api_visibility": "private"}


def build(runtime: Runtime) -> dict:
    def history_rows() -> list[dict]:
        """Recent export jobs: inputs, stage timings, result, error (public API: /history)."""
        try:
            return runtime.exports.history.recent(100)
        except DataDirUnavailable as exc:
            raise gr.Error(str(exc), print_exception=False) from None

    def history_table() -> pd.DataFrame:
        return history_frame(history_rows())

    def history_detail(evt: gr.SelectData, table: pd.DataFrame):
        """The selected job: its log, its outcome in words and its quantization report."""
        job_id = str(table.iloc[evt.index[0], 0])
        row = runtime.exports.history.get(job_id) or {}
        result = row.get("result") or {}
        return (runtime.exports.history.log_of(job_id) or "", verdict_markdown(result),
                report_frame(result.get("quant_report")), job_id)

    def ollama_models():
        """(models table, one line on Ollama's state, the banner at the top of the tab)."""
        try:
            models = runtime.ollama.tags()
        except OllamaError as exc:
            warning = f"⚠️ {exc} Exports and the Playground need it: start the ollama service in the Services tab."
            return pd.DataFrame(columns=MODEL_COLUMNS), f"⚠️ {exc}", warning
        return models_frame(models), f"{len(models)} models in Ollama at {runtime.ollama.base_url}", ""

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

    with gr.Accordion("History", open=False):
        history_refresh = gr.Button("↻ Refresh history", elem_id="history-refresh")
        history = gr.Dataframe(headers=HISTORY_COLUMNS, interactive=False, elem_id="export-history")
        selected = gr.Textbox(label="Selected job", interactive=False, elem_id="history-selected")
        history_verdict = gr.Markdown("", elem_id="history-verdict")
        history_report = gr.Dataframe(headers=REPORT_COLUMNS, interactive=False, elem_id="history-report")
        with gr.Row():
            report_button = gr.Button("Quantization report for the selected job", elem_id="history-report-run")
            compare_button = gr.Button("Compare with base (opens the Playground)", elem_id="history-compare")
        history_log = gr.Textbox(label="Log of the selected job", lines=10, max_lines=10, elem_id="history-log")
    with gr.Accordion("Ollama models", open=False):
        models_info = gr.Markdown("", elem_id="ollama-info")
        models_refresh = gr.Button("↻ Refresh models", elem_id="ollama-refresh")
        models = gr.Dataframe(headers=MODEL_COLUMNS, interactive=False, elem_id="ollama-models")
        with gr.Row():
            delete_name = gr.Textbox(label="Model to delete", elem_id="ollama-delete-name")
            delete = gr.Button("Delete…", elem_id="ollama-delete")
        confirm_text = gr.Markdown(visible=False, elem_id="ollama-confirm-text")
        confirm = gr.Button("Yes, delete it", variant="stop", visible=False, elem_id="ollama-confirm")

    history_refresh.click(history_table, None, [history], **PRIVATE)
    gr.api(history_rows, api_name="history", concurrency_limit=None)
    history.select(history_detail, [history], [history_log, history_verdict, history_report, selected], **PRIVATE)
    delete.click(ask_delete, [delete_name], [confirm_text, confirm], **PRIVATE)
    return {"history": history, "history_table": history_table, "models": models, "models_info": models_info,
            "ollama_models": ollama_models, "models_refresh": models_refresh, "confirm": confirm,
            "confirm_text": confirm_text, "do_delete": do_delete, "delete_name": delete_name,
            "selected": selected, "report_button": report_button, "compare_button": compare_button}
