"""Datasets tab: easy-dataset's exports, registered for LLaMA-Factory with one click."""

from __future__ import annotations

from datetime import datetime

import gradio as gr
import pandas as pd

from ..datasets import RegistryError, exports, register_by_name, registered, status_of
from ..export.validation import InvalidInput, check_text
from ..runtime import Runtime

COLUMNS = ["project", "dataset", "format", "rows", "updated", "sha256", "status"]
EMPTY = ("**No easy-dataset export yet.** In the **Dataset prep** tab, open a project, then *Export → Use in "
         "LLaMA Factory*; its export appears here (read from `{folder}`), ready to register for training.")


def build(runtime: Runtime) -> dict:
    settings = runtime.settings

    def rows() -> tuple[list, dict]:
        found = exports(settings)
        return found, registered(settings.llamafactory_data)

    def list_datasets() -> list[dict]:
        """easy-dataset exports with their registration status (public API: /datasets)."""
        found, current = rows()
        return [{**e.as_dict(), "status": status_of(e, current)} for e in found]

    def table():
        found, current = rows()
        frame = pd.DataFrame([[e.project, e.name, e.formatting, "" if e.rows is None else e.rows,
                               datetime.fromtimestamp(e.updated).strftime("%Y-%m-%d %H:%M"), e.sha256,
                               status_of(e, current)] for e in found], columns=COLUMNS)
        names = [e.name for e in found if not e.problem]
        return (frame, gr.update(choices=names, value=names[0] if names else None),
                gr.update(visible=not found, value=EMPTY.format(folder=settings.easydataset_dir)))

    def register_dataset(name: str) -> str:
        """Register one export in LLaMA-Factory's dataset_info.json (public API: /register_dataset)."""
        try:
            name = check_text("Dataset", name or "", 512).strip()
            if not name:
                raise InvalidInput("Choose a dataset to register.")
            return register_by_name(settings, name)
        except (InvalidInput, RegistryError) as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        except OSError as exc:
            raise gr.Error(f"Could not write {settings.llamafactory_data}: {exc.strerror or exc}.",
                           print_exception=False) from None

    def register_click(name: str):
        message = register_dataset(name)
        gr.Info(message)
        return (message, *table())

    with gr.Tab("Datasets", id="datasets", elem_id="tab-datasets"):
        gr.Markdown("easy-dataset exports → LLaMA-Factory: registered datasets appear in LLaMA Board's "
                    f"**Dataset** list (data dir `{settings.llamafactory_data}`).")
        empty = gr.Markdown(EMPTY.format(folder=settings.easydataset_dir), visible=False, elem_id="datasets-empty")
        frame = gr.Dataframe(pd.DataFrame(columns=COLUMNS), interactive=False, elem_id="datasets-table", wrap=True)
        with gr.Row():
            choice = gr.Dropdown([], label="Export", elem_id="datasets-choice", scale=4)
            register_b = gr.Button("Register for training", variant="primary", elem_id="datasets-register", scale=1)
            refresh_b = gr.Button("↻ Refresh", elem_id="datasets-refresh", scale=1)
        result = gr.Markdown("", elem_id="datasets-result")
        private = {"api_visibility": "private", "show_progress": "hidden"}
        outputs = [frame, choice, empty]
        refresh_b.click(table, None, outputs, **private)
        register_b.click(register_click, [choice], [result, *outputs], **private)
        gr.api(list_datasets, api_name="datasets", concurrency_limit=None)
        gr.api(register_dataset, api_name="register_dataset", concurrency_limit=None)
    return {"load": table, "outputs": outputs}
