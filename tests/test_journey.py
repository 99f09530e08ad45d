"""The whole workflow on the real compose stack: `docker compose up` of compose/docker-compose.yml, then
through Caddy only (nothing else of the stack answers on its addresses), in headless Chromium where a user
would click: an easy-dataset export is registered and shows in LLaMA Board, a real training queued in the
Train tab appears in the Runs and TensorBoard tabs, the Export tab exports it, the model answers in the
Playground; `down`/`up` keeps everything; `stop app` is quick; the first start printed the login that works
throughout.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import uuid

import httpx
import pytest
import yaml
from gradio_client import Client
from playwright.sync_api import expect

from tests.harness.compose_stack import COMPOSE, ComposeStack, docker_config, new_stack, remove_images
from tests.harness.parts import wait_for, wait_for_port
from tests.harness.toolbox import run_tools_script

pytestmark = [pytest.mark.tools, pytest.mark.browser, pytest.mark.serial]
QA = [(f"What is item {i}?", ["Blue.", "Green.", "Seven."][i % 3]) for i in range(40)]
LOGIN = re.compile(r"user: (\S+)\s+password: (\S+)")


def healthy(stack: ComposeStack, services=("app", "caddy")) -> bool:
    states = {c["Service"]: c for c in stack.containers()}
    return all(s in states and "healthy" in states[s].get("Status", "") and "unhealthy" not in states[s]["Status"]
               for s in services)


def up(stack: ComposeStack) -> float:
    t0 = time.monotonic()
    stack.compose("up", "-d", timeout=900)
    wait_for(lambda: healthy(stack), 240, 1.0, "app and caddy healthy")
    assert wait_for_port(stack.http_port, 60)
    return time.monotonic() - t0


@pytest.fixture(scope="module")
def journey(docker_client, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("journey")
    stack = new_stack(docker_client, tmp, uuid.uuid4().hex[:6])
    run_tools_script("make_tiny_run.py", str(stack.data_dir))  # the base model the journey trains
    try:
        stack.up_seconds = up(stack)
        yield stack
    finally:
        logs = stack.compose("logs", "--no-color", "--tail", "60", check=False).stdout
        print(logs[-6000:])
        stack.compose("down", "-v", "--remove-orphans", check=False)
        remove_images(docker_client, stack.images)


def login_of(stack: ComposeStack) -> tuple[str, str]:
    logs = stack.compose("logs", "--no-color", "app").stdout
    match = LOGIN.search(logs)
    assert match, f"the first start printed no login:\n{logs[-2000:]}"
    return match.group(1), match.group(2)


def log_in(page, stack: ComposeStack, user: str, password: str) -> None:
    for _ in range(3):  # a fresh network can abort the very first load (ERR_NETWORK_CHANGED)
        try:
            page.goto(stack.url + "/")
            break
        except Exception:  # noqa: BLE001
            time.sleep(2)
    page.get_by_label("username").fill(user)
    page.get_by_label("password").fill(password)
    page.get_by_role("button", name=re.compile("login", re.I)).click()
    expect(page.locator("#status-summary")).to_contain_text("running", timeout=60_000)


def test_compose_config_needs_no_env_file(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "DOCKER_CONFIG": str(docker_config(tmp_path / "dc"))}
    out = subprocess.run(["docker", "compose", "-f", str(COMPOSE), "config", "-q"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    config = json.loads(subprocess.run(["docker", "compose", "-f", str(COMPOSE), "config", "--format", "json"],
                                       env=env, capture_output=True, text=True, timeout=60).stdout)
    services = config["services"]
    assert services["app"]["environment"]["TUNEDECK_AUTH"] == ""  # made on first start
    assert services["llamafactory"]["image"].endswith(":0.9.5")
    tools = (COMPOSE.parents[1] / ".ci" / "tools-requirements.txt").read_text()
    assert "llamafactory==0.9.5" in tools  # the version compose runs is the one the tests run
    assert "deploy" not in services["llamacpp"]  # convert and quantize need no GPU
    for name in ("app", "llamafactory", "llamacpp", "tensorboard"):
        assert services[name].get("init") is True, name
    assert services["caddy"]["healthcheck"]["test"][-1].endswith("/healthz")
    assert services["caddy"]["environment"]["TUNEDECK_TOOL_AUTH"] == "on"


def test_caddy_healthcheck_stays_healthy_with_basic_auth(docker_client, tmp_path, caddy_bin):
    from tests.harness.compose_stack import build_images

    images = build_images(docker_client, "hc" + uuid.uuid4().hex[:4])
    hashed = subprocess.run([caddy_bin, "hash-password", "--plaintext", "pw"], capture_output=True, text=True,
                            check=True).stdout.strip()
    test = ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/healthz"]
    config = json.loads(subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "--format", "json"], capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin", "DOCKER_CONFIG": str(docker_config(tmp_path / "dc"))}).stdout)
    assert config["services"]["caddy"]["healthcheck"]["test"] == test
    container = docker_client.containers.run(
        images["caddy"], detach=True, environment={"TUNEDECK_BASIC_AUTH": "on", "TUNEDECK_BASIC_AUTH_HASH": hashed},
        volumes={str(COMPOSE.parents[1] / "Caddyfile"): {"bind": "/etc/caddy/Caddyfile", "mode": "ro"}},
        healthcheck={"test": test, "interval": 1_000_000_000, "timeout": 3_000_000_000, "retries": 2},
        labels={"tunedeck.test": "healthcheck"})
    try:
        wait_for(lambda: (container.reload() or container.attrs["State"].get("Health", {}).get("Status"))
                   == "healthy", 30, 0.5, "caddy healthy with basic auth on")
        denied = container.exec_run(["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/"])
        assert denied.exit_code != 0  # everything else still asks for basic auth
    finally:
        container.remove(force=True)
        remove_images(docker_client, images)


def only_caddy_answers(stack: ComposeStack) -> None:
    """From the host, one TCP connect to each port a service of the stack listens on, at each address the
    stack's containers have: only Caddy's published ports answer."""
    addresses = set()
    for container in stack.containers():
        info = json.loads(subprocess.run(["docker", "inspect", container["ID"]], capture_output=True, text=True,
                                         check=True).stdout)[0]
        for net in (info["NetworkSettings"].get("Networks") or {}).values():
            if net.get("IPAddress"):
                addresses.add(net["IPAddress"])
    assert addresses, "the stack's containers have no address at all"
    services = {"app": 7860, "LLaMA Board": 7861, "easy-dataset": 1718, "TensorBoard": 6006, "Ollama": 11434}
    open_ports = {}
    for address in sorted(addresses):
        for what, port in {**services, "caddy": 8080, "caddy (easy-dataset)": 1717}.items():
            try:
                with socket.create_connection((address, port), timeout=1.0):
                    open_ports[(address, port)] = what
            except OSError:  # refused, or no answer
                pass
    assert set(open_ports.values()) == {"caddy", "caddy (easy-dataset)"}, open_ports
    print(f"\n[journey] reachability: {len(addresses)} address(es), {len(services)} tool ports refused, "
          f"Caddy's 2 answer")


def test_the_whole_journey(journey: ComposeStack, page, screenshots):
    stack = journey
    t_start = time.monotonic()
    user, password = login_of(stack)
    assert len(password) >= 20
    login_file = stack.data_dir / "tunedeck-login"
    assert login_file.stat().st_mode & 0o777 == 0o600
    log_in(page, stack, user, password)
    only_caddy_answers(stack)

    # 1. easy-dataset (its stand-in, through Caddy's own port, with the dashboard's session)
    ds = page.request
    pid = ds.post(stack.dataset_url + "/api/projects", data={"name": "Journey QA"}).json()["id"]
    for q, a in QA:
        ds.post(stack.dataset_url + f"/api/projects/{pid}/datasets", data={"question": q, "answer": a})
    assert ds.post(stack.dataset_url + f"/api/projects/{pid}/llamaFactory/generate",
                   data={"systemPrompt": "", "confirmedOnly": False}).json()["success"]
    name = f"[Easy Dataset] [{pid}] Alpaca"
    page.get_by_role("tab", name="Datasets").click()
    page.locator("#datasets-refresh").click()
    table = page.locator("#datasets-table")
    expect(table).to_contain_text("Journey QA")
    expect(table).to_contain_text("no LLaMA-Factory converter")  # multilingual-thinking: skipped
    page.locator("#datasets-choice input").click()
    page.get_by_role("option", name=name).click()
    page.locator("#datasets-register").click()
    expect(page.locator("#datasets-result")).to_contain_text("registered in")

    page.get_by_role("tab", name="Training").click()
    board = page.frame_locator("#frame-training iframe")
    data_dir = board.get_by_label("Data dir").first
    expect(data_dir).to_be_visible(timeout=120_000)
    data_dir.fill("data ")
    data_dir.fill("data")
    data_dir.press("Enter")
    board.get_by_label("Dataset", exact=True).first.click()
    expect(board.get_by_role("option", name=name)).to_be_visible(timeout=30_000)
    page.keyboard.press("Escape")

    # 2. real training in the llamafactory container, queued in the Train tab, followed in the Runs and
    #    TensorBoard tabs
    config = {"model_name_or_path": str(stack.data_dir / "models" / "tiny-llama"), "stage": "sft",
              "do_train": True, "finetuning_type": "lora", "lora_target": "all", "dataset": name,
              "dataset_dir": str(stack.data_dir / "data"), "template": "default", "cutoff_len": 64,
              "output_dir": str(stack.data_dir / "saves" / "tiny-llama" / "lora" / "journey"),
              "per_device_train_batch_size": 2, "max_steps": 120, "logging_steps": 2, "save_strategy": "no",
              "learning_rate": 1e-3, "report_to": "tensorboard", "preprocessing_num_workers": 1,
              "dataloader_num_workers": 0}
    page.get_by_role("tab", name="Train", exact=True).click()
    expect(page.locator("#train-gpus")).to_contain_text("No GPU", timeout=60_000)
    editor = page.locator("#train-config .cm-content")
    editor.click()
    editor.fill(yaml.safe_dump(config, sort_keys=False))
    page.locator("#train-submit").click()
    expect(page.locator("#train-result")).to_contain_text("Queued as job", timeout=180_000)
    page.get_by_role("tab", name="Runs", exact=True).click()
    runs = page.locator("#runs-table")
    expect(runs).to_contain_text("tiny-llama/lora/journey", timeout=120_000)
    expect(runs).to_contain_text("running", timeout=120_000)
    # the journey's own row: the table also lists the data dir's earlier, finished run
    expect(runs.locator("tr", has_text="tiny-llama/lora/journey")).to_contain_text("finished", timeout=600_000)
    run_dir = stack.data_dir / "saves" / "tiny-llama" / "lora" / "journey"
    assert yaml.safe_load((run_dir / "training_args.yaml").read_text())["dataset"] == name  # written by the queue
    # TensorBoard's server rescans every 15 s; then its page (loaded before training) is reloaded, as
    # a user would press its reload button
    wait_for(lambda: page.request.get(stack.url + "/tensorboard/data/runs").json(), 90, 2,
               "TensorBoard found the run's event files")
    page.get_by_role("tab", name="TensorBoard").click()
    page.locator("#frame-tensorboard iframe").evaluate("frame => { frame.src = frame.src; }")
    tb = page.frame_locator("#frame-tensorboard iframe")
    expect(tb.locator("body")).to_contain_text("tiny-llama/lora/journey/runs/", timeout=120_000)
    expect(tb.locator("body")).to_contain_text(re.compile(r"train/(loss|epoch|grad_norm|learning_rate)"),
                                             timeout=120_000)  # the scalar cards load after the run list
    page.screenshot(path=str(screenshots / "journey-tensorboard.png"))

    # 3. export, then chat with the model in Ollama
    page.get_by_role("tab", name="Runs").click()
    page.locator("#runs-select input").click()
    page.locator("#runs-select input").fill("tiny-llama/lora/journey")
    page.get_by_role("option", name="tiny-llama/lora/journey").click()
    expect(page.locator("#runs-select")).to_contain_text("tiny-llama/lora/journey")
    page.locator("#runs-export").click()
    expect(page.get_by_role("tab", name="Export")).to_have_attribute("aria-selected", "true")
    model_name = page.locator("#export-name textarea, #export-name input").first
    expect(model_name).to_have_value("tiny-llama-lora-journey")  # the form is filled from the run first
    model_name.fill("journey-model")
    page.locator("#export-start").click()
    expect(page.locator("#export-progress-bar")).to_have_attribute("data-state", "succeeded", timeout=600_000)
    expect(page.locator("#export-verdict")).to_contain_text("Template:")
    page.get_by_role("tab", name="Playground").click()
    page.locator("#playground-refresh").click()
    expect(page.locator("#playground-note")).to_contain_text("newest: journey-model:latest", timeout=30_000)
    models = page.locator("#playground-models input")
    models.click()
    models.fill("journey-model:latest")
    expect(page.get_by_role("option", name="journey-model:latest")).to_be_visible(timeout=30_000)
    page.keyboard.press("Enter")
    page.locator("#playground-max input").fill("24")
    page.locator("#playground-message textarea").fill("What is item 3?")
    page.locator("#playground-send").click()
    expect(page.locator("#playground-stats-0")).to_contain_text("tok/s", timeout=120_000)
    journey_s = time.monotonic() - t_start

    # 4. down and up: the login, easy-dataset's data, the registration, the history, Ollama's models remain
    registered = json.loads((stack.data_dir / "data" / "dataset_info.json").read_text())
    assert registered[name]["file_name"].startswith(str(stack.data_dir))
    stack.compose("down", timeout=300)
    restart_s = up(stack)
    assert LOGIN.search(stack.compose("logs", "--no-color", "app").stdout) is None  # printed once only
    with httpx.Client(base_url=stack.url, timeout=60) as http:
        assert http.post("/login", data={"username": user, "password": password}).status_code == 200
        projects = http.get(stack.dataset_url + "/api/projects").json()
        assert any(p["id"] == pid for p in projects)
    client = Client(stack.url, auth=(user, password), verbose=False)
    history = client.predict(api_name="/history")
    assert any(j["status"] == "succeeded" and j["run"] == "tiny-llama/lora/journey" for j in history)
    listed = {d["name"]: d for d in client.predict(api_name="/datasets")}
    assert listed[name]["status"] == "registered"
    answer = list(client.submit("journey-model", [{"role": "user", "content": "What is item 3?"}],
                                {"num_predict": 8}, api_name="/chat"))
    assert answer and answer[-1]["done"]
    client.close()

    # 5. stop app: the app leaves at once (SIGTERM through tini)
    t0 = time.monotonic()
    stack.compose("stop", "app", timeout=60)
    stop_s = time.monotonic() - t0
    assert stop_s < 5, f"docker compose stop app took {stop_s:.1f} s"
    print(f"\n[journey] up {stack.up_seconds:.0f} s, journey {journey_s:.0f} s, down+up {restart_s:.0f} s, "
          f"stop app {stop_s:.1f} s")
