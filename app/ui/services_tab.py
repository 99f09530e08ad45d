"""Services tab: live status of the stack, live searchable logs, start/stop/restart with confirmation."""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import AsyncIterator

import gradio as gr
import pandas as pd

from ..docker_gateway import ControlRefused, EngineUnavailable, NotInProject
from ..log_filter import BadFilter, SlowFilter, filter_lines, make_matcher, render_line, render_lines
from ..log_hub import Follower
from ..runtime import Runtime
from ..status_monitor import COLUMNS, Snapshot, format_duration

ALL = "all services"
TAIL_CHOICES = [50, 200, 500, 1000, 2000]
MAX_VISIBLE = 2000       # lines the browser holds
TRIM_SLACK = 500         # trim in batches so most updates are cheap appends
POLL_S = 0.1
ACTIONS = ("start", "stop", "restart")
DOWNLOADS_KEPT = 20      # log files kept for download; older ones are deleted
DOWNLOAD_DIR = Path(tempfile.gettempdir()) / "tunedeck-log-downloads"


def status_frame(snapshot: Snapshot) -> pd.DataFrame:
    """One row per container of the project plus one `missing` row per absent service."""
    now = time.time()
    rows = []
    for c in snapshot.containers:
        rows.append([
            c.service, c.name, c.state, c.health,
            format_duration(now - c.started_at) if c.started_at else "",
            c.restarts, c.image, c.ports,
        ])
    for service in snapshot.missing():
        rows.append([service, "", "missing", "", "", "", "", ""])
    return pd.DataFrame(rows, columns=COLUMNS)


def status_payload(snapshot: Snapshot) -> dict:
    """The stack's containers and the engine state, as the API and `/_tunedeck/status` return them."""
    return {"engine_ok": snapshot.engine_ok, "summary": snapshot.summary(), "missing": snapshot.missing(),
            "containers": status_frame(snapshot).to_dict(orient="records")}


def log_targets(snapshot: Snapshot, choice: str) -> list[tuple[str, str]]:
    """(container id, service) pairs to follow for a dropdown choice; refuses unknown names."""
    if not snapshot.engine_ok:
        raise gr.Error(f"{snapshot.message}.", print_exception=False)
    if choice == ALL:
        targets = [(c.id, c.service) for c in snapshot.containers]
        if not targets:
            raise gr.Error("The stack has no containers to follow.", print_exception=False)
        return targets
    for c in snapshot.containers:
        if choice in (c.service, c.name):
            info = snapshot.by_service(c.service) if choice == c.service else c
            return [(info.id, info.service)]
    raise gr.Error(f"{choice!r} is not a service or container of this stack.", print_exception=False)


def parse_tail(value) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise gr.Error(f"Tail must be a whole number of lines, not {value!r}.", print_exception=False) from None
    if not 1 <= n <= MAX_VISIBLE:
        raise gr.Error(f"Tail must be between 1 and {MAX_VISIBLE} lines.", print_exception=False)
    return n


class FollowTokens:
    """The newest follow per browser session: starting a new one ends the previous at once.
    A session's entry is dropped when its newest follow ends, so the map never outgrows the
    number of sessions following right now."""

    def __init__(self) -> None:
        self._tokens: dict[str, int] = {}
        self._lock = threading.Lock()

    def new(self, session: str) -> int:
        with self._lock:
            self._tokens[session] = self._tokens.get(session, 0) + 1
            return self._tokens[session]

    def current(self, session: str, token: int) -> bool:
        return self._tokens.get(session) == token

    def done(self, session: str, token: int) -> None:
        with self._lock:
            if self._tokens.get(session) == token:
                del self._tokens[session]

    def __len__(self) -> int:
        return len(self._tokens)


def save_download(text: str, directory: Path = DOWNLOAD_DIR, keep: int = DOWNLOADS_KEPT) -> Path:
    """Write a log for download into one folder, keeping only the newest `keep` files."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f"tunedeck-logs-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".log",
                                dir=directory)
    with open(fd, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    files = sorted(directory.glob("tunedeck-logs-*.log"), key=lambda p: p.stat().st_mtime)
    for old in files[:-keep]:
        old.unlink(missing_ok=True)
    return Path(name)


async def kept(lines: list, matcher) -> list:
    """The lines a filter keeps, computed off the event loop (a regular expression can be slow); a filter
    past its time budget ends the follow with one sentence."""
    if matcher is None or not lines:
        return lines
    try:
        return await asyncio.to_thread(filter_lines, lines, matcher)
    except SlowFilter as exc:
        raise gr.Error(str(exc), print_exception=False) from None


def build(runtime: Runtime) -> dict:
    tokens = FollowTokens()

    def prepare(choice: str, tail, pattern: str, regex: bool):
        snapshot = runtime.monitor.snapshot()
        targets = log_targets(snapshot, choice or ALL)
        n = parse_tail(tail)
        try:
            matcher = make_matcher(pattern or "", bool(regex))
        except BadFilter as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        return targets, n, matcher

    async def follow_ui(choice: str, tail, pattern: str, regex: bool, timestamps: bool, request: gr.Request):
        """Follow logs into the view: last N lines, then live; at most MAX_VISIBLE lines held."""
        targets, n, matcher = prepare(choice, tail, pattern, regex)
        session = request.session_hash if request else "api"
        token = tokens.new(session)
        with_service = len(targets) > 1
        # Yield before opening any Docker stream: a cancel that lands during a generator's first
        # step can miss it, and a follow of a silent container would then never end.
        yield gr.skip(), f"connecting to {choice}…"
        follower = Follower(runtime.logs, targets)
        visible: deque[str] = deque()
        try:
            first = await asyncio.to_thread(follower.initial, n)
            for line in await kept(first, matcher if pattern else None):
                visible.append(render_line(line, timestamps=timestamps, with_service=with_service))
            while len(visible) > n:
                visible.popleft()
            header = f"following {choice} · last {n} lines · {'regex' if regex else 'text'} filter {pattern!r}" \
                if pattern else f"following {choice} · last {n} lines"
            yield "\n".join(visible), header
            while tokens.current(session, token):
                await asyncio.sleep(POLL_S)
                ended = follower.ended  # read before polling, so the last lines are never missed
                new = await kept(follower.poll(), matcher if pattern else None)
                rendered = [render_line(l, timestamps=timestamps, with_service=with_service) for l in new]
                if rendered:
                    visible.extend(rendered)
                    if len(visible) > MAX_VISIBLE + TRIM_SLACK:
                        for _ in range(len(visible) - MAX_VISIBLE):
                            visible.popleft()
                    yield "\n".join(visible), header
                if ended:
                    yield "\n".join(visible), f"{header} · stream ended"
                    return
        finally:
            follower.close()
            tokens.done(session, token)

    async def follow_api(choice: str, tail: float, pattern: str, regex: bool,
                         timestamps: bool) -> AsyncIterator[str]:
        """Follow logs for API clients: each streamed value is a batch of NEW lines, the first one
        empty (public: /logs)."""
        targets, n, matcher = prepare(choice, tail, pattern, regex)
        with_service = len(targets) > 1
        yield ""  # before any Docker stream opens: see follow_ui
        follower = Follower(runtime.logs, targets)
        try:
            first = await asyncio.to_thread(follower.initial, n)
            yield "\n".join(render_lines(await kept(first, matcher if pattern else None), timestamps=timestamps,
                                          with_service=with_service))
            while True:
                await asyncio.sleep(POLL_S)
                ended = follower.ended  # read before polling, so the last lines are never missed
                new = await kept(follower.poll(), matcher if pattern else None)
                if new:
                    yield "\n".join(render_lines(new, timestamps=timestamps, with_service=with_service))
                if ended:
                    return
        finally:
            follower.close()

    def status_api() -> dict:
        """The stack's containers and the engine state (public API: /status)."""
        return status_payload(runtime.monitor.snapshot())

    def stop_follow(request: gr.Request):
        session = request.session_hash if request else "api"
        tokens.done(session, tokens.new(session))
        return "stopped"

    def save_log(text: str):
        if not text:
            raise gr.Error("Nothing to download yet: follow a service first.", print_exception=False)
        return gr.update(value=str(save_download(text)), visible=True)

    def control(container: str, action: str, confirm: bool) -> str:
        """Start, stop or restart a container of this stack (public: /control; needs confirm=true)."""
        if action not in ACTIONS:
            raise gr.Error(f"Unknown action {action!r}; use start, stop or restart.", print_exception=False)
        if not confirm:
            raise gr.Error(f"Confirm to {action} {container!r}.", print_exception=False)
        snapshot = runtime.monitor.snapshot()
        match = next((c for c in snapshot.containers if container in (c.name, c.service)), None)
        target = match.name if match else (container or "")
        try:
            getattr(runtime.gateway, action)(target)
        except (NotInProject, ControlRefused) as exc:
            raise gr.Error(f"Refused: {exc}.", print_exception=False) from None
        except EngineUnavailable as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        except Exception as exc:  # noqa: BLE001 - Docker's own message is the clearest
            raise gr.Error(f"{action} {target} failed: {exc}", print_exception=False) from None
        return f"{action}: {target} done"

    def ask(container: str, action: str):
        if not container:
            raise gr.Error("Choose a container first.", print_exception=False)
        return (gr.update(value=f"**{action.capitalize()} {container}?**", visible=True),
                gr.update(visible=True), gr.update(visible=True), action)

    def confirmed(container: str, action: str):
        message = control(container, action, True)
        gr.Info(message)
        return gr.update(visible=False), gr.update(visible=False), gr.update(visible=False), message

    def dismiss():
        return gr.update(visible=False), gr.update(visible=False), gr.update(visible=False), "cancelled"

    with gr.Tab("Services", id="services", elem_id="tab-services"):
        summary = gr.Markdown("Connecting…", elem_id="status-summary")
        table = gr.Dataframe(
            value=pd.DataFrame(columns=COLUMNS), headers=COLUMNS, interactive=False,
            elem_id="status-table", wrap=True,
        )
        with gr.Row():
            target = gr.Dropdown([], label="Container", allow_custom_value=True, elem_id="control-target", scale=3)
            start_b = gr.Button("Start", elem_id="control-start", scale=1)
            stop_b = gr.Button("Stop", elem_id="control-stop", scale=1)
            restart_b = gr.Button("Restart", elem_id="control-restart", scale=1)
        with gr.Row():
            confirm_text = gr.Markdown(visible=False, elem_id="control-confirm-text")
            confirm_b = gr.Button("Yes, do it", variant="stop", visible=False, elem_id="control-confirm")
            cancel_b = gr.Button("No", visible=False, elem_id="control-dismiss")
        control_result = gr.Markdown("", elem_id="control-result")
        pending = gr.State("")

        gr.Markdown("### Logs")
        with gr.Row():
            service = gr.Dropdown([ALL], value=ALL, label="Service", allow_custom_value=True, elem_id="log-service")
            tail = gr.Dropdown(TAIL_CHOICES, value=200, label="Last lines", allow_custom_value=True, elem_id="log-tail")
            pattern = gr.Textbox(label="Filter (Enter to apply)", elem_id="log-filter")
            regex = gr.Checkbox(False, label="Regex", elem_id="log-regex")
            timestamps = gr.Checkbox(True, label="Timestamps", elem_id="log-timestamps")
        with gr.Row():
            follow_b = gr.Button("Follow", variant="primary", elem_id="log-follow")
            stop_follow_b = gr.Button("Stop", elem_id="log-stop")
            download_b = gr.Button("Download visible log", elem_id="log-download")
        log_state = gr.Markdown("", elem_id="log-state")
        log_view = gr.Textbox(label="Log", lines=24, max_lines=24, autoscroll=True, elem_id="log-view",
                              buttons=["copy"])
        log_file = gr.File(visible=False, label="Log file", elem_id="log-file")

        private = {"api_visibility": "private"}
        inputs = [service, tail, pattern, regex, timestamps]
        gr.on([follow_b.click, service.change, tail.change, pattern.submit, regex.change, timestamps.change],
              follow_ui, inputs, [log_view, log_state], concurrency_limit=None, show_progress="hidden", **private)
        stop_follow_b.click(stop_follow, None, [log_state], **private)
        download_b.click(save_log, [log_view], [log_file], **private)
        gr.api(follow_api, api_name="logs", concurrency_limit=None)
        gr.api(status_api, api_name="status", concurrency_limit=None, queue=False)
        gr.api(control, api_name="control", concurrency_limit=None)
        for button, action in ((start_b, "start"), (stop_b, "stop"), (restart_b, "restart")):
            button.click(lambda c, a=action: ask(c, a), [target], [confirm_text, confirm_b, cancel_b, pending],
                         **private)
        confirm_b.click(confirmed, [target, pending], [confirm_text, confirm_b, cancel_b, control_result], **private)
        cancel_b.click(dismiss, None, [confirm_text, confirm_b, cancel_b, control_result], **private)
    return {"summary": summary, "table": table, "service": service, "target": target, "tokens": tokens}
