"""A real Caddy running the project's Caddyfile, upstreams pointed at local ports."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .parts import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]


def caddy_binary() -> str | None:
    candidate = Path(sys.executable).parent / "caddy"
    return str(candidate) if candidate.exists() else shutil.which("caddy")


@dataclass
class CaddyHandle:
    url: str
    port: int
    dataset_url: str
    process: subprocess.Popen


@contextmanager
def running_caddy(upstreams: dict[str, str], extra_env: dict[str, str] | None = None,
                  port: int | None = None, dataset_port: int | None = None) -> Iterator[CaddyHandle]:
    """`upstreams` maps the Caddyfile's *_UPSTREAM variables to host:port."""
    port, dataset_port = port or free_port(), dataset_port or free_port()
    env = {
        **os.environ,
        "TUNEDECK_HTTP_PORT": str(port),
        "TUNEDECK_DATASET_PORT": str(dataset_port),
        # one folder per test worker: `tests/run.sh` runs two at once
        "XDG_DATA_HOME": f"/tmp/tunedeck-caddy-data{os.environ.get('PYTEST_XDIST_WORKER', '')}",
        "XDG_CONFIG_HOME": f"/tmp/tunedeck-caddy-config{os.environ.get('PYTEST_XDIST_WORKER', '')}",
        **upstreams,
        **(extra_env or {}),
    }
    log = tempfile.NamedTemporaryFile("w+", prefix="caddy-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [caddy_binary(), "run", "--config", str(ROOT / "Caddyfile"), "--adapter", "caddyfile"],
        env=env, stdout=subprocess.DEVNULL, stderr=log,
    )
    try:
        if not wait_for_port(port, 15):
            proc.kill()
            raise RuntimeError("caddy did not start: " + Path(log.name).read_text()[-2000:])
        yield CaddyHandle(f"http://127.0.0.1:{port}", port, f"http://127.0.0.1:{dataset_port}", proc)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        os.unlink(log.name)
