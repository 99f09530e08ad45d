"""Shared set-up for the benchmarks: the real engine, the test images, an in-process app."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402

from tests.harness.images import ensure_hosttools_image  # noqa: E402
from tests.harness.stack import Stack, new_project_name, remove_leftovers  # noqa: E402


def new_stack() -> Stack:
    client = docker.from_env(timeout=120)
    remove_leftovers(client)
    return Stack(client, new_project_name(), ensure_hosttools_image(client))


def rss_mib(pid: int | None = None) -> float:
    with open(f"/proc/{pid or os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def report(name: str, **figures) -> None:
    print(f"[{name}] " + "  ".join(f"{k}={v}" for k, v in figures.items()), flush=True)


class AppProcess:
    """`python -m app` in its own process, as users run it (benchmarks must not share a GIL with it)."""

    def __init__(self, project: str, data_dir: str = "/tmp/td-bench", **env: str) -> None:
        import subprocess

        from tests.harness.parts import free_port, wait_for_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {**os.environ, "TUNEDECK_PROJECT": project, "TUNEDECK_DATA_DIR": data_dir,
                    "TUNEDECK_PORT": str(self.port), "GRADIO_ANALYTICS_ENABLED": "False", **env}
        self.proc = subprocess.Popen([sys.executable, "-m", "app"], cwd=ROOT, env=full_env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_for_port(self.port, 60):
            self.proc.kill()
            raise RuntimeError("the app did not start")

    def rss_mib(self) -> float:
        return rss_mib(self.proc.pid)

    def __enter__(self) -> "AppProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except Exception:
            self.proc.kill()
