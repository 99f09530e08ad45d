"""Services tab: the stack's containers, live."""

from __future__ import annotations

import time

import gradio as gr
import pandas as pd

from ..runtime import Runtime
from ..status_monitor import COLUMNS, Snapshot, format_duration


def status_frame(snapshot: Snapshot, stats: dict[str, tuple[str, str]] | None = None) -> pd.DataFrame:
    """One row per container of the project plus one `missing` row per absent service."""
    now = time.time()
    stats = stats or {}
    rows = []
    for c in snapshot.containers:
        cpu, mem = stats.get(c.id, ("", ""))
        rows.append([
            c.service, c.name, c.state, c.health,
            format_duration(now - c.started_at) if c.started_at else "",
            c.restarts, c.image, c.ports, cpu, mem,
        ])
    for service in snapshot.missing():
        rows.append([service, "", "missing", "", "", "", "", "", "", ""])
    return pd.DataFrame(rows, columns=COLUMNS)


def build(runtime: Runtime) -> dict:
    """Lay out the tab; returns the components the page-level timer updates."""
    with gr.Tab("Services", id="services", elem_id="tab-services"):
        summary = gr.Markdown("Connecting…", elem_id="status-summary")
        table = gr.Dataframe(
            value=pd.DataFrame(columns=COLUMNS), headers=COLUMNS, interactive=False,
            elem_id="status-table", wrap=True,
        )
    return {"summary": summary, "table": table}
