"""Services tab against the real Docker engine: live status, logs, controls, confinement."""

from __future__ import annotations

import time

import httpx
import pytest
from gradio_client import Client
from playwright.sync_api import expect

from tests.harness.parts import wait_for

CHATTY = ["sh", "-c", 'i=0; while true; do i=$((i+1)); echo "tick $i \033[32mgreen\033[0m"; sleep 0.2; done']


def row(app, service):
    return app.runtime.monitor.snapshot().by_service(service)


def test_status_changes_show_within_two_seconds(app_server, stack):
    snap = app_server.runtime.monitor.snapshot()
    assert snap.engine_ok and set(snap.missing()) == set(app_server.runtime.settings.services)

    c = stack.run("ollama")  # how fast a change shows is measured in bench/status.py
    wait_for(lambda: (r := row(app_server, "ollama")) and r.state == "running", 10)
    assert "ollama" not in app_server.runtime.monitor.snapshot().missing()

    c.stop(timeout=1)
    wait_for(lambda: row(app_server, "ollama").state == "exited", 10)

    sick = stack.run("tensorboard", healthcheck={"test": ["CMD", "false"], "interval": 500_000_000,
                                                 "timeout": 500_000_000, "retries": 1, "start_period": 0})
    wait_for(lambda: (r := row(app_server, "tensorboard")) and r.health == "unhealthy", 10)
    assert "1 unhealthy" in app_server.runtime.monitor.snapshot().summary()
    sick.remove(force=True)
    wait_for(lambda: "tensorboard" in app_server.runtime.monitor.snapshot().missing(), 10)


def test_plain_json_status_matches_the_api(app_server, stack):
    stack.run("ollama")
    wait_for(lambda: (r := row(app_server, "ollama")) and r.state == "running", 10)
    plain = httpx.get(app_server.url + "/_tunedeck/status", timeout=10)
    api = Client(app_server.url, verbose=False).predict(api_name="/status")
    assert plain.status_code == 200 and plain.headers["cache-control"] == "no-store"
    body = plain.json()
    assert body["engine_ok"] and body["missing"] == api["missing"] and "ollama" not in body["missing"]
    ours = [{k: v for k, v in c.items() if k != "uptime"} for c in body["containers"]]
    assert [(c["service"], c["state"]) for c in ours if c["state"] != "missing"] == [("ollama", "running")]
    assert ours == [{k: v for k, v in c.items() if k != "uptime"} for c in api["containers"]]


def test_restart_count_and_uptime(app_server, stack):
    stack.run("llamacpp", ["sh", "-c", "sleep 0.3; exit 3"], restart_policy={"Name": "on-failure",
                                                                            "MaximumRetryCount": 2})
    wait_for(lambda: (r := row(app_server, "llamacpp")) and r.restarts >= 1, 10)
    stack.run("ollama")
    wait_for(lambda: (r := row(app_server, "ollama")) and r.started_at, 2)
    frame = __import__("app.ui.services_tab", fromlist=["status_frame"]).status_frame(
        app_server.runtime.monitor.snapshot())
    ollama = frame[frame.service == "ollama"].iloc[0]
    assert ollama["uptime"].endswith("s") and ollama["image"].startswith("tunedeck-test/hosttools")
    assert (frame[frame.service == "caddy"].iloc[0]["state"]) == "missing"


def test_follow_filter_reattach_and_cancel(app_server, stack):
    c = stack.run("ollama", CHATTY)
    wait_for(lambda: row(app_server, "ollama"), 2)
    client = Client(app_server.url, verbose=False)
    try:
        # tail + follow, ANSI stripped, timestamps on, substring filter
        job = client.submit("ollama", 3, "tick", False, True, api_name="/logs")
        batches = []
        for out in job:
            batches.append(out)
            if sum(b.count("\n") + 1 for b in batches if b) >= 8:
                break
        job.cancel()
        text = "\n".join(b for b in batches if b)
        assert "\x1b" not in text and "green" in text
        assert text.splitlines()[0][:4].isdigit()  # ISO timestamp first
        assert len(batches[0].splitlines()) <= 3
        numbers = [int(line.split("tick ")[1].split()[0]) for line in text.splitlines()]
        assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)

        # a substring filter ignores case both ways
        job = client.submit("ollama", 50, "TiCk 1", False, False, api_name="/logs")
        mixed: list[str] = []
        for out in job:
            mixed += [line for line in out.splitlines() if line]
            if len(mixed) >= 3:
                break
        job.cancel()
        assert mixed and all(line.lower().startswith("tick 1") for line in mixed), mixed

        # a bad regex is a clear message, not a crash
        with pytest.raises(Exception, match="Invalid regular expression"):
            client.predict("ollama", 10, "tick(", True, True, api_name="/logs")
        with pytest.raises(Exception, match="Tail must be between 1 and 2000"):
            client.predict("ollama", -5, "", False, True, api_name="/logs")
        with pytest.raises(Exception, match="not a service or container of this stack"):
            client.predict("docker-daemon", 10, "", False, True, api_name="/logs")

        # regex filter, then the container restarts: the follow re-attaches by itself
        job = client.submit("ollama", 1, r"tick \d*[05] ", True, False, api_name="/logs")
        seen: list[str] = []
        restarted = False
        deadline = time.monotonic() + 30
        for out in job:
            seen += [line for line in out.splitlines() if line]
            if not restarted and len(seen) >= 2:
                c.restart(timeout=1)
                restarted = True
            if restarted and any("following again" in s for s in seen) and \
                    any(s.startswith("tick 5 ") or s.startswith("tick 10 ") for s in seen[seen.index(
                        next(s for s in seen if "following again" in s)):]):
                break
            assert time.monotonic() < deadline, seen
        job.cancel()
        body = [s for s in seen if s.startswith("tick")]
        assert all(int(s.split()[1]) % 5 == 0 for s in body)
    finally:
        client.close()


def test_cancel_on_silent_container_releases_connection(app_server, stack):
    stack.run("tensorboard", ["sleep", "100000"])
    wait_for(lambda: row(app_server, "tensorboard"), 2)
    client = Client(app_server.url, verbose=False)
    job = client.submit("tensorboard", 10, "", False, True, api_name="/logs")
    wait_for(lambda: app_server.runtime.logs.open_streams() == 1, 5)
    job.cancel()
    wait_for(lambda: app_server.runtime.logs.open_streams() == 0, 5, 0.01)  # latency: bench/fanout.py
    client.close()


def test_following_a_quiet_container_keeps_its_one_connection(app_server, stack, caplog):
    """The log request has no read timeout: 40 s of silence (the client's timeout is 15 s) makes no
    reconnect and logs no warning."""
    import logging

    stack.run("tensorboard", ["sleep", "100000"])
    wait_for(lambda: row(app_server, "tensorboard"), 2)
    client = Client(app_server.url, verbose=False)
    job = client.submit("tensorboard", 10, "", False, True, api_name="/logs")
    try:
        wait_for(lambda: app_server.runtime.logs.open_streams() == 1, 5)
        with caplog.at_level(logging.WARNING):
            time.sleep(40)
        assert [s.opened for s in app_server.runtime.logs._streams.values()] == [1]
        assert app_server.runtime.logs.open_streams() == 1
        assert not [r for r in caplog.records if "log stream" in r.getMessage()], caplog.text
    finally:
        job.cancel()
        client.close()


def test_a_pathological_filter_leaves_the_app_answering(app_server, stack):
    """`(0|00)+$` on a 1 MB line of zeros (and a b) runs off the event loop with a time budget: the session
    check and the status answer meanwhile, and the follow ends with one sentence."""
    stack.run("tensorboard", ["sh", "-c", "printf '%01000000db\\n' 0; sleep 100000"])
    wait_for(lambda: row(app_server, "tensorboard"), 2)
    client = Client(app_server.url, verbose=False)
    job = client.submit("tensorboard", 10, "(0|00)+$", True, False, api_name="/logs")
    latencies = []
    deadline = time.monotonic() + 20
    while not job.done() and time.monotonic() < deadline:
        t0 = time.monotonic()
        assert httpx.get(app_server.url + "/_tunedeck/status", timeout=5).status_code == 200
        assert httpx.get(app_server.url + "/_tunedeck/auth", timeout=5).status_code in (200, 401)
        latencies.append(time.monotonic() - t0)
        time.sleep(0.02)
    with pytest.raises(Exception, match="The filter is too slow"):
        job.result()
    assert latencies and max(latencies) < 0.5, latencies  # the loop was never held (figures: bench/)
    client.close()


def test_removed_container_ends_stream_with_message(app_server, stack):
    c = stack.run("ollama", CHATTY)
    wait_for(lambda: row(app_server, "ollama"), 2)
    client = Client(app_server.url, verbose=False)
    job = client.submit("ollama", 2, "", False, False, api_name="/logs")
    lines: list[str] = []
    removed = False
    for out in job:
        lines += out.splitlines()
        if not removed and len(lines) >= 3:
            c.remove(force=True)
            removed = True
    assert any("removed; stream ended" in line for line in lines)
    assert job.status().success is not False
    assert app_server.runtime.monitor.snapshot().engine_ok
    client.close()


def test_fanout_shares_one_docker_stream(app_server, stack):
    stack.run("ollama", CHATTY)
    wait_for(lambda: row(app_server, "ollama"), 2)
    client = Client(app_server.url, verbose=False)
    jobs = [client.submit("ollama", 5, "", False, True, api_name="/logs") for _ in range(5)]
    wait_for(lambda: all(len(j.outputs()) >= 2 for j in jobs), 10)
    assert app_server.runtime.logs.open_streams() == 1
    for j in jobs:
        j.cancel()
    wait_for(lambda: app_server.runtime.logs.open_streams() == 0, 3)
    client.close()


@pytest.mark.parametrize("kind", ["unlabelled", "another compose project"])
def test_control_refuses_containers_outside_the_project(app_server, stack, docker_client, kind):
    from app.docker_gateway import PROJECT_LABEL, SERVICE_LABEL

    if kind == "unlabelled":
        outsider = stack.run("ollama", labelled=False, name=f"{stack.project}-outsider")
    else:  # a real compose container, with the same service name, of someone else's project
        outsider = stack.run("ollama", labelled=False, name=f"{stack.project}-other-ollama-1",
                             labels={PROJECT_LABEL: stack.project + "other", SERVICE_LABEL: "ollama"})
    client = Client(app_server.url, verbose=False)
    for action in ("stop", "restart", "start"):
        with pytest.raises(Exception, match="Refused: .* is not a container of project"):
            client.predict(outsider.name, action, True, api_name="/control")
    with pytest.raises(Exception, match="Refused"):
        client.predict(outsider.id, "stop", True, api_name="/control")
    assert outsider.name not in str(client.predict(api_name="/status"))
    assert outsider.name not in httpx.get(app_server.url + "/_tunedeck/status", timeout=10).text
    with pytest.raises(Exception, match="Confirm to stop"):
        client.predict(outsider.name, "stop", False, api_name="/control")
    with pytest.raises(Exception, match="Unknown action"):
        client.predict(outsider.name, "rm -rf", True, api_name="/control")
    outsider.reload()
    assert outsider.status == "running"
    with pytest.raises(Exception, match="not a service or container of this stack"):
        client.predict(outsider.name, 10, "", False, True, api_name="/logs")
    client.close()


@pytest.mark.browser
def test_browser_logs_and_restart_with_confirmation(app_server, stack, page):
    c = stack.run("ollama", CHATTY)
    started = wait_for(lambda: (r := row(app_server, "ollama")) and r.started_at, 2)
    page.goto(app_server.url)
    expect(page.locator("#status-table")).to_contain_text(c.name)

    page.locator("#log-service input").fill("ollama")
    page.locator("#log-service input").press("Enter")
    page.locator("#log-follow").click()
    view = page.locator("#log-view textarea")
    expect(view).to_have_value(__import__("re").compile(r"tick \d+ green"))
    first = view.input_value()
    expect(view).not_to_have_value(first)  # a new line appeared live

    page.locator("#control-target input").fill(c.name)
    page.locator("#control-target input").press("Enter")
    page.locator("#control-restart").click()
    expect(page.locator("#control-confirm-text")).to_contain_text(f"Restart {c.name}?")
    assert row(app_server, "ollama").started_at == started  # nothing happens before confirming
    page.locator("#control-confirm").click()
    expect(page.locator("#control-result")).to_contain_text("restart:")
    wait_for(lambda: row(app_server, "ollama").started_at not in (None, started), 10)
    expect(view).to_have_value(__import__("re").compile("following again"), timeout=15_000)
