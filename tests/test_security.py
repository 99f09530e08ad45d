"""Security: login, secrets, the public API surface, engine faults without leaks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
from gradio_client import Client

from tests.harness.appserver import running_app, settings_for
from tests.harness.parts import free_port, wait_for_port
from tests.harness.sockproxy import UnixSocketProxy

ROOT = Path(__file__).resolve().parents[1]
SECRET = "S3cret-Value-42"
PUBLIC_API = {"/export", "/cancel_export", "/runs", "/history", "/training_runs", "/logs", "/control", "/status",
              "/datasets", "/register_dataset", "/quant_report", "/compare_base", "/chat", "/storage",
              "/storage_delete", "/train", "/train_queue", "/train_control", "/train_log", "/gpus"}


@pytest.fixture
def secured_app(tmp_path):
    port = free_port()
    env = {**os.environ, "TUNEDECK_AUTH": f"admin:{SECRET}", "TUNEDECK_PORT": str(port),
           "TUNEDECK_DATA_DIR": str(tmp_path), "TUNEDECK_PROJECT": "tdsecure", "GRADIO_ANALYTICS_ENABLED": "False"}
    log = open(tmp_path / "app.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "app"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    assert wait_for_port(port, 60)
    yield f"http://127.0.0.1:{port}", tmp_path / "app.log"
    proc.terminate()
    proc.wait(10)


def test_login_does_not_reveal_whether_a_user_exists(secured_app):
    url, _ = secured_app
    wrong_user = httpx.post(url + "/login", data={"username": "mallory", "password": SECRET})
    wrong_pw = httpx.post(url + "/login", data={"username": "admin", "password": "nope"})
    assert wrong_user.status_code == wrong_pw.status_code >= 400
    assert wrong_user.json() == wrong_pw.json()
    ok = httpx.post(url + "/login", data={"username": "admin", "password": SECRET})
    assert ok.status_code == 200


def test_api_needs_login_and_secrets_never_leak(secured_app):
    url, log = secured_app
    with pytest.raises(Exception):
        Client(url, verbose=False).predict(api_name="/status")
    with httpx.Client(base_url=url) as c:
        assert c.get("/config").status_code in (401, 403) or SECRET not in c.get("/config").text
        c.post("/login", data={"username": "admin", "password": SECRET}).raise_for_status()
        for path in ("/", "/config", "/gradio_api/info"):
            body = c.get(path).text
            assert SECRET not in body, path
    client = Client(url, auth=("admin", SECRET), verbose=False)
    status = client.predict(api_name="/status")
    client.close()
    assert "containers" in status and SECRET not in str(status)
    time.sleep(0.5)
    assert SECRET not in log.read_text()
    help_text = subprocess.run([sys.executable, "-m", "app", "--help"], cwd=ROOT, capture_output=True, text=True,
                               env={**os.environ, "TUNEDECK_AUTH": f"admin:{SECRET}"}).stdout
    assert SECRET not in help_text


def test_public_api_is_exactly_the_documented_one(app_server):
    client = Client(app_server.url, verbose=False)
    endpoints = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    client.close()
    assert endpoints == PUBLIC_API
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `(/[a-z_]+)` \|", readme, re.M))
    assert documented == PUBLIC_API, "README's API table is out of date"
    info = httpx.get(app_server.url + "/gradio_api/info").json()
    assert not info["unnamed_endpoints"]


def _threads_and_sockets():
    me = psutil.Process()
    return threading.active_count(), len(me.net_connections(kind="unix"))


def test_engine_drop_and_return_while_following_leaks_nothing(tmp_path, stack):
    sock = str(tmp_path / "engine.sock")
    proxy = UnixSocketProxy(sock)
    proxy.start()
    stack.run("ollama", ["sh", "-c", 'i=0; while true; do i=$((i+1)); echo "n $i"; sleep 0.2; done'])
    settings = settings_for(docker_host=f"unix://{sock}", tunedeck_project=stack.project,
                            tunedeck_data_dir=str(tmp_path))
    with running_app(settings) as app:
        deadline = time.monotonic() + 10
        while not app.runtime.monitor.snapshot().containers:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        client = Client(app.url, verbose=False)
        job = client.submit("ollama", 1, "", False, False, api_name="/logs")
        lines: list[str] = []
        lock = threading.Lock()

        def collect():
            for out in job:
                with lock:
                    lines.extend(out.splitlines())

        reader = threading.Thread(target=collect, daemon=True)
        reader.start()
        time.sleep(1.5)
        baseline = None
        for cycle in range(3):
            proxy.stop()
            t0 = time.monotonic()
            while app.runtime.monitor.snapshot().engine_ok:
                assert time.monotonic() - t0 < 5, "the drop was not noticed"
                time.sleep(0.05)
            time.sleep(1.0)
            proxy.start()
            t0 = time.monotonic()
            while not app.runtime.monitor.snapshot().engine_ok:
                assert time.monotonic() - t0 < 10, "no recovery within 10 s"
                time.sleep(0.05)
            with lock:
                mark = len(lines)
            t0 = time.monotonic()
            while True:
                with lock:
                    fresh = [l for l in lines[mark:] if l.startswith("n ")]
                if fresh:
                    break
                assert time.monotonic() - t0 < 10, "the log follow did not resume"
                time.sleep(0.1)
            counts = _threads_and_sockets()
            baseline = baseline or counts
            assert counts[0] <= baseline[0] + 2 and counts[1] <= baseline[1] + 4, (cycle, counts, baseline)
        job.cancel()
        client.close()
        with lock:
            assert any("not reachable" in l for l in lines) and any("following again" in l for l in lines)
        assert app.runtime.logs.open_streams() <= 1
    proxy.stop()


@pytest.mark.parametrize("when", ["before anyone reads its output", "while it runs"])
def test_a_cancel_stops_the_tool_whenever_it_lands(stack, when):
    """Docker has no "kill exec": the tool's PID comes from its wrapper's first line. A kill asked for before
    that line was read is remembered and sent the moment the PID arrives, so no tool is left running."""
    from app.docker_gateway import DockerGateway, ToolCommand

    container = stack.run("llamafactory", ["sleep", "100000"])
    gateway = DockerGateway(stack.project)
    handle = gateway.exec_tool(ToolCommand("llamafactory", ("sh", "-c", "sleep 1; echo started; exec sleep 300")))
    started = time.monotonic()
    lines = []
    if when == "before anyone reads its output":
        handle.kill(grace=1.0)
        lines = [line for _ch, line in handle.lines()]
    else:
        for _ch, line in handle.lines():
            lines.append(line)
            if line == "started":
                threading.Thread(target=handle.kill, args=(1.0,), daemon=True).start()
    assert time.monotonic() - started < 10, "the tool was not stopped"
    assert handle.exit_code() not in (0, None) or not gateway.exec_running(handle.exec_id)
    time.sleep(0.3)
    ps = container.exec_run(["ps", "-o", "args"]).output.decode()
    assert "sleep 300" not in ps, ps
