"""The TuneDeck app launched in-process on a free port."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import httpx

from app.config import Settings
from app.runtime import Runtime
from app.ui.layout import build_app, launch

from .parts import free_port


@dataclass
class AppHandle:
    url: str
    port: int
    runtime: Runtime
    demo: object


def settings_for(**overrides: str) -> Settings:
    env = {k.upper(): str(v) for k, v in overrides.items()}
    return Settings.from_env(env)


@contextmanager
def running_app(settings: Settings, *, root_path: str | None = None, auth=None) -> Iterator[AppHandle]:
    runtime = Runtime.create(settings).start()
    demo = build_app(runtime, login=auth is not None)
    port = free_port()
    launch(demo, runtime, server_name="127.0.0.1", server_port=port, quiet=True, root_path=root_path, auth=auth)
    url = f"http://127.0.0.1:{port}"
    httpx.get(url + "/", timeout=10)
    try:
        yield AppHandle(url, port, runtime, demo)
    finally:
        demo.close()
        runtime.close()
