"""Assemble the dashboard: a banner, the tabs in their fixed order, and one status timer."""

from __future__ import annotations

import html
import logging
import time

import gradio as gr
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..runtime import Runtime
from ..sessions import AUTH_PATH
from . import datasets_tab, export_tab, playground_tab, runs_tab, services_tab, storage_tab, train_tab
from .tool_tabs import TB_HINT, ToolTab, build_tool_tab, frame_html, has_event_files, request_origin, resolve_url

log = logging.getLogger(__name__)
STATUS_PATH = "/_tunedeck/status"
UPTIME_REFRESH_S = 10  # re-render an unchanged table now and then so uptimes move

CSS = """
.td-frame { width: 100%; height: calc(100vh - 230px); min-height: 480px; border: 0; }
.td-tool-bar { text-align: right; margin-bottom: 4px; }
.td-tool-down { padding: 2em; font-size: 1.1em; }
.td-tool-note { padding: 6px 10px; margin-bottom: 6px; border-radius: 6px; background: #fff7ed; }
#engine-banner:empty, #disk-banner:empty { display: none; }
"""


def tool_tabs(runtime: Runtime) -> list[ToolTab]:
    s = runtime.settings
    return [
        ToolTab("dataset", "Dataset prep", s.dataset_service, s.dataset_url),
        ToolTab("training", "Training", s.llamafactory_service, s.training_url),
        ToolTab("tensorboard", "TensorBoard", s.tensorboard_service, s.tensorboard_url),
        *([ToolTab("ray", "Ray", "", s.ray_url)] if s.ray_address else []),
    ]


def server_routes(runtime: Runtime) -> list[APIRoute]:
    """Plain HTTP routes beside Gradio's (not in its API): the session check Caddy asks, and the
    status as plain JSON for monitors and scripts (no Gradio session or queue per call)."""

    async def status(request: Request) -> Response:
        if not runtime.sessions.user_of(request):
            return JSONResponse({"detail": "Not authenticated"}, status_code=401)
        return JSONResponse(services_tab.status_payload(runtime.monitor.snapshot()),
                            headers={"Cache-Control": "no-store"})

    return [APIRoute(AUTH_PATH, runtime.sessions.endpoint, methods=["GET", "HEAD"], include_in_schema=False),
            APIRoute(STATUS_PATH, status, methods=["GET"], include_in_schema=False)]


def launch(demo: gr.Blocks, runtime: Runtime, **options) -> None:
    """`demo.launch` with TuneDeck's routes and CSS; follows the login sessions once serving."""
    demo.launch(app_kwargs={"routes": server_routes(runtime)}, css=CSS, prevent_thread_lock=True, **options)
    runtime.sessions.start(demo.app)


def build_app(runtime: Runtime, login: bool = False) -> gr.Blocks:
    tools = tool_tabs(runtime)
    with gr.Blocks(title="TuneDeck") as demo:
        with gr.Row():
            gr.Markdown("## TuneDeck — fine-tuning mission control")
            if login:  # the page is behind a login: offer to end the session (tools included)
                gr.HTML('<div style="text-align:right"><a href="logout" id="td-logout">Log out</a></div>',
                        elem_id="logout")
        banner = gr.Markdown("", elem_id="engine-banner")
        disk_banner = gr.Markdown("", elem_id="disk-banner")
        view = gr.State({})
        with gr.Tabs(elem_id="tabs") as tabs:
            services = services_tab.build(runtime)
            frames = [build_tool_tab(tools[0])]
            datasets = datasets_tab.build(runtime)
            frames += [build_tool_tab(tool) for tool in tools[1:]]
            train = train_tab.build(runtime)
            runs = runs_tab.build(runtime)
            export = export_tab.build(runtime)
            playground = playground_tab.build(runtime)
            storage_tab.build(runtime)
        outputs = [view, banner, disk_banner, services["summary"], services["table"], services["service"],
                   services["target"], *frames]

        def disk_banner_text() -> str:
            try:
                return runtime.storage.banner()
            except Exception:  # noqa: BLE001 - the page keeps rendering; the cause is logged
                log.exception("the low-disk banner failed")
                return ""

        def render(state: dict, request: gr.Request | None = None):
            state = dict(state or {})
            if request is not None and "origin" not in state:
                state["origin"] = request_origin(dict(request.headers))
            snapshot = runtime.monitor.snapshot()
            disk = disk_banner_text()
            fresh = time.monotonic() - state.get("at", 0) < UPTIME_REFRESH_S
            same = state.get("version") == snapshot.version and state.get("disk") == disk
            if same and "origin" in state and fresh:
                return [gr.skip()] * len(outputs)
            state["version"] = snapshot.version
            state["at"] = time.monotonic()
            state["disk"] = disk
            banner_text = f"### {snapshot.banner}" if snapshot.banner else ""
            names = sorted({c.service for c in snapshot.containers})
            updates = [state, banner_text, f"### {disk}" if disk else "", snapshot.summary(),
                       services_tab.status_frame(snapshot),
                       gr.update(choices=[services_tab.ALL, *names]),
                       gr.update(choices=[c.name for c in snapshot.containers])]
            saves = runtime.settings.data_dir / "saves"
            for tool in tools:
                note = TB_HINT.format(saves=html.escape(str(saves))) \
                    if tool.key == "tensorboard" and not has_event_files(saves) else ""
                body = frame_html(tool, resolve_url(tool.url_template, state.get("origin", {})), snapshot, note)
                key = "frame-" + tool.key
                updates.append(gr.skip() if state.get(key) == body else body)
                state[key] = body
            return updates

        demo.load(render, inputs=[view], outputs=outputs, api_visibility="private")
        demo.load(export["refresh"], [export["run"]], [export["run"], export["runs_table"], export["no_runs"]],
                  api_visibility="private")
        demo.load(export["history_table"], None, [export["history"]], api_visibility="private")
        demo.load(export["ollama_models"], None, export["model_outputs"], api_visibility="private")
        demo.load(datasets["load"], None, datasets["outputs"], api_visibility="private")
        demo.load(playground["model_names"], None, [playground["models"], playground["note"]],
                  api_visibility="private")
        demo.load(playground["runs_choices"], None, [playground["run"]], api_visibility="private")
        demo.load(runs["refresh"], [runs["select"], runs["state"]], runs["outputs"], api_visibility="private")
        runs["export_button"].click(runs["export_target"], [runs["select"]], [export["run"], tabs],
                                    api_visibility="private")
        runs["again_button"].click(runs["again_target"], [runs["select"]], [train["config"], tabs],
                                   api_visibility="private")
        demo.load(train["gpu_markdown"], None, [train["gpu_panel"]], api_visibility="private")
        demo.load(train["sources"], None, train["source_outputs"], api_visibility="private")
        compare_outputs = [playground["note"], playground["models"], tabs]

        async def compare_run(run: str):
            async for update in playground["compare"](export["compare_base"], "", run):
                yield update

        async def compare_job(job: str):
            async for update in playground["compare"](export["compare_base"], job, ""):
                yield update

        playground["compare_button"].click(compare_run, [playground["run"]], compare_outputs,
                                           api_visibility="private", concurrency_limit=None)
        export["compare_button"].click(compare_job, [export["selected"]], compare_outputs,
                                       api_visibility="private", concurrency_limit=None)
        gr.Timer(1.0).tick(
            render, inputs=[view], outputs=outputs, api_visibility="private",
            concurrency_limit=None, show_progress="hidden",
        )
    demo.queue(default_concurrency_limit=None)
    return demo
