"""Training-queue helpers: real LLaMA-Factory configs on the zoo's llama2 model, waiting on jobs through the
public API, and a real Ray cluster (a head and two worker nodes) on this machine."""

from __future__ import annotations

import json
import os
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import yaml

from .parts import free_port, require
from .toolbox import SHIMS, tools_venv


def train_yaml(data: Path, run: str, steps: int, save_steps: int | None = None, **extra) -> str:
    """A short LoRA training of the zoo's llama2 model on its stop_qa data (about 0.3 s a step on 2 cores)."""
    config = {
        "model_name_or_path": str(data / "models" / "llama2"), "trust_remote_code": True, "stage": "sft",
        "do_train": True, "finetuning_type": "lora", "lora_target": "all", "lora_rank": 8, "lora_alpha": 16,
        "dataset": "stop_qa", "template": "llama2", "cutoff_len": 64, "overwrite_cache": True,
        "preprocessing_num_workers": 1, "output_dir": f"saves/llama2/lora/{run}", "logging_steps": 5,
        "save_strategy": "steps", "save_steps": save_steps or steps, "per_device_train_batch_size": 2,
        "learning_rate": 3.0e-3, "max_steps": steps, "lr_scheduler_type": "constant", "bf16": False,
        "report_to": "none", "seed": 42, "dataloader_num_workers": 0, "plot_loss": False, **extra,
    }
    return yaml.safe_dump(config, sort_keys=False)


def jobs_by_id(client) -> dict[str, dict]:
    return {j["id"]: j for j in client.predict(api_name="/train_queue")}


def wait_jobs(client, predicate, timeout: float, what: str) -> dict[str, dict]:
    """Poll /train_queue until `predicate(jobs by id)` holds; fails naming the last states seen."""
    deadline = time.monotonic() + timeout
    jobs: dict = {}
    while time.monotonic() < deadline:
        jobs = jobs_by_id(client)
        if predicate(jobs):
            return jobs
        time.sleep(0.5)
    states = {k: (v["state"], v["error"][:200]) for k, v in jobs.items()}
    raise AssertionError(f"{what} not reached within {timeout:.0f} s; jobs: {states}")


def trainer_processes(container) -> list[str]:
    """Lines of `ps` in the LLaMA-Factory container that belong to a trainer."""
    out = container.exec_run(["ps", "-o", "pid,args"]).output.decode()
    return [line for line in out.splitlines() if "llamafactory-cli" in line or " train " in line]


def log_steps(run_dir: Path) -> list[int]:
    path = run_dir / "trainer_log.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["current_steps"] for line in path.read_text().splitlines() if line.strip()]


# -- Ray -------------------------------------------------------------------------------------------------
def ray_venv() -> Path:
    venv = os.environ.get("TUNEDECK_RAY_VENV", "")
    require("Ray venv (ray[default])", bool(venv) and Path(venv, ".done").exists(),
            "run `bash tests/run.sh`, which builds it under $TUNEDECK_CACHE")
    return Path(venv)


@dataclass
class RayCluster:
    address: str            # the dashboard / Jobs API, http://127.0.0.1:PORT
    gcs: str
    nodes: dict[str, str]   # custom resource name → node id

    def jobs(self) -> dict:
        return httpx.get(self.address + "/api/jobs/", timeout=10).json()


def _ray(*args: str, env: dict) -> subprocess.CompletedProcess:
    out = subprocess.run([str(ray_venv() / "bin" / "ray"), *args], env=env, capture_output=True, text=True,
                         timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"ray {' '.join(args[:2])} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return out


def ray_env() -> dict:
    """What every node (and the trainers it starts) runs with: the tools venv's llamafactory-cli on PATH,
    offline hub, no GPU."""
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0",
            "PATH": f"{tools_venv()}/bin:{ray_venv()}/bin:/usr/local/bin:/usr/bin:/bin",
            "PYTHONPATH": str(SHIMS), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false", "DISABLE_VERSION_CHECK": "1"}


@contextmanager
def ray_cluster(workers: tuple[str, ...] = ("nodeA", "nodeB"), cpus_per_worker: int = 1) -> Iterator[RayCluster]:
    """A real Ray cluster on this machine: a head with no CPUs (nothing runs there) and one worker node per
    name, each with `cpus_per_worker` CPUs and the name as a custom resource. Stopped with `ray stop`."""
    env = ray_env()
    gcs_port, dash_port = free_port(), free_port()
    common = ["--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    try:
        _ray("start", "--head", "--port", str(gcs_port), "--dashboard-host", "127.0.0.1", "--dashboard-port",
             str(dash_port), "--num-cpus", "0", "--num-gpus", "0", "--dashboard-agent-listen-port",
             str(free_port()), "--include-dashboard", "true", *common, env=env)
        gcs = f"127.0.0.1:{gcs_port}"
        for name in workers:
            _ray("start", "--address", gcs, "--num-cpus", str(cpus_per_worker), "--num-gpus", "0",
                 "--resources", json.dumps({name: 1}), "--dashboard-agent-listen-port", str(free_port()),
                 *common, env=env)
        address = f"http://127.0.0.1:{dash_port}"
        deadline = time.monotonic() + 60
        nodes: dict[str, str] = {}
        while time.monotonic() < deadline and len(nodes) < len(workers):
            try:
                listed = httpx.get(address + "/api/v0/nodes", params={"detail": "true"}, timeout=10).json()
                for node in (listed.get("data") or {}).get("result", {}).get("result", []):
                    for name in workers:
                        if node.get("state") == "ALIVE" and name in (node.get("resources_total") or {}):
                            nodes[name] = node["node_id"]
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.5)
        assert len(nodes) == len(workers), f"Ray worker nodes did not join: {nodes}"
        yield RayCluster(address, gcs, nodes)
    finally:
        subprocess.run([str(ray_venv() / "bin" / "ray"), "stop", "--force"], env=env, capture_output=True,
                       timeout=120)
