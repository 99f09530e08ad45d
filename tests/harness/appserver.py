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


@contextmanager
def app_process(settings: Settings, **env: str) -> Iterator[tuple]:
    """`python -m app` in its own process on the settings' project, data dir and Ollama, as users run
    it (and as benchmarks need it: not sharing their GIL), with `env` on top: yields (process, url). Its output
    goes to the file TUNEDECK_TEST_APP_LOG names (default: nowhere). Stopped at the end
    with SIGTERM, then killed if it has not exited within 10 s."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from .parts import wait_for_port

    port = free_port()
    log = open(os.environ.get("TUNEDECK_TEST_APP_LOG", os.devnull), "a")
    proc = subprocess.Popen(
        [sys.executable, "-m", "app"], cwd=Path(__file__).resolve().parents[2], stdout=log, stderr=log,
        env={**os.environ, "TUNEDECK_PORT": str(port), "TUNEDECK_PROJECT": settings.project,
             "TUNEDECK_DATA_DIR": str(settings.data_dir), "TUNEDECK_OLLAMA_URL": settings.ollama_url,
             "TUNEDECK_RAY_ADDRESS": settings.ray_address, "GRADIO_ANALYTICS_ENABLED": "False", **env})
    try:
        assert wait_for_port(port, 60), "the app did not start"
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


def run_readme_example(marker: str, tmp_path, **env: str):
    """Run the README's Python example that follows `<!-- marker -->`; returns the CompletedProcess."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    script = readme.split(f"<!-- {marker} -->", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    path = tmp_path / f"{marker}.py"
    path.write_text(script)
    return subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env})


def wait_job_finished(manager, timeout: float = 20):
    """The manager's current job once it has finished (cleanup included)."""
    from .parts import wait_for

    wait_for(lambda: manager.current is not None and manager.current.finished, timeout, 0.1, "the job finished")
    return manager.current
