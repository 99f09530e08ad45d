"""bench/logs: log lines per second delivered to a gradio_client follower of /logs, divided by what
`docker logs -f` delivers from an identical container in the same run; plus first-line latency.

Single runs vary (0.84 to 1.26 on a 2-core machine), so the two sides alternate three times and
the medians are compared. Target: ratio >= 1.0, first-line latency < 0.5 s.
Run: python bench/logs.py [LINES]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time

from _common import new_stack, report

from gradio_client import Client
from tests.harness.appserver import app_process, settings_for

N = int(sys.argv[1]) if len(sys.argv) > 1 else 300_000
DELAY = 4.0
PRINTER = ["sh", "-c", f"sleep {DELAY}; seq 1 {N}; sleep 3600"]


def docker_logs_rate(stack) -> tuple[float, float]:
    c = stack.run("ollama", PRINTER)
    proc = subprocess.Popen(["docker", "logs", "-f", c.id], stdout=subprocess.PIPE, text=True, bufsize=1 << 20)
    first = last = None
    count = 0
    for line in proc.stdout:
        now = time.monotonic()
        first = first or now
        count += 1
        if line.strip() == str(N):
            last = now
            break
    proc.kill()
    c.remove(force=True)
    return count / (last - first), first


def gradio_rate(stack, url: str) -> tuple[float, float, float]:
    c = stack.run("tensorboard", PRINTER)
    started = time.monotonic()
    client = Client(url, verbose=False)
    job = client.submit("tensorboard", 1, "", False, False, api_name="/logs")
    first = last = None
    count = 0
    for batch in job:
        if not batch:
            continue
        now = time.monotonic()
        lines = batch.split("\n")
        first = first or now
        count += len(lines)
        if lines[-1].strip() == str(N):
            last = now
            break
    job.cancel()
    client.close()
    c.remove(force=True)
    return count / (last - first), first - started, count


def first_line_latency(stack, url: str) -> float:
    """Arrival at the gradio follower minus arrival at a concurrent `docker logs -f` of the same line."""
    c = stack.run("llamacpp", ["sh", "-c", "sleep 3; echo marker; sleep 3600"])
    client = Client(url, verbose=False)
    job = client.submit("llamacpp", 1, "", False, False, api_name="/logs")
    arrivals = {}

    def docker_side():
        proc = subprocess.Popen(["docker", "logs", "-f", c.id], stdout=subprocess.PIPE, text=True)
        for line in proc.stdout:
            if "marker" in line:
                arrivals["docker"] = time.monotonic()
                break
        proc.kill()

    t = threading.Thread(target=docker_side)
    t.start()
    for batch in job:
        if "marker" in (batch or ""):
            arrivals["gradio"] = time.monotonic()
            break
    t.join()
    job.cancel()
    client.close()
    c.remove(force=True)
    return arrivals["gradio"] - arrivals["docker"]


def main() -> None:
    stack = new_stack()
    try:
        settings = settings_for(tunedeck_project=stack.project, tunedeck_data_dir="/tmp/td-bench")
        with app_process(settings) as (_proc, url):
            time.sleep(1)
            bases, rates = [], []
            for _ in range(3):
                bases.append(docker_logs_rate(stack)[0])
                rate, _, delivered = gradio_rate(stack, url)
                rates.append(rate)
            latency = first_line_latency(stack, url)
        base_rate, rate = statistics.median(bases), statistics.median(rates)
        report("logs", lines=N, docker_logs_lines_per_s=round(base_rate), tunedeck_lines_per_s=round(rate),
               delivered=delivered, ratio=round(rate / base_rate, 3),
               single_ratios="/".join(f"{r / b:.2f}" for r, b in zip(rates, bases)),
               first_line_extra_latency_s=round(latency, 3))
    finally:
        stack.cleanup()


if __name__ == "__main__":
    main()
