"""Export tab: a run (LoRA, full or freeze, or one of its checkpoints) → merged → GGUF → quantized → Ollama → verified, streamed and cancellable.

Only wiring: validation and work live in `app.export`, Ollama calls in `app.ollama`. Anything
that touches the disk, SQLite or Docker runs in a worker thread, never on Gradio's event loop.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Callable

import gradio as gr

from ..export import feed
from ..export.engine import ExportBusy, ExportJob
from ..export.plan import DEFAULT_VERIFY_PROMPT, build_request, default_ollama_name
from ..export.reports import base_request, report_request
from ..export.validation import GGUF_DTYPES, QUANT_TYPES, InvalidInput
from ..runs import discover_runs, find_run
from ..runtime import DataDirUnavailable, Runtime
from ..safe_fs import UnsafePath
from . import export_history
from .export_views import (
    REPORT_COLUMNS,
    RUN_COLUMNS,
    progress_html,
    report_frame,
    report_points,
    runs_frame,
    stages_frame,
    verdict_markdown,
)

TEMPLATES = ["default", "alpaca", "chatml", "llama2", "llama3", "mistral", "qwen", "qwen3", "gemma", "phi",
             "deepseek3", "glm4", "empty"]
NO_RUNS = ("**No run to export yet.** A run becomes exportable when its folder under `{saves}` holds a LoRA "
           "adapter (`adapter_config.json` and its weights), the model of a full or freeze fine-tune "
           "(`config.json` and its weights), or a `checkpoint-N` of either: finish a training in the "
           "**Training** tab or with `llamafactory-cli train`, then watch it in the **Runs** tab.")
PRIVATE = {"api_visibility": "private"}
REFUSALS = (InvalidInput, ExportBusy, DataDirUnavailable, UnsafePath)  # one sentence each, shown as gr.Error


async def start_unorphaned(start: Callable[..., ExportJob], cancel: Callable[[str], object], *args) -> ExportJob:
    """`start(*args)` in a worker thread. Should the request be cancelled meanwhile (the client went away
    between the click and the first update), the job it started is cancelled the moment it exists: no job
    is ever left running that nothing follows or can cancel."""
    task = asyncio.ensure_future(asyncio.to_thread(start, *args))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        def orphaned(done: asyncio.Future) -> None:
            if not done.cancelled() and done.exception() is None:
                cancel(done.result().id)

        task.add_done_callback(orphaned)
        raise


def build(runtime: Runtime) -> dict:
    saves = runtime.settings.data_dir / "saves"

    def list_runs() -> list[dict]:
        """Every exportable run under saves/ with its checkpoints, newest first (public API: /runs)."""
        try:
            return [r.as_dict() for r in discover_runs(runtime.settings.data_dir)]
        except OSError as exc:
            raise gr.Error(f"Cannot read runs: {exc}", print_exception=False) from None

    def refresh_runs(current: str | None):
        runs = discover_runs(runtime.settings.data_dir)
        names = [n for r in runs for n in (r.name, *(c["name"] for c in r.checkpoints))]  # the final one first
        value = current if current in names else (names[0] if names else None)
        return (gr.update(choices=names, value=value), runs_frame(runs),
                gr.update(visible=not runs, value=NO_RUNS.format(saves=saves)))

    def fill_form(run_name: str | None):
        if not run_name:
            return "", gr.update(), ""
        try:
            info = find_run(runtime.settings.data_dir, run_name)
        except InvalidInput as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        if info is None:
            return "", gr.update(), ""
        return info.base_model, gr.update(value=info.template or None), default_ollama_name(info)

    def cancel_job(job_id: str) -> None:
        runtime.exports.cancel(job_id)  # the manager exists: it started the job

    def start_job(run, base_model, template, dtype, quant_types, ollama_name, system_prompt, overwrite, imatrix,
                  report, kl_threshold) -> ExportJob:
        request = build_request(runtime.settings.data_dir, run=run, base_model=base_model, template=template,
                                dtype=dtype, quant_types=quant_types, ollama_name=ollama_name,
                                system_prompt=system_prompt, overwrite=overwrite, imatrix=imatrix, report=report,
                                kl_threshold=kl_threshold)
        return runtime.exports.start(request)

    async def run_export(run: str, base_model: str, template: str, dtype: str, quant_types: list[str],
                         ollama_name: str, system_prompt: str, overwrite: bool, imatrix: bool, report: bool,
                         kl_threshold: float):
        """Export a run (or one of its checkpoints) to Ollama, streaming the log; returns (log, status)."""
        try:
            job = await start_unorphaned(start_job, cancel_job, run, base_model, template, dtype,
                                         quant_types, ollama_name, system_prompt, overwrite, imatrix, report,
                                         kl_threshold)
        except REFUSALS as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        async for update in follow(job):
            yield update

    def follow(job: ExportJob):
        return feed.follow(job, cancel_job)

    def start_report(job_id, kl_threshold) -> ExportJob:
        request = report_request(runtime.settings.data_dir, runtime.exports.history, job_id, kl_threshold)
        return runtime.exports.start_report(request)

    async def quant_report(job_id: str, kl_threshold: float) -> AsyncIterator[tuple[str, dict]]:
        """Quantization report for a finished export (public API: /quant_report); streams (log, status)."""
        try:
            job = await start_unorphaned(start_report, cancel_job, job_id, kl_threshold)
        except REFUSALS as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        async for update in follow(job):
            yield update

    async def compare_base(job_id: str, run: str) -> AsyncIterator[tuple[str, dict]]:
        """Export the base model like a fine-tune's export, as `<name>-base` (public API: /compare_base;
        give an export job id, or a run to use its newest export); streams (log, status)."""
        try:
            request = await asyncio.to_thread(base_request, runtime.settings.data_dir, runtime.exports.history,
                                              job_id, run)
            job = await start_unorphaned(runtime.exports.start, cancel_job, request)
        except REFUSALS as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        async for update in follow(job):
            yield update

    def cancel_export() -> None:
        """Cancel the running export (public API: /cancel_export)."""
        try:
            job = runtime.exports.current
        except DataDirUnavailable:
            return
        if job is not None and runtime.exports.cancel(job.id):
            gr.Info("Cancelling the export…")

    with gr.Tab("Export", id="export", elem_id="tab-export"):
        ollama_banner = gr.Markdown("", elem_id="export-ollama-state")
        no_runs = gr.Markdown(NO_RUNS.format(saves=saves), visible=False, elem_id="export-empty")
        with gr.Row():
            run = gr.Dropdown(label="Run or checkpoint (under saves/)", choices=[], elem_id="export-run", scale=4,
                              allow_custom_value=True)
            refresh = gr.Button("↻ Refresh runs", elem_id="export-refresh", scale=1)
        runs_table = gr.Dataframe(headers=RUN_COLUMNS, interactive=False, elem_id="export-runs", max_height=220)
        with gr.Row():
            base_model = gr.Textbox(label="Base model (path in the data dir or hub id)", elem_id="export-base")
            template = gr.Dropdown(TEMPLATES, label="Chat template (empty: the run's own, inferred if not recorded)",
                                   allow_custom_value=True, elem_id="export-template")
        with gr.Row():
            dtype = gr.Radio(list(GGUF_DTYPES), value="f16", label="GGUF dtype", elem_id="export-dtype")
            quants = gr.Dropdown(list(QUANT_TYPES), value=["Q4_K_M"], multiselect=True, allow_custom_value=True,
                                 label="Quantization types (none: load the GGUF as converted)",
                                 elem_id="export-quants")
        with gr.Row():
            name = gr.Textbox(label="Ollama model name", elem_id="export-name")
            overwrite = gr.Checkbox(False, label="Overwrite an existing Ollama model", elem_id="export-overwrite")
        with gr.Row():
            imatrix = gr.Checkbox(False, label="Importance matrix from the run's data (k-quants, IQ types)",
                                  elem_id="export-imatrix")
            report = gr.Checkbox(True, label="Quantization report", elem_id="export-report")
            threshold = gr.Number(runtime.settings.kl_threshold, label="Recommend under mean KL divergence",
                                  elem_id="export-threshold", minimum=0)
        system = gr.Textbox(label="System prompt (optional, any characters)", lines=2, elem_id="export-system")
        with gr.Row():
            start = gr.Button("Export", variant="primary", elem_id="export-start")
            cancel = gr.Button("Cancel", variant="stop", elem_id="export-cancel")
        progress = gr.HTML(progress_html(None), elem_id="export-progress")
        with gr.Row():
            stages = gr.Dataframe(stages_frame(None), interactive=False, elem_id="export-stages", scale=1)
            log = gr.Textbox(label="Log", lines=16, max_lines=16, autoscroll=True, elem_id="export-log",
                             buttons=["copy"], scale=3)
        verdict = gr.Markdown("", elem_id="export-verdict")
        with gr.Row():
            report_table = gr.Dataframe(headers=REPORT_COLUMNS, interactive=False, elem_id="export-report-table",
                                        scale=3)
            report_plot = gr.ScatterPlot(report_points(None), x="size_mib", y="kld_mean", color="type",
                                         title="Size vs KL divergence", x_title="MiB", y_title="mean KLD",
                                         elem_id="export-report-plot", height=260, scale=2)
        with gr.Accordion("Result (JSON)", open=False):
            status = gr.JSON(label="Result", elem_id="export-status")
        gr.Markdown(f"Verification prompt: *{DEFAULT_VERIFY_PROMPT}*")
        lower = export_history.build(runtime)

        refresh.click(refresh_runs, [run], [run, runs_table, no_runs], **PRIVATE)
        run.change(fill_form, [run], [base_model, template, name], **PRIVATE)
        export_event = start.click(
            run_export, [run, base_model, template, dtype, quants, name, system, overwrite, imatrix, report,
                         threshold], [log, status], api_name="export", concurrency_limit=None,
        )

        def show(s):
            result = (s or {}).get("result") or {}
            return (progress_html(s), stages_frame(s), verdict_markdown(result),
                    report_frame(result.get("quant_report")), report_points(result.get("quant_report")))

        status.change(show, [status], [progress, stages, verdict, report_table, report_plot], **PRIVATE,
                      show_progress="hidden")
        gr.api(cancel_export, api_name="cancel_export", concurrency_limit=None)  # named first: the public name
        cancel.click(cancel_export, None, None, cancels=[export_event], **PRIVATE)
        gr.api(list_runs, api_name="runs", concurrency_limit=None)
        gr.api(quant_report, api_name="quant_report", concurrency_limit=None)
        gr.api(compare_base, api_name="compare_base", concurrency_limit=None)
        report_event = lower["report_button"].click(quant_report, [lower["selected"], threshold], [log, status],
                                                    concurrency_limit=None, **PRIVATE)
        cancel.click(None, None, None, cancels=[report_event], **PRIVATE)
        model_outputs = [lower["models"], lower["models_info"], ollama_banner]
        lower["models_refresh"].click(lower["ollama_models"], None, model_outputs, **PRIVATE)
        lower["confirm"].click(lower["do_delete"], [lower["delete_name"]],
                               [lower["confirm_text"], lower["confirm"], *model_outputs], **PRIVATE)
    return {"compare_base": compare_base, "selected": lower["selected"], "compare_button": lower["compare_button"],
            "run": run, "runs_table": runs_table, "no_runs": no_runs, "refresh": refresh_runs,
            "base_model": base_model, "template": template, "name": name, "history": lower["history"],
            "history_table": lower["history_table"], "model_outputs": model_outputs,
            "ollama_models": lower["ollama_models"]}
