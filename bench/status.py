"""bench/status: server-side time to build the Services status table with 50 containers,
divided by `docker ps -a` listing the same containers in the same run. Target <= 1.5.

The table is built the way the UI builds it on a change: re-list the project's containers
(one cheap API call), re-inspect the changed one, render the DataFrame.
Run: python bench/status.py [CONTAINERS]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

from _common import new_stack, report

from app.docker_gateway import DockerGateway
from app.status_monitor import StatusMonitor
from app.ui.services_tab import status_frame

N = int(sys.argv[1]) if len(sys.argv) > 1 else 50
REPEAT = 15


def timed(fn) -> float:
    samples = []
    for _ in range(REPEAT):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def main() -> None:
    stack = new_stack()
    try:
        services = ["caddy", "app", "easy-dataset", "llamafactory", "llamacpp", "ollama", "tensorboard"]
        for i in range(N):
            stack.run(services[i % len(services)], name=f"{stack.project}-{services[i % len(services)]}-{i}",
                      wait_running=False)
        time.sleep(2)
        gateway = DockerGateway(stack.project)
        monitor = StatusMonitor(gateway, tuple(services))
        monitor.refresh()  # the one-time full inspect at start-up
        changed = monitor.snapshot().containers[0].id

        def build_table():
            status_frame(monitor.refresh(changed_id=changed))

        def docker_ps():
            subprocess.run(["docker", "ps", "-a", "--filter", f"label=com.docker.compose.project={stack.project}"],
                           check=True, capture_output=True)

        ours, base = timed(build_table), timed(docker_ps)
        rows = len(status_frame(monitor.snapshot()))
        report("status", containers=N, table_rows=rows, tunedeck_ms=round(ours * 1000, 1),
               docker_ps_ms=round(base * 1000, 1), ratio=round(ours / base, 3))
    finally:
        stack.cleanup()


if __name__ == "__main__":
    main()
