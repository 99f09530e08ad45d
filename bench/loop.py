"""bench/loop: how long Gradio's event loop stalls while an export plans a 1 GiB base model.

A ticker on the app's own event loop sleeps 10 ms at a time and records the largest gap between
ticks while an export is started through the API; planning hashes the whole base (files under
64 MiB are hashed by content). Baseline in the same run: the same planning called on the event
loop itself (what the Export tab did before its work moved to threads).
Target: largest gap < 50 ms.   Run: python bench/loop.py [GiB]
"""

from __future__ import annotations

import asyncio
import json
import shutil
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import report

from app.config import Settings
from app.export.plan import build_request, make_plan
from app.runtime import Runtime
from app.ui.layout import build_app, server_routes
from gradio_client import Client
from tests.harness.parts import free_port

GIB = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
SHARD = 60 << 20


def make_data(root: Path) -> None:
    base = root / "models" / "big"
    base.mkdir(parents=True)
    (base / "config.json").write_text(json.dumps({"hidden_size": 256, "vocab_size": 1000}))
    left, i = int(GIB * (1 << 30)), 0
    block = bytes(range(256)) * (1 << 12)
    while left > 0:
        size = min(SHARD, left)
        with open(base / f"model-{i:05d}.safetensors", "wb") as f:
            for _ in range(size // len(block)):
                f.write(block)
        left -= size
        i += 1
    run = root / "saves" / "big" / "lora" / "run"
    run.mkdir(parents=True)
    (run / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base), "peft_type": "LORA"}))
    header = json.dumps({"__metadata__": {}}).encode()
    (run / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    (run / "training_args.yaml").write_text(f"model_name_or_path: {base}\ntemplate: default\n")


class Ticker:
    def __init__(self) -> None:
        self.loop = None
        self.max_gap = 0.0
        self.running = False

    async def route(self, request):  # records the server's loop
        from starlette.responses import Response

        self.loop = asyncio.get_running_loop()
        return Response("ok")

    async def tick(self, seconds: float) -> float:
        self.max_gap, last = 0.0, time.monotonic()
        end = last + seconds
        while time.monotonic() < end:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            self.max_gap = max(self.max_gap, now - last - 0.01)
            last = now
        return self.max_gap


def measure(ticker: Ticker, action, seconds: float = 6.0) -> float:
    fut = asyncio.run_coroutine_threadsafe(ticker.tick(seconds), ticker.loop)
    time.sleep(0.3)
    action()
    return fut.result(seconds + 30)


def main() -> None:
    from fastapi.routing import APIRoute

    root = Path(tempfile.mkdtemp(prefix="td-bench-loop-"))
    try:
        make_data(root)
        settings = Settings.from_env({"TUNEDECK_DATA_DIR": str(root), "TUNEDECK_PROJECT": "tdbenchloop"})
        runtime = Runtime.create(settings).start()
        demo = build_app(runtime)
        ticker = Ticker()
        port = free_port()
        demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                    app_kwargs={"routes": [*server_routes(runtime), APIRoute("/_bench/loop", ticker.route)]})
        import httpx

        httpx.get(f"http://127.0.0.1:{port}/_bench/loop", timeout=10)
        url = f"http://127.0.0.1:{port}"
        request = build_request(root, run="big/lora/run", template="default", quant_types=[])

        def on_loop_planning():  # the baseline: planning run as a coroutine on the loop itself
            async def plan():
                make_plan(root, request)
            asyncio.run_coroutine_threadsafe(plan(), ticker.loop).result(120)

        def api_export():
            client = Client(url, verbose=False)
            done = threading.Event()

            def consume():
                for _ in client.submit("big/lora/run", "", "default", "f16", [], "big", "", True, False, False,
                                       api_name="/export"):
                    pass
                done.set()
            threading.Thread(target=consume, daemon=True).start()
            done.wait(120)
            client.close()

        baseline = measure(ticker, on_loop_planning)
        t0 = time.monotonic()
        ours = measure(ticker, api_export)
        plan_s = time.monotonic() - t0
        demo.close()
        runtime.close()
        report("loop", base_gib=GIB, max_gap_ms_on_loop_baseline=round(baseline * 1000),
               max_gap_ms_tunedeck=round(ours * 1000), export_call_s=round(plan_s, 1), target_ms=50)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
