"""Concurrent API clients for load runs: status pollers and log followers, with latency stats."""

from __future__ import annotations

import asyncio
import multiprocessing
import statistics
import threading
import time
from dataclasses import dataclass, field

import httpx
from gradio_client import Client


def quantile(values: list[float], q: int) -> float:
    """The q-th percentile (exclusive method); the maximum when there are too few values."""
    return statistics.quantiles(values, n=100)[q - 1] if len(values) >= 100 else max(values)


@dataclass
class LoadResult:
    errors: list = field(default_factory=list)
    latencies: list = field(default_factory=list)
    api_latencies: list = field(default_factory=list)  # one gradio_client poller, when status goes over HTTP
    log_updates: int = 0

    @property
    def status_calls(self) -> int:
        return len(self.latencies)

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies)

    @property
    def p95(self) -> float:
        return quantile(self.latencies, 95)

    @property
    def p99(self) -> float:
        return quantile(self.latencies, 99)


def _poll_http(url: str, clients: int, seconds: float, poll_s: float, out) -> None:
    """`clients` asyncio pollers of GET /_tunedeck/status, in their own process so that the
    measuring side never waits on the log followers' threads (one GIL)."""
    async def poller(latencies: list, errors: list, end: float) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            while time.monotonic() < end:
                t0 = time.monotonic()
                try:
                    r = await c.get("/_tunedeck/status")
                    r.raise_for_status()
                    assert r.json()["engine_ok"], r.text[:200]
                    latencies.append(time.monotonic() - t0)
                except Exception as exc:  # noqa: BLE001 - counted as an error of the run
                    errors.append(f"status: {exc!r}")
                await asyncio.sleep(poll_s)

    async def main() -> tuple[list, list]:
        latencies: list = []
        errors: list = []
        end = time.monotonic() + seconds
        await asyncio.gather(*(poller(latencies, errors, end) for _ in range(clients)))
        return latencies, errors

    out.put(asyncio.run(main()))


def run_load(url: str, clients: int, seconds: float, service: str, poll_s: float = 0.5,
             on_tick=None, status_over_http: bool = False) -> LoadResult:
    """`clients` threads each follow `service`'s logs and poll /status every `poll_s` for `seconds`.

    With `status_over_http`, the pollers call the plain JSON route from a separate process, and
    one gradio_client poller records what an API script sees (`api_latencies`)."""
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
        polls = not status_over_http or i == 0
        into = result.api_latencies if status_over_http else result.latencies
        try:
            while not stop.is_set():
                if polls:
                    t0 = time.monotonic()
                    try:
                        status = client.predict(api_name="/status")
                        assert status["engine_ok"], status
                        with lock:
                            into.append(time.monotonic() - t0)
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

    pollers = None
    if status_over_http:
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        pollers = ctx.Process(target=_poll_http, args=(url, clients, seconds, poll_s, queue), daemon=True)
        pollers.start()
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
    if pollers is not None:
        latencies, errors = queue.get(timeout=60)
        pollers.join(30)
        result.latencies.extend(latencies)
        result.errors.extend(errors)
    return result
