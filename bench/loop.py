"""bench/loop: how long Gradio's event loop stalls while an export plans a 1 GiB base model.

A ticker on the app's own event loop sleeps 10 ms at a time and records the largest gap between
ticks for the whole of an export called through the API, with real tool containers and the Ollama
stand-in so that the checks pass and planning hashes the whole base (files under 64 MiB are hashed
by content); the shards cannot be loaded, so the export then ends in merge. The gap while a
client connects (Gradio's own work) is reported apart. Baseline in the same run: the same planning called on the event
loop itself (what the Export tab did before its work moved to threads).
Target: largest gap < 50 ms.   Run: python bench/loop.py [GiB]
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import new_stack, report

from app.config import Settings
from app.export.plan import build_request, make_plan
from app.runtime import Runtime
from app.ui.layout import build_app, server_routes
import httpx
from gradio_client import Client
from starlette.requests import Request
from starlette.responses import Response
from tests.harness.parts import free_port
from tests.harness.toolbox import big_run, start_llamacpp, start_llamafactory, start_ollama, tiny_run

GIB = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0


class Ticker:
    def __init__(self) -> None:
        self.loop = None

    async def route(self, request: Request) -> Response:  # records the server's loop
        self.loop = asyncio.get_running_loop()
        return Response("ok")

    async def tick(self, stop: threading.Event) -> float:
        max_gap, last = 0.0, time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            max_gap = max(max_gap, now - last - 0.01)
            last = now
        return max_gap


def measure(ticker: Ticker, action) -> float:
    """Largest gap between 10 ms ticks on the server's loop while `action` runs (ticks end with it)."""
    stop = threading.Event()
    fut = asyncio.run_coroutine_threadsafe(ticker.tick(stop), ticker.loop)
    time.sleep(0.3)
    try:
        action()
    finally:
        stop.set()
    return fut.result(30)


def main() -> None:
    from fastapi.routing import APIRoute

    root = Path(tempfile.mkdtemp(prefix="td-bench-loop-"))
    stack = new_stack()
    try:
        tiny_run(root, root / "tmp")
        big_run(root, int(GIB * (1 << 30)))
        start_llamafactory(stack, root), start_llamacpp(stack, root)  # the tool checks pass, so planning runs
        settings = Settings.from_env({"TUNEDECK_DATA_DIR": str(root), "TUNEDECK_PROJECT": stack.project,
                                      "TUNEDECK_OLLAMA_URL": start_ollama(stack).url})
        runtime = Runtime.create(settings).start()
        demo = build_app(runtime)
        ticker = Ticker()
        port = free_port()
        demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                    app_kwargs={"routes": [*server_routes(runtime), APIRoute("/_bench/loop", ticker.route)]})
        url = f"http://127.0.0.1:{port}"
        httpx.get(f"{url}/_bench/loop", timeout=10).raise_for_status()
        request = build_request(root, run="big/lora/run", template="default", quant_types=[])

        def on_loop_planning():  # the baseline: planning run as a coroutine on the loop itself
            async def plan():
                make_plan(root, request)
            asyncio.run_coroutine_threadsafe(plan(), ticker.loop).result(120)

        connect_gap = measure(ticker, lambda: Client(url, verbose=False).close())
        client = Client(url, verbose=False)
        final: dict = {}

        def api_export():
            for _log, status in client.submit("big/lora/run", "", "default", "f16", [], "big", "", True, False,
                                              False, api_name="/export"):
                final.update(status)

        baseline = measure(ticker, on_loop_planning)
        t0 = time.monotonic()
        ours = measure(ticker, api_export)
        export_s = time.monotonic() - t0
        client.close()
        demo.close()
        runtime.close()
        report("loop", base_gib=GIB, max_gap_ms_on_loop_baseline=round(baseline * 1000),
               max_gap_ms_tunedeck=round(ours * 1000), export_call_s=round(export_s, 1),
               planning_s=final['stage_seconds'].get('preflight'), ended_in=final['stage'],
               max_gap_ms_client_connect=round(connect_gap * 1000), target_ms=50)
    finally:
        stack.cleanup()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
