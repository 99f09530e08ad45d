"""Train tab: submit LLaMA-Factory trainings to TuneDeck's queue (this host's GPUs, or a Ray cluster), watch,
cancel, resume, retry and reorder them; the GPU panel. Only wiring: the queue lives in `app.training`.

Everything here that touches SQLite, files or Docker runs in Gradio's worker threads (plain functions)
or `asyncio.to_thread`, never on the event loop.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path
from typing import AsyncIterator

import gradio as gr
import pandas as pd

from ..export.validation import QUANT_TYPES, InvalidInput
from ..runs import discover_run_dirs
from ..runtime import DataDirUnavailable, Runtime
from ..training.board import board_yaml, saved_arguments
from ..training.jobs import FINAL, TrainJob
from ..training.request import train_again_yaml

COLUMNS = ["job", "state", "run", "where", "priority", "GPUs", "attempt", "started", "elapsed", "export", "note"]
ACTIONS = ("cancel", "resume", "retry", "up", "down")
REFRESH_S = 2.0
INTRO = ("Queue LLaMA-Factory trainings: paste or upload a `llamafactory-cli train` YAML, start again from a "
         "run, then **Queue training**. Jobs run one after another on this host (each gets its own GPUs; "
         "on a host without GPUs one at a time on the CPU){ray}. `output_dir` goes under `{saves}`; the run "
         "shows in **Runs** with live curves as soon as it logs.")


def _fail(exc: Exception):
    raise gr.Error(str(exc), print_exception=False) from None


def job_row(job: TrainJob, now: float) -> list:
    started = datetime.fromtimestamp(job.started).strftime("%H:%M:%S") if job.started else ""
    end = job.finished if job.state in FINAL and job.finished else now
    elapsed = f"{int(end - job.started)} s" if job.started else ""
    where = job.backend
    if job.backend == "ray" and job.handle.get("ray_status"):
        where = f"ray ({job.handle['ray_status'].lower()}" + (f" on {job.handle['node']}" if job.handle.get("node")
                                                                else "") + ")"
    export = ""
    if job.request.get("export"):
        export = (job.export_job[1:] if job.export_job.startswith("!") else job.export_job) or "when done"
    gpus = ",".join(map(str, job.gpus)) if job.gpus else (job.request.get("gpus", "") if job.state == "queued"
                                                          else "CPU" if job.backend == "local" else "")
    state = "cancelling" if job.cancel and job.state == "running" else job.state
    return [job.id, state, job.name, where, job.priority, gpus, job.attempt, started, elapsed, export,
            job.error[:160]]


def build(runtime: Runtime) -> dict:
    settings = runtime.settings
    saves = settings.data_dir / "saves"

    def queue():
        try:
            return runtime.training
        except DataDirUnavailable as exc:
            _fail(exc)

    # -- public API -------------------------------------------------------------------------------------
    def train(config: str, gpus: str = "all", where: str = "local", priority: float = 0, cpus: float | None = None,
              export: dict | None = None) -> dict:
        """Queue a training: a LLaMA-Factory YAML, checked by TuneDeck and by LLaMA-Factory's own parser first
        (public API: /train). `export` (optional): settings to export the run with when it finishes."""
        try:
            return queue().submit(config, gpus=gpus, backend=where, priority=priority, cpus=cpus,
                                  export=export).as_dict()
        except InvalidInput as exc:
            _fail(exc)

    def train_queue() -> list[dict]:
        """Every training job, running and queued first in start order, then ended ones (public API)."""
        return [j.as_dict() for j in queue().jobs()]

    def train_control(job_id: str, action: str) -> dict:
        """cancel, resume (from the last checkpoint), retry (from the start), up or down (public API)."""
        q = queue()
        try:
            if action not in ACTIONS:
                raise InvalidInput(f"Action must be one of {', '.join(ACTIONS)}, not {str(action)[:20]!r}.")
            if action in ("up", "down"):
                return q.move(job_id, -1 if action == "up" else 1).as_dict()
            return getattr(q, action)(job_id).as_dict()
        except InvalidInput as exc:
            _fail(exc)

    async def train_log(job_id: str, follow: bool = True) -> AsyncIterator[str]:
        """The job's output (the last 64 KiB), updated while it runs; ends when the job ends (public API)."""
        q = await asyncio.to_thread(queue)
        job = await asyncio.to_thread(q.store.get, str(job_id or ""))
        if job is None:
            _fail(InvalidInput(f"There is no training job {str(job_id)[:40]!r}."))
        last = None
        while True:
            text = await asyncio.to_thread(q.log_text, job.id)
            if text != last:
                last = text
                yield text
            job = await asyncio.to_thread(q.store.get, job.id)
            if not follow or job is None or job.state in FINAL:
                text = await asyncio.to_thread(q.log_text, job.id)
                if text != last:
                    yield text
                return
            await asyncio.sleep(1.0)

    def gpus() -> dict:
        """This host's GPUs (memory, utilisation) and the processes on them, from nvidia-smi (public API)."""
        q = queue()
        found, note = q.inventory.gpus(max_age=3.0)
        procs = q.inventory.processes() if found else []
        return {"gpus": [g.__dict__ for g in found], "processes": procs, "note": note}

    # -- UI -----------------------------------------------------------------------------------------------
    def gpu_markdown() -> str:
        try:
            info = gpus()
        except gr.Error as exc:
            return f"**GPUs:** {exc}"
        if not info["gpus"]:
            return f"**GPUs:** {info['note'] or 'none found.'}"
        lines = ["| GPU | name | memory | utilisation | temperature | processes |", "|---|---|---|---|---|---|"]
        for g in info["gpus"]:
            procs = [p for p in info["processes"] if p["gpu_uuid"] == g["uuid"]]
            mem = (f"{g['memory_used_mib'] or 0:.0f} / {g['memory_total_mib']:.0f} MiB"
                   if g["memory_total_mib"] is not None else "?")
            temp = "" if g["temperature_c"] is None else f"{g['temperature_c']:.0f} °C"
            lines.append(f"| {g['index']} | {g['name']} | {mem} | {g['utilization_pct'] or 0:.0f} % | {temp} | "
                         + ", ".join(f"{p['process']} ({p['pid']}, {p['memory_mib'] or 0:.0f} MiB)" for p in procs)
                         + " |")
        return "\n".join(lines)

    def runs_with_args() -> list[str]:
        return [str(p.relative_to(saves)) for p in discover_run_dirs(saves) if (p / "training_args.yaml").is_file()]

    def refresh(selected: str | None, state: dict | None):
        q = queue()
        jobs = q.jobs()
        now = time.time()
        frame = pd.DataFrame([job_row(j, now) for j in jobs], columns=COLUMNS)
        ids = [j.id for j in jobs]
        value = selected if selected in ids else (ids[0] if ids else None)
        text = q.log_text(value) if value else ""
        key = repr((frame.values.tolist(), value, len(text), text[-200:]))
        if state and state.get("key") == key:
            return [gr.skip()] * 4
        return frame, gr.update(choices=ids, value=value), text, {"key": key}

    def load_upload(file) -> str:
        if not file:
            return gr.skip()
        path = Path(file if isinstance(file, str) else file.name)
        if path.stat().st_size > 200_000:
            _fail(InvalidInput("That file is too large for a training config (200 kB at most)."))
        return path.read_text(encoding="utf-8", errors="replace")

    def load_board(name: str | None) -> str:
        if not name:
            return gr.skip()
        try:
            return board_yaml(settings, runtime.gateway, name)
        except InvalidInput as exc:
            _fail(exc)

    def sources():
        return gr.update(choices=runs_with_args()), gr.update(choices=saved_arguments(settings.data_dir))

    def load_again(run: str | None) -> str:
        if not run:
            return gr.skip()
        try:
            return train_again_yaml(settings.data_dir, run)
        except InvalidInput as exc:
            _fail(exc)

    def submit_click(config, gpu_text, where, priority, cpus, export_on, export_name, export_quants):
        export = {"ollama_name": export_name, "quant_types": export_quants or []} if export_on else None
        job = train(config, gpu_text, where or "local", priority, cpus or None, export)
        ids = [j.id for j in queue().jobs()]
        return f"Queued as job **{job['id']}**: `{job['run']}`.", gr.update(choices=ids, value=job["id"])

    def control_click(job_id: str | None, action: str):
        if not job_id:
            _fail(InvalidInput("Choose a job first."))
        job = train_control(job_id, action)
        return f"Job **{job['id']}** is {job['state']}" + (f" (attempt {job['attempt']})" if action in
                                                            ("resume", "retry") else "") + "."

    ray = bool(settings.ray_address)
    with gr.Tab("Train", id="train", elem_id="tab-train"):
        gr.Markdown(INTRO.format(saves=saves, ray=f", or on the Ray cluster at `{settings.ray_address}`" if ray
                                 else ""))
        gpu_panel = gr.Markdown("**GPUs:** …", elem_id="train-gpus")
        with gr.Row():
            with gr.Column(scale=3):
                with gr.Row():
                    upload = gr.File(label="Upload a YAML", file_types=[".yaml", ".yml"], type="filepath",
                                     elem_id="train-upload", height=90)
                    again = gr.Dropdown([], label="Train again from a run (its training_args.yaml)",
                                        elem_id="train-again")
                    board = gr.Dropdown([], label="LLaMA Board's saved arguments", elem_id="train-board")
                config = gr.Code("", language="yaml", label="Training config (llamafactory-cli train YAML)",
                                 elem_id="train-config", lines=18, interactive=True)
            with gr.Column(scale=1):
                where = gr.Radio(["local", "ray"], value="local", label="Where", visible=ray, elem_id="train-where")
                gpu_text = gr.Textbox("all", label="GPUs: all, a count, or ids such as 0,1", elem_id="train-gpus-in")
                cpus = gr.Number(None, label="CPUs per job (Ray)", visible=ray, elem_id="train-cpus")
                priority = gr.Number(0, precision=0, label="Priority (higher starts first)", elem_id="train-priority")
                export_on = gr.Checkbox(False, label="Export to Ollama when done", elem_id="train-export")
                export_name = gr.Textbox("", label="Ollama name (empty: the run's)", elem_id="train-export-name")
                export_quants = gr.Dropdown(list(QUANT_TYPES), value=["Q4_K_M"], multiselect=True,
                                            label="Quantization", elem_id="train-export-quants")
                submit_b = gr.Button("Queue training", variant="primary", elem_id="train-submit")
        result = gr.Markdown("", elem_id="train-result")
        table = gr.Dataframe(pd.DataFrame(columns=COLUMNS), interactive=False, elem_id="train-queue", wrap=True,
                             max_height=320)
        with gr.Row():
            job = gr.Dropdown([], label="Job", elem_id="train-job", scale=3, allow_custom_value=True)
            buttons = {a: gr.Button(label, elem_id=f"train-{a}", scale=1) for a, label in
                       (("cancel", "Cancel"), ("resume", "Resume from checkpoint"), ("retry", "Retry"),
                        ("up", "↑ Earlier"), ("down", "↓ Later"))}
        log = gr.Textbox("", label="Job log", lines=16, max_lines=16, autoscroll=True, elem_id="train-log",
                         buttons=["copy"])
        state = gr.State({})
        private = {"api_visibility": "private", "show_progress": "hidden"}
        outputs = [table, job, log, state]
        gr.Timer(REFRESH_S).tick(refresh, [job, state], outputs, concurrency_limit=None, **private)
        gr.Timer(5.0).tick(gpu_markdown, None, [gpu_panel], concurrency_limit=None, **private)
        job.input(refresh, [job, state], outputs, **private)
        upload.upload(load_upload, [upload], [config], **private)
        again.input(load_again, [again], [config], **private)
        board.input(load_board, [board], [config], api_visibility="private", show_progress="full")
        again.focus(lambda: gr.update(choices=runs_with_args()), None, [again], **private)
        board.focus(lambda: gr.update(choices=saved_arguments(settings.data_dir)), None, [board], **private)
        submit_b.click(submit_click, [config, gpu_text, where, priority, cpus, export_on, export_name, export_quants],
                       [result, job], api_visibility="private", concurrency_limit=None)
        for action, button in buttons.items():
            button.click(lambda j, a=action: control_click(j, a), [job], [result], api_visibility="private",
                         concurrency_limit=None)
        gr.api(train, api_name="train", concurrency_limit=None)
        gr.api(train_queue, api_name="train_queue", concurrency_limit=None)
        gr.api(train_control, api_name="train_control", concurrency_limit=None)
        gr.api(train_log, api_name="train_log", concurrency_limit=None)
        gr.api(gpus, api_name="gpus", concurrency_limit=None)
    return {"refresh": refresh, "outputs": outputs, "job": job, "state": state, "gpu_panel": gpu_panel,
            "gpu_markdown": gpu_markdown, "sources": sources, "source_outputs": [again, board], "config": config}
