"""One login for every route: real Caddy with the project's Caddyfile asks the dashboard (forward_auth)
before each request to a tool; real TensorBoard, a real Gradio app as LLaMA Board, headless Chromium."""

from __future__ import annotations

import os
import re
import subprocess
import time

import httpx
import pytest
from playwright.sync_api import expect

from app.auth import make_checker
from tests.harness.appserver import running_app, settings_for
from tests.harness.caddy import ROOT, running_caddy
from tests.harness.parts import free_port
from tests.harness.upstreams import caddy_upstreams

USER, PASSWORD = "admin", "Tool-Auth-Pw-7"
HTML = {"Accept": "text/html,application/xhtml+xml"}


def tool_routes(caddy, lf_asset: str) -> list[tuple[str, str, dict]]:
    """(label, url, extra headers): pages, data routes, SSE, a websocket upgrade and a static asset of each tool."""
    run, tag = ".", "train/loss"
    return [
        ("tensorboard page", caddy.url + "/tensorboard/", HTML),
        ("tensorboard data", caddy.url + "/tensorboard/data/runs", {}),
        ("tensorboard scalars", caddy.url + f"/tensorboard/data/plugin/scalars/scalars?run={run}&tag={tag}", {}),
        ("tensorboard asset", caddy.url + "/tensorboard/index.js", {}),
        ("llamaboard page", caddy.url + "/llamafactory/", HTML),
        ("llamaboard config", caddy.url + "/llamafactory/config", {}),
        ("llamaboard SSE", caddy.url + "/llamafactory/gradio_api/queue/data?session_hash=x",
         {"Accept": "text/event-stream"}),
        ("llamaboard websocket", caddy.url + "/llamafactory/gradio_api/queue/join",
         {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
          "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}),
        ("llamaboard asset", caddy.url + "/llamafactory" + lf_asset, {}),
        ("easy-dataset page", caddy.dataset_url + "/", HTML),
        ("easy-dataset api", caddy.dataset_url + "/api/projects", {}),
        ("easy-dataset asset", caddy.dataset_url + "/_next/static/app.js", {}),
    ]


def refused(resp: httpx.Response, page: bool, login: str) -> bool:
    if page:
        return resp.status_code == 302 and resp.headers["location"] == login
    return resp.status_code == 401 and resp.json() == {"detail": "Not authenticated"}


@pytest.fixture
def guarded(stack, tools_stack, data_dir):
    """The dashboard with a login, behind Caddy."""
    ports = tools_stack["ports"]
    http_port, ds_port = free_port(), free_port()
    settings = settings_for(tunedeck_project=stack.project, tunedeck_data_dir=str(data_dir),
                            tunedeck_dataset_url=f"{{scheme}}://{{hostname}}:{ds_port}/")
    lf_page = httpx.get(f"http://127.0.0.1:{ports['llamafactory']}/", timeout=30).text
    asset = re.search(r'(?:src|href)="\.?(/assets/[^"]+\.(?:js|css))"', lf_page)
    assert asset, "no static asset found in the Gradio page"
    with running_app(settings, auth=make_checker({USER: PASSWORD})) as app, running_caddy(
            caddy_upstreams(app.port, ports), {"TUNEDECK_PUBLIC_HTTP_PORT": str(http_port)},
            port=http_port, dataset_port=ds_port) as caddy:
        yield {"app": app, "caddy": caddy, "asset": asset.group(1), "ports": ports}


def login(client: httpx.Client, base: str) -> None:
    r = client.post(base + "/login", data={"username": USER, "password": PASSWORD})
    assert r.status_code == 200, r.text


def test_without_a_valid_session_every_tool_route_is_refused(guarded):
    caddy = guarded["caddy"]
    routes = tool_routes(caddy, guarded["asset"])
    main_login, ds_login = "/", f"http://127.0.0.1:{caddy.port}/"
    page = httpx.get(caddy.url + "/", timeout=30)
    assert page.status_code == 200 and '"auth_required":true' in page.text.replace(" ", "")  # the login page
    for cookies in ({}, {"access-token-unsecure-forged": "x" * 22}):
        with httpx.Client(timeout=30, cookies=cookies) as c:
            for label, url, headers in routes:
                resp = c.get(url, headers=headers)
                want = ds_login if url.startswith(caddy.dataset_url) else main_login
                assert refused(resp, headers is HTML, want), (label, resp.status_code, resp.text[:200])
            assert c.get(guarded["app"].url + "/_tunedeck/status").status_code == 401  # the plain JSON status too
    # a forged token in the real cookie name
    with httpx.Client(timeout=30) as c:
        login(c, caddy.url)
        name = next(k for k in c.cookies.keys() if k.startswith("access-token-unsecure-"))
        c.cookies.set(name, "forged-token-of-the-right-length")
        for label, url, headers in routes:
            assert refused(c.get(url, headers=headers), headers is HTML, ds_login if caddy.dataset_url in url
                           else main_login), label


def test_a_session_opens_every_tool_and_expires(guarded):
    caddy = guarded["caddy"]
    guarded["app"].runtime.sessions.ttl_s = 8.0  # as TUNEDECK_SESSION_HOURS would set it
    with httpx.Client(timeout=30) as c:
        login(c, caddy.url)
        for label, url, headers in tool_routes(caddy, guarded["asset"]):
            if "websocket" in label or "SSE" in label:
                continue  # not a real websocket/SSE client; refusals above cover these routes
            assert c.get(url, headers=headers).status_code == 200, label
        assert c.get(caddy.url + "/_tunedeck/status").json()["engine_ok"]
        scalars = c.get(caddy.url + "/tensorboard/data/plugin/scalars/scalars",
                        params={"run": ".", "tag": "train/loss"}).json()
        assert scalars and scalars[0][1] == 1 and abs(scalars[0][2] - 3.0) < 1e-6
        time.sleep(9)  # past the session's lifetime: the tools and the dashboard log out together
        guarded["app"].runtime.sessions.sweep()
        assert c.get(caddy.url + "/tensorboard/data/runs").status_code == 401
        assert c.get(caddy.url + "/config").status_code == 401


def test_basic_auth_and_the_session_both_apply(stack, tools_stack, data_dir, caddy_bin):
    hashed = subprocess.run([caddy_bin, "hash-password", "--plaintext", "basic-pw"], capture_output=True,
                            text=True, check=True).stdout.strip()
    settings = settings_for(tunedeck_project=stack.project, tunedeck_data_dir=str(data_dir))
    with running_app(settings, auth=make_checker({USER: PASSWORD})) as app, running_caddy(
            caddy_upstreams(app.port, tools_stack["ports"]),
            {"TUNEDECK_BASIC_AUTH": "on", "TUNEDECK_BASIC_AUTH_USER": "alice",
             "TUNEDECK_BASIC_AUTH_HASH": hashed}) as caddy:
        url = caddy.url + "/tensorboard/data/runs"
        assert httpx.get(url, timeout=30).status_code == 401  # basic auth first
        assert httpx.get(caddy.url + "/healthz", timeout=30).text == "ok"  # the healthcheck stays open
        with httpx.Client(timeout=30, auth=("alice", "basic-pw")) as c:
            assert c.get(url).status_code == 401  # basic auth passed, no session
            login(c, caddy.url)
            assert c.get(url).status_code == 200
            session = dict(c.cookies)
        with httpx.Client(timeout=30, cookies=session) as c:  # a session but no basic auth
            resp = c.get(url)
            assert resp.status_code == 401 and resp.headers.get("www-authenticate", "").startswith("Basic")


@pytest.mark.parametrize("basic", ["off", "on"])
@pytest.mark.parametrize("tool_auth", ["on", "off"])
def test_caddyfile_validates_for_every_setting(caddy_bin, basic, tool_auth):
    env = {**os.environ, "TUNEDECK_BASIC_AUTH": basic, "TUNEDECK_TOOL_AUTH": tool_auth,
           "TUNEDECK_BASIC_AUTH_HASH": "$2a$14$Zgbmdk6tUmqJFGt6FQ1Kc.0QgAcPu1Q2IyqMHhR7u0P5hdSd4sXzu"}
    out = subprocess.run([caddy_bin, "validate", "--config", str(ROOT / "Caddyfile"), "--adapter", "caddyfile"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "Valid configuration" in out.stderr + out.stdout


@pytest.mark.browser
def test_browser_logs_in_once_and_every_tab_works_then_logs_out(guarded, page):
    caddy = guarded["caddy"]
    entry = caddy.url.replace("127.0.0.1", "localhost")
    page.goto(entry + "/")
    page.get_by_label("username").fill(USER)
    page.get_by_label("password").fill(PASSWORD)
    page.get_by_role("button", name=re.compile("login", re.I)).click()
    expect(page.locator("#status-summary")).to_contain_text("running", timeout=30_000)

    page.get_by_role("tab", name="TensorBoard").click()
    tb = page.frame_locator("#frame-tensorboard iframe")
    expect(tb.locator("body")).to_contain_text("train/loss", timeout=60_000)  # a scalar, loaded through the check

    page.get_by_role("tab", name="Training").click()
    lf = page.frame_locator("#frame-training iframe")
    lf.locator("#lf-ping").click()
    expect(lf.locator("#lf-answer textarea")).to_have_value("pong 1", timeout=30_000)

    page.get_by_role("tab", name="Dataset prep").click()
    expect(page.frame_locator("#frame-dataset iframe").locator("h1")).to_have_text("easy-dataset stand-in")

    page.locator("#td-logout").click()
    expect(page.get_by_label("username")).to_be_visible(timeout=30_000)
    for url in (entry + "/tensorboard/data/runs", entry + "/llamafactory/config",
                caddy.dataset_url.replace("127.0.0.1", "localhost") + "/api/projects"):
        assert page.request.get(url).status == 401, url
