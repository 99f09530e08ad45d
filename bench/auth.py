"""bench/auth: latency of a TensorBoard data request through Caddy (the project's Caddyfile) with the
login check (forward_auth to the dashboard) divided by the same request with the check off, in one run.

Real TensorBoard on a sample event file, the dashboard with a login, two Caddys side by side
(TUNEDECK_TOOL_AUTH on and off); requests alternate between them. Reports p50/p95 of each.
Targets: p95 ratio <= 1.2 and < 5 ms added at p95.   Run: python bench/auth.py [REQUESTS]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _common import new_stack, report

from app.auth import make_checker
from tests.harness.appserver import running_app, settings_for
from tests.harness.caddy import running_caddy
from tests.harness.upstreams import caddy_upstreams, start_tool_upstreams

N = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
PATH = "/tensorboard/data/plugin/scalars/scalars?run=.&tag=train/loss"


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[18]


def main() -> None:
    stack = new_stack()
    tmp = Path(tempfile.mkdtemp(prefix="td-bench-auth-"))
    try:
        ports = start_tool_upstreams(stack, tmp)["ports"]
        settings = settings_for(tunedeck_project=stack.project, tunedeck_data_dir=str(tmp / "data"))
        with running_app(settings, auth=make_checker({"u": "pw"})) as app, \
                running_caddy(caddy_upstreams(app.port, ports)) as guarded, \
                running_caddy(caddy_upstreams(app.port, ports), {"TUNEDECK_TOOL_AUTH": "off"}) as open_:
            on, off = httpx.Client(base_url=guarded.url), httpx.Client(base_url=open_.url)
            on.post("/login", data={"username": "u", "password": "pw"}).raise_for_status()
            for c in (on, off):  # warm-up
                for _ in range(50):
                    assert c.get(PATH).status_code == 200
            with_auth, without = [], []
            for i in range(N):
                for client, sink in ((on, with_auth), (off, without)) if i % 2 else ((off, without), (on, with_auth)):
                    t0 = time.perf_counter()
                    resp = client.get(PATH)
                    sink.append(time.perf_counter() - t0)
                    assert resp.status_code == 200
            on.close()
            off.close()
        report("auth", requests=N, p50_ms_without=round(statistics.median(without) * 1000, 2),
               p50_ms_with=round(statistics.median(with_auth) * 1000, 2),
               p95_ms_without=round(p95(without) * 1000, 2), p95_ms_with=round(p95(with_auth) * 1000, 2),
               p95_ratio=round(p95(with_auth) / p95(without), 3),
               p95_added_ms=round((p95(with_auth) - p95(without)) * 1000, 2))
    finally:
        stack.cleanup()


if __name__ == "__main__":
    main()
