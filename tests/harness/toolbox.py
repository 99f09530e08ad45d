"""The real export toolchain in containers: LLaMA-Factory, llama.cpp and the Ollama stand-in.

Each runs from the host-tools image with the tools venv mounted read-only, the data dir
mounted at the same path (as in the compose stack), and the compose labels of its service,
so the pipeline's `docker exec` path is the one exercised.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from .images import host_mounts
from .parts import free_port, require

TESTS = Path(__file__).resolve().parents[1]
SHIMS = TESTS / "tools" / "shims"


def tools_venv() -> Path:
    venv = os.environ.get("TUNEDECK_TOOLS_VENV", "")
    require("tools venv (llamafactory, llama-cpp-python)", bool(venv) and Path(venv, ".done").exists(),
            "run `bash tests/run.sh`, which builds it under $TUNEDECK_CACHE")
    return Path(venv)


def llamacpp_app() -> Path:
    app = os.environ.get("TUNEDECK_LLAMACPP_APP", "")
    require("llama.cpp build (converter + llama-quantize)", bool(app) and Path(app, "llama-quantize").exists(),
            "run `bash tests/run.sh`")
    return Path(app)


def tools_python() -> str:
    return str(tools_venv() / "bin" / "python")


def run_tools_script(script: str, *args: str, timeout: int = 300) -> dict:
    """Run one of tests/tools/*.py with the tools venv; its last stdout line is JSON."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(SHIMS)}
    out = subprocess.run([tools_python(), str(TESTS / "tools" / script), *args], capture_output=True, text=True,
                         timeout=timeout, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{script} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def tool_env(extra: dict | None = None) -> dict:
    venv = tools_venv()
    return {
        "PATH": f"{venv}/bin:/usr/local/bin:/usr/bin:/bin",
        "HOME": "/tmp",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONPATH": str(SHIMS),
        "PYTHONUNBUFFERED": "1",
        **(extra or {}),
    }


def _volumes(data_dir: Path, *extra: tuple[str, str, str]) -> dict:
    vols = host_mounts(TESTS)
    vols[str(data_dir)] = {"bind": str(data_dir), "mode": "rw"}
    for host, container, mode in extra:
        vols[host] = {"bind": container, "mode": mode}
    return vols


def start_llamafactory(stack, data_dir: Path):
    return stack.run("llamafactory", environment=tool_env(), volumes=_volumes(data_dir))


def start_llamacpp(stack, data_dir: Path):
    return stack.run("llamacpp", environment=tool_env(), working_dir="/app",
                     volumes=_volumes(data_dir, (str(llamacpp_app()), "/app", "ro")))


@dataclass
class OllamaStandin:
    url: str
    container: object

    def requests(self) -> list[dict]:
        return httpx.get(self.url + "/_standin/requests", timeout=10).json()

    def fail_next(self, **spec) -> None:
        httpx.post(self.url + "/_standin/fail", json=spec, timeout=10).raise_for_status()


def start_ollama(stack, data_dir: Path | None = None, threads: int = 2) -> OllamaStandin:
    """The Ollama stand-in; `threads` are llama.cpp's generation threads."""
    port = free_port()
    container = stack.run(
        "ollama",
        ["python", str(TESTS / "standins" / "ollama_server.py"), "--host", "127.0.0.1", "--port", str(port),
         "--root", "/tmp/ollama"],
        environment=tool_env({"STANDIN_THREADS": str(threads)}), volumes=host_mounts(TESTS, TESTS.parent / "app"),
        network_mode="host",
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/api/version", timeout=1).status_code == 200:
                return OllamaStandin(url, container)
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("Ollama stand-in did not start: " + container.logs().decode()[-2000:])


# -- tiny model -----------------------------------------------------------------------------
_TINY_CACHE: dict[str, Path] = {}


def tiny_run(data_dir: Path, session_dir: Path, run: str = "run1") -> str:
    """Copy the session's tiny model + LoRA run into `data_dir`; returns the run name."""
    if "base" not in _TINY_CACHE:
        src = session_dir / "tiny"
        src.mkdir(parents=True, exist_ok=True)
        run_tools_script("make_tiny_run.py", str(src))
        _TINY_CACHE["base"] = src
    src = _TINY_CACHE["base"]
    for part in ("models", "saves"):
        shutil.copytree(src / part, data_dir / part, dirs_exist_ok=True)
    run_dir = data_dir / "saves" / "tiny-llama" / "lora" / "run1"
    if run != "run1":
        shutil.copytree(run_dir, data_dir / "saves" / "tiny-llama" / "lora" / run)
        run_dir = data_dir / "saves" / "tiny-llama" / "lora" / run
    for path in run_dir.parent.glob("*/adapter_config.json"):
        path.write_text(path.read_text().replace(str(src), str(data_dir)))
    for path in run_dir.parent.glob("*/training_args.yaml"):
        path.write_text(path.read_text().replace(str(src), str(data_dir)))
    return f"tiny-llama/lora/{run}"


@dataclass
class ToolApp:
    """The app with the real tool containers and the Ollama stand-in of one compose project."""

    app: object
    ollama: OllamaStandin
    llamafactory: object
    llamacpp: object
    settings: object


def tool_app(stack, data_dir: Path):
    """Context manager: LLaMA-Factory and llama.cpp containers, the Ollama stand-in, and the app on them."""
    from contextlib import contextmanager

    from .appserver import running_app, settings_for

    @contextmanager
    def run():
        lf = start_llamafactory(stack, data_dir)
        cpp = start_llamacpp(stack, data_dir)
        ollama = start_ollama(stack)
        settings = settings_for(tunedeck_project=stack.project, tunedeck_data_dir=str(data_dir),
                                tunedeck_ollama_url=ollama.url)
        with running_app(settings) as app:
            yield ToolApp(app, ollama, lf, cpp, settings)

    return run()


def big_run(data_dir: Path, size: int) -> str:
    """A run on a base of `size` bytes: the tiny model's config and tokenizer (`tiny_run` first) and
    unloadable 60 MiB shards, hashed by content when an export plans; its merge then fails."""
    base = data_dir / "models" / "big"
    base.mkdir(parents=True)
    for f in (data_dir / "models" / "tiny-llama").iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, base / f.name)
    block, shard = bytes(range(256)) * 4096, 60 << 20
    left, i = size, 0
    while left > 0:
        with open(base / f"shard-{i:05d}.safetensors", "wb") as out:
            for _ in range(min(shard, left) // len(block)):
                out.write(block)
        left, i = left - shard, i + 1
    run = data_dir / "saves" / "big" / "lora" / "run"
    run.mkdir(parents=True)
    (run / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base), "peft_type": "LORA"}))
    header = json.dumps({"__metadata__": {}}).encode()
    (run / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    (run / "training_args.yaml").write_text(f"model_name_or_path: {base}\ntemplate: default\n")
    return "big/lora/run"
