"""bench/load: 20 concurrent clients polling the status and following logs for 60 s while
exports run back to back. Reports errors, status latency p50/p95/p99 (target p95 < 150 ms), app RSS
and its Docker/unix connections (bounded). Run: python bench/load.py [CLIENTS] [SECONDS]

Each client follows a service's logs through gradio_client (/logs) and polls the status every
0.5 s over plain HTTP (`GET /_tunedeck/status`, from a separate process). One gradio_client also
polls `/status` through Gradio's API: its figures (`api_*`) are mostly that client's own work, as
it polls for its result in 50 ms steps, and are reported beside the server's.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import threading
from pathlib import Path

import psutil
from _common import new_stack, report

from gradio_client import Client
from tests.harness.appserver import app_process, settings_for
from tests.harness.load import quantile, run_load
from tests.harness.toolbox import start_llamacpp, start_llamafactory, start_ollama, tiny_run

CLIENTS = int(sys.argv[1]) if len(sys.argv) > 1 else 20
SECONDS = float(sys.argv[2]) if len(sys.argv) > 2 else 60


def main() -> None:
    stack = new_stack()
    data = Path(tempfile.mkdtemp(prefix="td-bench-load-")) / "data"
    data.mkdir()
    try:
        run = tiny_run(data, data.parent)
        start_llamafactory(stack, data), start_llamacpp(stack, data)
        ollama = start_ollama(stack)
        stack.run("tensorboard", ["sh", "-c", 'i=0; while true; do i=$((i+1)); echo "tick $i"; sleep 0.05; done'])
        settings = settings_for(tunedeck_project=stack.project, tunedeck_data_dir=str(data),
                                tunedeck_ollama_url=ollama.url)
        with app_process(settings) as (app_proc, url):
            proc = psutil.Process(app_proc.pid)
            samples = {"rss": [], "unix": [], "threads": []}
            exports = {"done": 0, "failed": 0}
            stop = threading.Event()

            def exporter():
                client = Client(url, verbose=False)
                i = 0
                while not stop.is_set():
                    shutil.rmtree(data / "exports", ignore_errors=True)
                    i += 1
                    status = None
                    for _log, status in client.submit(run, "", "", "f16", ["Q4_K_M"], f"load-{i}", "", False,
                                                      api_name="/export"):
                        pass
                    exports["done" if status and status["status"] == "succeeded" else "failed"] += 1
                client.close()

            def tick():
                samples["rss"].append(proc.memory_info().rss / 2**20)
                samples["unix"].append(len(proc.net_connections(kind="unix")))
                samples["threads"].append(proc.num_threads())

            t = threading.Thread(target=exporter, daemon=True)
            t.start()
            result = run_load(url, CLIENTS, SECONDS, "tensorboard", on_tick=tick, status_over_http=True)
            stop.set()
            t.join(120)
        report("load", clients=CLIENTS, seconds=SECONDS, status_calls=result.status_calls,
               errors=len(result.errors), p50_ms=round(result.p50 * 1000), p95_ms=round(result.p95 * 1000),
               p99_ms=round(result.p99 * 1000), api_p50_ms=round(statistics.median(result.api_latencies) * 1000),
               api_p95_ms=round(quantile(result.api_latencies, 95) * 1000),
               log_updates=result.log_updates, exports_ok=exports["done"], exports_failed=exports["failed"],
               rss_mib_start_max=f"{samples['rss'][0]:.0f}/{max(samples['rss']):.0f}",
               unix_sockets_max=max(samples["unix"]), threads_max=max(samples["threads"]))
        if result.errors:
            print("first errors:", result.errors[:3])
    finally:
        stack.cleanup()
        shutil.rmtree(data.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
