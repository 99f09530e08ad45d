"""Pure renderers for the Storage tab: the summary, the tables (no Gradio events here)."""

from __future__ import annotations

import html

import pandas as pd

from ..storage.kinds import KINDS
from ..storage.rules import format_bytes

KIND_COLUMNS = ["kind", "size", "items"]
ITEM_COLUMNS = ["item", "kind", "size", "frees", "safe", "why"]
_ORDER = {k: i for i, k in enumerate(KINDS)}


def summary_markdown(report: dict | None) -> str:
    if not report:
        return "Press **Scan** to see where the disk went."
    free = report.get("free") or {}
    scan = report["scan"]
    files = f"{scan['files']:,} files in " if scan.get("files") is not None else ""
    lines = [f"**{format_bytes(report['total_bytes'])}** in `{report['data_dir']}` "
             f"({files}{scan['folders']:,} folders, scanned in {scan['seconds']:.2f} s)."]
    for key, label in (("data_dir", "Data directory's filesystem"), ("ollama", "Ollama's volume")):
        space = free.get(key)
        if space:
            text = f"{format_bytes(space['free_bytes'])} free of {format_bytes(space['total_bytes'])}" \
                if space["free_bytes"] is not None else f"unknown ({space['note']})"
            lines.append(f"**{label}:** {text}")
    safe = report.get("safe") or {}
    lines.append(f"**Safe to delete:** {safe.get('summary') or 'nothing'}")
    if report["scan"]["links_not_followed"]:
        lines.append(f"{report['scan']['links_not_followed']} link(s) were not followed (neither counted beyond "
                     "themselves nor deleted through).")
    if report.get("running", {}).get("export") or report.get("running", {}).get("trainings"):
        busy = []
        if report["running"]["export"]:
            busy.append(f"export job {report['running']['export']}")
        busy += [f"training {t.removeprefix('saves/')}" for t in report["running"]["trainings"]]
        lines.append(f"**Running now:** {', '.join(busy)}: what they use cannot be deleted.")
    if report.get("ollama"):
        lines.append(f"⚠️ {report['ollama']}")
    if report["scan"]["errors"]:
        lines.append(f"⚠️ Not readable: {'; '.join(report['scan']['errors'][:3])}")
    return "\n\n".join(lines)


def kinds_frame(report: dict | None) -> pd.DataFrame:
    kinds = (report or {}).get("kinds") or {}
    return pd.DataFrame([[v["label"], format_bytes(v["bytes"]), v["count"]] for v in kinds.values()],
                        columns=KIND_COLUMNS)


def items_frame(report: dict | None, safe_only: bool = False) -> pd.DataFrame:
    items = [i for i in (report or {}).get("items") or [] if i["safe"] or not safe_only]
    items.sort(key=lambda i: (not i["safe"], _ORDER.get(i["kind"], 99), -i["bytes"]))
    return pd.DataFrame([[i["name"], i["kind"], format_bytes(i["bytes"]),
                          "" if i["frees"] is None else format_bytes(i["frees"]), "yes" if i["safe"] else "",
                          i["reason"]] for i in items], columns=ITEM_COLUMNS)


def deletable(report: dict | None) -> tuple[list[str], list[str]]:
    """(every deletable item name, the safe ones), biggest first."""
    items = sorted((i for i in (report or {}).get("items") or [] if i["deletable"]), key=lambda i: -i["bytes"])
    return [i["name"] for i in items], [i["name"] for i in items if i["safe"]]


def progress_html(text: str, state: str = "scanning") -> str:
    """The scan's state in words; `data-state` is idle, scanning or done."""
    return (f'<div id="storage-progress-state" data-state="{state}" style="font-size:13px;color:#555">'
            f"{html.escape(text)}</div>")
