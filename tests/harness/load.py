"""Concurrent API clients for load runs: status pollers and log followers, with latency stats."""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field

from gradio_client import Client


@dataclass
class LoadResult:
    status_calls: int = 0
    errors: list = field(default_factory=list)
    latencies: list = field(default_factory=list)
    log_updates: int = 0

    @property
    def p95(self) -> float:
        return statistics.quantiles(self.latencies, n=20)[18] if len(self.latencies) >= 20 else max(self.latencies)

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies)

    @property
    def p99(self) -> float:
        return statistics.quantiles(self.latencies, n=100)[98] if len(self.latencies) >= 100 else max(self.latencies)


def run_load(url: str, clients: int, seconds: float, service: str, poll_s: float = 0.5,
             on_tick=None) -> LoadResult:
    """`clients` threads each poll /status every `poll_s` and follow `service`'s logs for `seconds`."""
    result = LoadResult()
    lock = threading.Lock()
    stop = threading.Event()

    def worker(i: int) -> None:
        try:
            client = Client(url, verbose=False)
        except Exception as exc:  # noqa: BLE001
            with lock:
                result.errors.append(f"connect: {exc}")
            return
        job = client.submit(service, 50, "", False, True, api_name="/logs")
        try:
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    status = client.predict(api_name="/status")
                    assert status["engine_ok"], status
                    with lock:
                        result.latencies.append(time.monotonic() - t0)
                        result.status_calls += 1
                except Exception as exc:  # noqa: BLE001
                    with lock:
                        result.errors.append(f"status: {exc}")
                stop.wait(poll_s)
            if job.status().code.name == "FINISHED" and not job.status().success:
                with lock:
                    result.errors.append("log follow ended with an error")
            with lock:
                result.log_updates += len(job.outputs())
        finally:
            job.cancel()
            client.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if on_tick:
            on_tick()
        time.sleep(1)
    stop.set()
    for t in threads:
        t.join(30)
    return result
