"""Runs tab: every training run at a glance, live loss/learning-rate curves, compare, export."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from ..export.validation import InvalidInput
from ..runtime import DataDirUnavailable, Runtime
from ..training.request import train_again_yaml
from ..training.tracker import COLUMNS, RunTracker

REFRESH_S = 2.0
EMPTY = ("**No training runs yet.** A run appears here within seconds of starting: train from the "
         "**Training** tab (LLaMA Board writes to `saves/<model>/lora/<run>`), or run "
         "`llamafactory-cli train` with `output_dir` under `{saves}`.")


def build(runtime: Runtime) -> dict:
    tracker = RunTracker(runtime.settings.data_dir)

    def training_runs() -> list[dict]:
        """Every run under saves/ with status and progress (public API: /training_runs)."""
        return [r.as_dict() for r in tracker.scan()]

    def queued_rows() -> list[list]:
        """Jobs of TuneDeck's queue that have not written a run yet: listed with their place in line."""
        try:
            jobs = runtime.training.store.queued()
        except DataDirUnavailable:
            return []
        return [[j.name, j.request.get("config", {}).get("model_name_or_path", ""), "", f"queued (#{i})",
                 "", "", "", "", "", "", "", ""] for i, j in enumerate(jobs, 1)]

    def refresh(selected: list[str] | None, state: dict | None):
        runs = tracker.scan()
        waiting = [r for r in queued_rows() if r[0] not in {run.name for run in runs}]
        names = [r.name for r in runs]
        asked = list(selected or [])
        selected = [n for n in asked if n in names]
        if not selected and names:
            selected = [names[0]]
        key = (tuple(r.row().__repr__() for r in runs), repr(waiting), tuple(selected),
               tuple(tracker.points(n) for n in selected))
        if state and state.get("key") == repr(key):
            return [gr.skip()] * 6
        loss, lr = tracker.curves(selected)
        frame = tracker.frame(runs)
        if waiting:
            frame = pd.concat([pd.DataFrame(waiting, columns=COLUMNS), frame], ignore_index=True)
        # the dropdown is touched only when its runs or the selection must change (a run appeared or went
        # away, none chosen yet): a tick never re-renders it under a user who is choosing
        if selected != asked:
            choice = gr.update(choices=names, value=selected)
        elif state and state.get("names") == names:
            choice = gr.skip()
        else:
            choice = gr.update(choices=names)
        return (frame, choice, loss, lr, {"key": repr(key), "names": names},
                gr.update(visible=not runs and not waiting, value=EMPTY.format(saves=tracker.saves)))

    def replot(selected: list[str] | None):
        loss, lr = tracker.curves(selected or [])
        return loss, lr

    def export_target(selected: list[str] | None):
        """The run chosen last goes to the Export tab's form; a run still training is refused, not swapped."""
        if not selected:
            raise gr.Error("Select a finished run first.", print_exception=False)
        by_name = {r.name: r for r in tracker.scan()}
        chosen = [by_name[n] for n in selected if n in by_name]
        if not chosen:
            raise gr.Error("The selected runs are gone: refresh and select a finished run.", print_exception=False)
        target = chosen[-1]
        if target.status != "finished" or not target.exportable:
            state = (target.status if target.status != "finished"
                     else "finished but holds no adapter, model or checkpoint")
            raise gr.Error(f"Only finished runs can be exported: {target.name} (the run chosen last) is {state}.",
                           print_exception=False)
        return gr.update(value=target.name), gr.Tabs(selected="export")

    def again_target(selected: list[str] | None):
        """The most recently selected run's arguments, with a fresh output_dir, into the Train tab's form."""
        if not selected:
            raise gr.Error("Select a run first.", print_exception=False)
        try:
            text = train_again_yaml(runtime.settings.data_dir, selected[-1])
        except InvalidInput as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        return text, gr.Tabs(selected="train")

    with gr.Tab("Runs", id="runs", elem_id="tab-runs"):
        empty = gr.Markdown(EMPTY.format(saves=tracker.saves), elem_id="runs-empty")
        table = gr.Dataframe(pd.DataFrame(columns=COLUMNS), interactive=False, elem_id="runs-table",
                             max_height=320, wrap=True)
        with gr.Row():
            select = gr.Dropdown([], multiselect=True, label="Runs to plot (several to compare)",
                                 elem_id="runs-select", scale=4)
            export_b = gr.Button("Export this run →", elem_id="runs-export", scale=1)
            again_b = gr.Button("Train again →", elem_id="runs-again", scale=1)
        with gr.Row():
            loss_plot = gr.LinePlot(x="step", y="value", color="series", title="Loss", elem_id="runs-loss",
                                    x_title="step", y_title="loss", height=320)
            lr_plot = gr.LinePlot(x="step", y="value", color="series", title="Learning rate", elem_id="runs-lr",
                                  x_title="step", y_title="lr", height=320)
        state = gr.State({})
        private = {"api_visibility": "private", "show_progress": "hidden"}
        outputs = [table, select, loss_plot, lr_plot, state, empty]
        gr.Timer(REFRESH_S).tick(refresh, [select, state], outputs, concurrency_limit=None, **private)
        select.input(replot, [select], [loss_plot, lr_plot], **private)
        gr.api(training_runs, api_name="training_runs", concurrency_limit=None)
    return {"refresh": refresh, "outputs": outputs, "select": select, "state": state, "export_button": export_b,
            "export_target": export_target, "again_button": again_b, "again_target": again_target}
