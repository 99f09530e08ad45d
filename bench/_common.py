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
