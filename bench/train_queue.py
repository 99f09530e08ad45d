"""bench/train_queue: what TuneDeck's training queue adds to a training's start, in one run.

- overhead_s: two short real trainings (the zoo's llama2 model) queued back to back on this host; from the
  moment the first trainer process is gone (polled in the LLaMA-Factory container) to the second one's first
  logged step, minus the trainer's own start-up (`docker exec ... llamafactory-cli train` to its first
  logged step) measured by hand beside it. Goal <= 2 s. Medians of 3. The start-up varies by seconds from one
  run to the next, so `start_latency_s` also reports TuneDeck's own part alone: from the first trainer's end
  to the second trainer's process.
- ratio: a job sent to a real Ray cluster (a head and one worker node on this machine) through TuneDeck's
  /train, to its first logged step, divided by `ray job submit` by hand to its first logged step. Goal <= 1.1.
  Timed from the moment the job is queued, that is after TuneDeck's checks (TuneDeck's own and
  LLaMA-Factory's parser in its container, `checks_s`); `ratio_with_checks` includes them. Medians of 3.
Run: python bench/train_queue.py   (needs the test toolchain: bash tests/run.sh builds it)
"""

from __future__ import annotations

import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from _common import new_stack, report

from gradio_client import Client
from tests.harness import zoo
from tests.harness.appserver import running_app, settings_for
from tests.harness.toolbox import start_llamafactory
from tests.harness.training import ray_cluster, ray_env, ray_venv, train_yaml

STEPS = 5


def first_step_at(run_dir: Path, timeout: float = 300.0) -> float:
    """When the trainer's first log record appeared (polled every 20 ms)."""
    log = run_dir / "trainer_log.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if log.stat().st_size > 0:
                return time.monotonic()
        except FileNotFoundError:
            pass
        time.sleep(0.02)
    raise TimeoutError(f"no logged step in {run_dir}")


def gone_at(container, marker: str, timeout: float = 300.0) -> float:
    """When no process of the container mentions `marker` any more (polled with `docker top`)."""
    deadline = time.monotonic() + timeout
    seen = False
    while time.monotonic() < deadline:
        procs = container.top(ps_args="-eo pid,args").get("Processes") or []
        running = any(marker in " ".join(p) for p in procs)
        seen = seen or running
        if seen and not running:
            return time.monotonic()
        time.sleep(0.05)
    raise TimeoutError(f"{marker} did not end")


def appeared_at(container, marker: str, timeout: float = 300.0) -> float:
    """When a process of the container first mentions `marker` (polled with `docker top`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs = container.top(ps_args="-eo pid,args").get("Processes") or []
        if any(marker in " ".join(p) for p in procs):
            return time.monotonic()
        time.sleep(0.05)
    raise TimeoutError(f"{marker} did not start")


def config_file(data: Path, run: str, **extra) -> Path:
    path = data / "bench-configs" / f"{run}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = train_yaml(data, run, STEPS, logging_steps=1, **extra)
    path.write_text(text.replace("output_dir: saves/", f"output_dir: {data}/saves/")
                    .replace("dataset: stop_qa", f"dataset: stop_qa\ndataset_dir: {data}/data"))
    return path


def local_round(client, lf, data: Path, i: int) -> tuple[float, float, float]:
    """(start-up by hand, queue overhead, the next trainer's process start after the first one's end)."""
    cfg = config_file(data, f"hand{i}")
    t0 = time.monotonic()
    proc = subprocess.Popen(["docker", "exec", lf.id, "llamafactory-cli", "train", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    startup = first_step_at(data / "saves" / "llama2" / "lora" / f"hand{i}") - t0
    proc.wait(300)
    first = client.predict(train_yaml(data, f"qa{i}", STEPS, logging_steps=1), "all", "local", 0, None, None,
                           api_name="/train")
    second = client.predict(train_yaml(data, f"qb{i}", STEPS, logging_steps=1), "all", "local", 0, None, None,
                            api_name="/train")
    ended = gone_at(lf, f"training/{first['id']}/")
    started = appeared_at(lf, f"training/{second['id']}/")
    next_step = first_step_at(data / "saves" / "llama2" / "lora" / f"qb{i}")
    return startup, next_step - ended - startup, started - ended


def ray_round(client, cluster, data: Path, i: int) -> tuple[float, float, float]:
    """(by hand, through TuneDeck from queued, TuneDeck's checks) to the first logged step."""
    cfg = config_file(data, f"rayhand{i}")
    t0 = time.monotonic()
    subprocess.run([str(ray_venv() / "bin" / "ray"), "job", "submit", "--address", cluster.address, "--no-wait",
                    "--entrypoint-num-cpus", "1", "--", "llamafactory-cli", "train", str(cfg)], env=ray_env(),
                   check=True, capture_output=True)
    by_hand = first_step_at(data / "saves" / "llama2" / "lora" / f"rayhand{i}") - t0
    wait_ray_idle(cluster)
    t0 = time.monotonic()
    client.predict(train_yaml(data, f"ray{i}", STEPS, logging_steps=1), "0", "ray", 0, 1, None, api_name="/train")
    queued = time.monotonic()
    through = first_step_at(data / "saves" / "llama2" / "lora" / f"ray{i}") - queued
    wait_ray_idle(cluster)
    return by_hand, through, queued - t0


def wait_ray_idle(cluster, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(j["status"] in ("SUCCEEDED", "FAILED", "STOPPED") for j in cluster.jobs()):
            return
        time.sleep(0.2)
    raise TimeoutError("Ray jobs did not finish")


def main() -> None:
    stack = new_stack()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "data"
            zoo.install(data, ("llama2",))
            lf = start_llamafactory(stack, data)
            settings = settings_for(tunedeck_project=stack.project, tunedeck_data_dir=str(data))
            with running_app(settings) as app:
                client = Client(app.url, verbose=False)
                local = [local_round(client, lf, data, i) for i in range(3)]
                client.close()
            startup = statistics.median(r[0] for r in local)
            overhead = statistics.median(r[1] for r in local)
            latency = statistics.median(r[2] for r in local)
            with ray_cluster(("nodeA",), cpus_per_worker=1) as cluster:
                settings = settings_for(tunedeck_project=stack.project, tunedeck_data_dir=str(data),
                                        tunedeck_ray_address=cluster.address)
                with running_app(settings) as app:
                    client = Client(app.url, verbose=False)
                    rounds = [ray_round(client, cluster, data, i) for i in range(3)]
                    client.close()
            hand = statistics.median(r[0] for r in rounds)
            through = statistics.median(r[1] for r in rounds)
            checks = statistics.median(r[2] for r in rounds)
            report("train_queue", startup_s=round(startup, 2), overhead_s=round(overhead, 2),
                   start_latency_s=round(latency, 2),
                   ray_by_hand_s=round(hand, 2), ray_tunedeck_s=round(through, 2), ratio=round(through / hand, 3),
                   checks_s=round(checks, 2), ratio_with_checks=round((through + checks) / hand, 3),
                   rounds=json.dumps([[round(x, 2) for x in r] for r in local + rounds]).replace(" ", ""))
    finally:
        stack.cleanup()


if __name__ == "__main__":
    main()
