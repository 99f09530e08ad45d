"""The tool upstreams Caddy fronts, as labelled containers on the host network: real TensorBoard
(on a sample event file), a real Gradio app under /llamafactory, and a static easy-dataset site."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .images import host_mounts
from .parts import free_port, wait_for_port
from .toolbox import run_tools_script, tool_env

ROOT = Path(__file__).resolve().parents[2]
APP_PY = str(Path(sys.executable))


def start_tool_upstreams(stack, tmp_path: Path) -> dict:
    ports = {k: free_port() for k in ("tensorboard", "llamafactory", "dataset")}
    logdir = tmp_path / "tb"
    run_tools_script("make_tb_events.py", str(logdir))
    site = tmp_path / "site"
    (site / "_next" / "static").mkdir(parents=True)
    (site / "api").mkdir()
    (site / "index.html").write_text("<html><title>easy-dataset stand-in</title><body><h1>easy-dataset stand-in"
                                     "</h1></body></html>")
    (site / "_next" / "static" / "app.js").write_text("console.log('easy-dataset');")
    (site / "api" / "projects").write_text(json.dumps([{"id": "p1", "name": "demo"}]))
    mounts = host_mounts(ROOT / "tests", tmp_path)
    stack.run("tensorboard", ["tensorboard", "--logdir", str(logdir), "--host", "127.0.0.1", "--port",
                              str(ports["tensorboard"]), "--path_prefix", "/tensorboard"],
              environment=tool_env(), volumes=mounts, network_mode="host")
    stack.run("llamafactory", [APP_PY, str(ROOT / "tests" / "standins" / "gradio_rootpath.py")],
              environment={"GRADIO_SERVER_PORT": str(ports["llamafactory"]), "GRADIO_ROOT_PATH": "/llamafactory",
                           "HOME": "/tmp", "GRADIO_ANALYTICS_ENABLED": "False"},
              volumes=mounts, network_mode="host")
    dataset = stack.run("easy-dataset", [APP_PY, "-m", "http.server", str(ports["dataset"]), "--bind", "127.0.0.1",
                                         "--directory", str(site)], volumes=mounts, network_mode="host")
    for name, port in ports.items():
        assert wait_for_port(port, 60), f"{name} stand-in did not start"
    return {"ports": ports, "dataset": dataset}


def caddy_upstreams(app_port: int, ports: dict) -> dict[str, str]:
    return {"TUNEDECK_UPSTREAM": f"127.0.0.1:{app_port}", "TENSORBOARD_UPSTREAM": f"127.0.0.1:{ports['tensorboard']}",
            "LLAMAFACTORY_UPSTREAM": f"127.0.0.1:{ports['llamafactory']}",
            "EASYDATASET_UPSTREAM": f"127.0.0.1:{ports['dataset']}"}
