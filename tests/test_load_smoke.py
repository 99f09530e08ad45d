"""A short load smoke (the full run is bench/load.py): concurrent clients poll /status and follow
logs; no errors, every client served, log streams shared (latency figures: bench/load.py)."""

from __future__ import annotations

from tests.harness.load import run_load


def test_concurrent_status_and_log_clients(app_server, stack):
    stack.run("ollama", ["sh", "-c", 'i=0; while true; do i=$((i+1)); echo "tick $i"; sleep 0.05; done'])
    streams = []
    result = run_load(app_server.url, clients=6, seconds=12, service="ollama",
                      on_tick=lambda: streams.append(app_server.runtime.logs.open_streams()))
    assert not result.errors, result.errors[:3]
    assert result.status_calls >= 6 * 10
    assert result.log_updates >= 6 * 5
    assert max(streams) == 1  # six followers, one Docker log stream
