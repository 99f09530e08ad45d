"""Dataset, Training and TensorBoard tabs: the tool in an iframe, or why it is not there."""

from __future__ import annotations

import html
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import gradio as gr

from ..status_monitor import Snapshot


@dataclass(frozen=True)
class ToolTab:
    key: str
    title: str
    service: str
    url_template: str


def request_origin(headers: Mapping[str, str]) -> dict[str, str]:
    """Scheme and host the browser used, honouring a proxy's X-Forwarded-* headers."""
    lower = {k.lower(): v for k, v in headers.items()}
    host = (lower.get("x-forwarded-host") or lower.get("host") or "localhost").split(",")[0].strip()
    scheme = (lower.get("x-forwarded-proto") or "http").split(",")[0].strip()
    if host.startswith("["):
        hostname = host[: host.index("]") + 1]
    else:
        hostname = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return {"scheme": scheme, "host": host, "hostname": hostname}


def resolve_url(template: str, origin: Mapping[str, str]) -> str:
    """Fill `{scheme}`, `{host}`, `{hostname}` in a configured tool URL."""
    url = template
    for key in ("scheme", "host", "hostname"):
        url = url.replace("{" + key + "}", origin.get(key, ""))
    return url


TB_HINT = ("No TensorBoard event files under {saves} yet, so the board is empty. Training curves appear once a "
           "run logs to TensorBoard: in LLaMA Board set <b>Report to</b> (Other config) to <code>tensorboard</code>, "
           "or add <code>report_to: tensorboard</code> to a <code>llamafactory-cli train</code> config. The "
           "<b>Runs</b> tab shows loss curves of every run either way.")
_EVENTS_CACHE: dict[str, tuple[float, bool]] = {}


def has_event_files(saves: Path, max_age: float = 10.0, limit: int = 20000) -> bool:
    """Whether any TensorBoard event file exists under saves/ (cached for `max_age` seconds)."""
    key = str(saves)
    hit = _EVENTS_CACHE.get(key)
    if hit and time.monotonic() - hit[0] < max_age:
        return hit[1]
    found, seen = False, 0
    for _dirpath, dirnames, filenames in os.walk(saves):
        seen += len(filenames)
        if any(f.startswith("events.out.tfevents") for f in filenames) or seen > limit:
            found = True
            break
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    _EVENTS_CACHE[key] = (time.monotonic(), found)
    return found


def frame_html(tool: ToolTab, url: str, snapshot: Snapshot, note: str = "") -> str:
    """The tab body: an iframe when the service runs, else one clear sentence; `note` (HTML) goes above."""
    safe_url = html.escape(url, quote=True)
    link = f'<a href="{safe_url}" target="_blank" rel="noopener" class="td-open-link">Open {html.escape(tool.title)} in a new tab ↗</a>'
    if not tool.service:  # a tool outside the stack (an existing Ray cluster): nothing to check here
        reason = ""
    elif not snapshot.engine_ok:
        reason = f"{snapshot.message}, so the state of {tool.service} is unknown."
    else:
        info = snapshot.by_service(tool.service)
        if info is None:
            reason = f"The {tool.service} service has no container (missing). Start the stack with docker compose."
        elif info.state != "running":
            reason = f"The {tool.service} service is {info.state}. Start it from the Services tab."
        elif info.health == "unhealthy":
            reason = f"The {tool.service} service is running but unhealthy; see its logs in the Services tab."
        else:
            reason = ""
    if reason:
        return (
            f'<div class="td-tool-down" data-tool="{tool.key}"><p>⚠️ {html.escape(reason)}</p>'
            f"<p>{link}</p></div>"
        )
    note_html = f'<div class="td-tool-note" data-tool="{tool.key}">ℹ️ {note}</div>' if note else ""
    return (
        f'<div class="td-tool" data-tool="{tool.key}">{note_html}<div class="td-tool-bar">{link}</div>'
        f'<iframe src="{safe_url}" title="{html.escape(tool.title)}" class="td-frame" '
        f'allow="clipboard-read; clipboard-write"></iframe></div>'
    )


def build_tool_tab(tool: ToolTab) -> gr.HTML:
    with gr.Tab(tool.title, id=tool.key, elem_id=f"tab-{tool.key}"):
        return gr.HTML(f"<p>Loading {html.escape(tool.title)}…</p>", elem_id=f"frame-{tool.key}")
