"""Storage tab: where the disk went (by kind, each item with its size), what is safe to delete and why,
and deleting it after a confirmation that names the bytes freed.

Only wiring: the scan, the rules and the deletion live in `app.storage`. Every scan and deletion runs in
a worker thread; the scan shows its progress and stops when the page goes away.
"""

from __future__ import annotations

import asyncio
import threading

import gradio as gr

from ..export.validation import InvalidInput
from ..runtime import DataDirUnavailable, Runtime
from ..storage.rules import format_bytes
from ..storage.scan import ScanCancelled
from .storage_views import (
    ITEM_COLUMNS,
    KIND_COLUMNS,
    deletable,
    items_frame,
    kinds_frame,
    progress_html,
    summary_markdown,
)

PRIVATE = {"api_visibility": "private"}
POLL_S = 0.2


def build(runtime: Runtime) -> dict:
    def storage() -> dict:
        """Sizes by kind, every item with what the rules say, free space (public API: /storage)."""
        try:
            return runtime.storage.report().as_dict()
        except DataDirUnavailable as exc:
            raise gr.Error(str(exc), print_exception=False) from None

    def storage_delete(items: list[str], confirm: bool) -> dict:
        """Delete items the Storage report lists as deletable (public API: /storage_delete). Without
        confirm=true nothing is deleted and the answer says what would be freed."""
        try:
            return runtime.storage.delete(items, confirm)
        except (InvalidInput, DataDirUnavailable) as exc:
            raise gr.Error(str(exc), print_exception=False) from None

    async def scan(safe_only: bool):
        """Scan with progress (stopped if the page goes away), then every view."""
        seen = {"bytes": 0}
        stop = threading.Event()

        def progress(_count: int, nbytes: int) -> None:
            seen["bytes"] = nbytes

        task = asyncio.ensure_future(asyncio.to_thread(runtime.storage.report, progress, True, stop.is_set))
        shown = None
        try:
            while not task.done():
                text = f"Scanning… {format_bytes(seen['bytes'])} counted so far."
                if text != shown:
                    shown = text
                    yield (progress_html(text), *[gr.skip()] * 6)
                await asyncio.sleep(POLL_S)
            try:
                report = task.result().as_dict()
            except (DataDirUnavailable, ScanCancelled) as exc:
                raise gr.Error(str(exc) or "The scan was stopped.", print_exception=False) from None
        finally:
            if not task.done():  # the page went away: stop the walk; its ScanCancelled is expected
                stop.set()
                task.add_done_callback(lambda t: t.cancelled() or t.exception())
        names, _safe = deletable(report)
        yield (progress_html(f"Scanned in {report['scan']['seconds']:.2f} s.", "done"), summary_markdown(report),
               kinds_frame(report), items_frame(report, safe_only), gr.update(choices=names, value=[]), report,
               gr.update(visible=False))

    def refilter(report: dict, safe_only: bool):
        return items_frame(report, safe_only)

    def select_safe(report: dict):
        _names, safe = deletable(report)
        if not safe:
            raise gr.Error("Nothing is safe to delete by TuneDeck's rules; scan again after exporting or training.",
                           print_exception=False)
        return gr.update(value=safe)

    async def ask(chosen: list[str]):
        if not chosen:
            raise gr.Error("Choose what to delete first.", print_exception=False)
        try:
            answer = await asyncio.to_thread(runtime.storage.delete, chosen, False)
        except (InvalidInput, DataDirUnavailable) as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        text = answer["message"].replace(" needs confirmation (confirm=true); nothing was deleted.", "?")
        return (gr.update(value=f"**Really delete: {text.removeprefix('Deleting ')}**\n\n"
                                + "\n".join(f"- `{i['name']}` ({format_bytes(i['bytes'])})" for i in answer["items"]),
                          visible=True), gr.update(visible=True), gr.update(visible=True), list(chosen))

    async def confirmed(pending: list[str]):
        try:
            answer = await asyncio.to_thread(runtime.storage.delete, pending, True)
        except (InvalidInput, DataDirUnavailable) as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        gr.Info(answer["message"])
        return gr.update(visible=False), gr.update(visible=False), gr.update(visible=False), answer["message"]

    def dismiss():
        return gr.update(visible=False), gr.update(visible=False), gr.update(visible=False), ""

    with gr.Tab("Storage", id="storage", elem_id="tab-storage") as tab:
        with gr.Row():
            scan_b = gr.Button("↻ Scan", elem_id="storage-scan", scale=1)
            progress_box = gr.HTML(progress_html("Not scanned yet.", "idle"), elem_id="storage-progress",
                                   scale=4)
        summary = gr.Markdown(summary_markdown(None), elem_id="storage-summary")
        kinds = gr.Dataframe(headers=KIND_COLUMNS, interactive=False, elem_id="storage-kinds")
        safe_only = gr.Checkbox(False, label="Only what is safe to delete", elem_id="storage-safe-only")
        items = gr.Dataframe(headers=ITEM_COLUMNS, interactive=False, elem_id="storage-items", max_height=420,
                             wrap=True, column_widths=["30%", "9%", "8%", "8%", "5%", "40%"])
        with gr.Row():
            chosen = gr.Dropdown([], multiselect=True, label="Items to delete", elem_id="storage-choose", scale=4)
            all_safe = gr.Button("Choose everything safe", elem_id="storage-choose-safe", scale=1)
            delete_b = gr.Button("Delete…", variant="stop", elem_id="storage-delete", scale=1)
        confirm_text = gr.Markdown(visible=False, elem_id="storage-confirm-text")
        with gr.Row():
            confirm_b = gr.Button("Yes, delete", variant="stop", visible=False, elem_id="storage-confirm")
            cancel_b = gr.Button("Cancel", visible=False, elem_id="storage-cancel")
        result = gr.Markdown("", elem_id="storage-result")
        report_state = gr.State({})
        pending = gr.State([])

        outputs = [progress_box, summary, kinds, items, chosen, report_state, confirm_text]
        scan_kw = {**PRIVATE, "concurrency_limit": None, "show_progress": "hidden"}
        scan_b.click(scan, [safe_only], outputs, **scan_kw)
        tab.select(scan, [safe_only], outputs, **scan_kw)
        safe_only.change(refilter, [report_state, safe_only], [items], **PRIVATE)
        all_safe.click(select_safe, [report_state], [chosen], **PRIVATE)
        delete_b.click(ask, [chosen], [confirm_text, confirm_b, cancel_b, pending], **PRIVATE)
        confirm_b.click(confirmed, [pending], [confirm_text, confirm_b, cancel_b, result], **PRIVATE).success(
            scan, [safe_only], outputs, **scan_kw)
        cancel_b.click(dismiss, None, [confirm_text, confirm_b, cancel_b, result], **PRIVATE)
        gr.api(storage, api_name="storage", concurrency_limit=None)
        gr.api(storage_delete, api_name="storage_delete", concurrency_limit=None)
    return {"storage": storage, "storage_delete": storage_delete}
