"""Assemble the dashboard: a banner, the tabs in their fixed order, and one status timer."""

from __future__ import annotations

import time

import gradio as gr

from ..runtime import Runtime
from . import export_tab, runs_tab, services_tab
from .tool_tabs import ToolTab, build_tool_tab, frame_html, request_origin, resolve_url

UPTIME_REFRESH_S = 10  # re-render an unchanged table now and then so uptimes move

CSS = """
.td-frame { width: 100%; height: calc(100vh - 230px); min-height: 480px; border: 0; }
.td-tool-bar { text-align: right; margin-bottom: 4px; }
.td-tool-down { padding: 2em; font-size: 1.1em; }
#engine-banner:empty { display: none; }
"""


def tool_tabs(runtime: Runtime) -> list[ToolTab]:
    s = runtime.settings
    return [
        ToolTab("dataset", "Dataset", s.dataset_service, s.dataset_url),
        ToolTab("training", "Training", s.llamafactory_service, s.training_url),
        ToolTab("tensorboard", "TensorBoard", s.tensorboard_service, s.tensorboard_url),
    ]


def build_app(runtime: Runtime, creds: dict[str, str] | None = None) -> gr.Blocks:
    tools = tool_tabs(runtime)
    with gr.Blocks(title="TuneDeck") as demo:
        gr.Markdown("## TuneDeck — fine-tuning mission control")
        banner = gr.Markdown("", elem_id="engine-banner")
        view = gr.State({})
        with gr.Tabs(elem_id="tabs") as tabs:
            services = services_tab.build(runtime)
            frames = [build_tool_tab(tool) for tool in tools]
            runs = runs_tab.build(runtime)
            export = export_tab.build(runtime)
        outputs = [view, banner, services["summary"], services["table"], services["service"], services["target"],
                   *frames]

        def render(state: dict, request: gr.Request | None = None):
            state = dict(state or {})
            if request is not None and "origin" not in state:
                state["origin"] = request_origin(dict(request.headers))
            snapshot = runtime.monitor.snapshot()
            fresh = time.monotonic() - state.get("at", 0) < UPTIME_REFRESH_S
            if state.get("version") == snapshot.version and "origin" in state and fresh:
                return [gr.skip()] * len(outputs)
            state["version"] = snapshot.version
            state["at"] = time.monotonic()
            banner_text = f"### {snapshot.banner}" if snapshot.banner else ""
            names = sorted({c.service for c in snapshot.containers})
            updates = [state, banner_text, snapshot.summary(), services_tab.status_frame(snapshot),
                       gr.update(choices=[services_tab.ALL, *names]),
                       gr.update(choices=[c.name for c in snapshot.containers])]
            for tool in tools:
                body = frame_html(tool, resolve_url(tool.url_template, state.get("origin", {})), snapshot)
                key = "frame-" + tool.key
                updates.append(gr.skip() if state.get(key) == body else body)
                state[key] = body
            return updates

        demo.load(render, inputs=[view], outputs=outputs, api_visibility="private")
        demo.load(export["refresh"], [export["run"]], [export["run"], export["runs_table"], export["no_runs"]],
                  api_visibility="private")
        demo.load(export["history_table"], None, [export["history"]], api_visibility="private")
        demo.load(export["ollama_models"], None, export["model_outputs"], api_visibility="private")
        demo.load(runs["refresh"], [runs["select"], runs["state"]], runs["outputs"], api_visibility="private")
        runs["export_button"].click(runs["export_target"], [runs["select"]], [export["run"], tabs],
                                    api_visibility="private")
        gr.Timer(1.0).tick(
            render, inputs=[view], outputs=outputs, api_visibility="private",
            concurrency_limit=None, show_progress="hidden",
        )
    demo.queue(default_concurrency_limit=None)
    return demo
