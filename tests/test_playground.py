"""Playground: chat with served models side by side, compare with the base model, the /chat API.

The Ollama stand-in runs the real exported GGUF files with llama.cpp and records when a client
goes away; the browser is headless Chromium.
"""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest
from gradio_client import Client
from playwright.sync_api import expect

from tests.harness.appserver import run_readme_example
from tests.harness.stack import Stack, new_project_name
from tests.harness.toolbox import run_tools_script, tiny_run, tool_app

pytestmark = pytest.mark.tools
LONG = 4000  # tokens: with </s> muted the tiny model runs to its limit, so a stream lasts until stopped


@pytest.fixture(scope="module")
def env(docker_client, hosttools_image, tmp_path_factory):
    data = tmp_path_factory.mktemp("playground") / "data"
    data.mkdir()
    stack = Stack(docker_client, new_project_name(), hosttools_image)
    try:
        run = tiny_run(data, tmp_path_factory.getbasetemp())
        run_tools_script("mute_token.py", str(data / "models" / "tiny-llama"), "2")  # </s>: answers run long
        with tool_app(stack, data) as tools:
            app, ollama = tools.app, tools.ollama
            client = Client(app.url, verbose=False)
            final = None
            for final in client.submit(run, "", "", "f16", ["Q4_K_M", "Q8_0"], "pg", "", True, False, False,
                                       api_name="/export"):
                pass
            assert final[1]["status"] == "succeeded", final[0][-2000:]
            yield {"app": app, "client": client, "ollama": ollama, "run": run, "data": data,
                   "job": final[1]["job_id"], "stack": stack}
            client.close()
    finally:
        stack.cleanup()


def disconnects(ollama) -> list[dict]:
    return [r for r in ollama.requests() if r.get("event") == "disconnect"]


@pytest.mark.browser
def test_side_by_side_streams_both_columns_and_stop_closes_both(env, page, screenshots):
    page.goto(env["app"].url)
    page.get_by_role("tab", name="Playground").click()
    models = page.locator("#playground-models input")
    for name in ("pg:q4_k_m", "pg:q8_0"):
        models.click()
        models.fill(name)
        page.keyboard.press("Enter")
    expect(page.locator("#playground-chat-1")).to_be_visible()
    page.locator("#playground-max input").fill(str(LONG))
    page.locator("#playground-temp input[type=number]").fill("0")
    page.locator("#playground-message textarea").fill("Tell me a long story.")
    before = len(disconnects(env["ollama"]))
    env["ollama"].fail_next(token_delay=0.003)  # ~12 s per answer: both still stream when Stop is clicked
    page.locator("#playground-send").click()
    for i in (0, 1):  # both columns receive tokens while the other still streams
        expect(page.locator(f"#playground-chat-{i} .message.bot, #playground-chat-{i} [data-testid='bot']").first) \
            .to_be_visible(timeout=30_000)
    first = [page.locator(f"#playground-chat-{i}").inner_text() for i in (0, 1)]
    page.wait_for_timeout(600)
    later = [page.locator(f"#playground-chat-{i}").inner_text() for i in (0, 1)]
    assert all(len(b) > len(a) for a, b in zip(first, later)), "the columns did not keep streaming"
    t0 = time.monotonic()
    page.locator("#playground-stop").click()
    deadline = t0 + 1.0
    while len(disconnects(env["ollama"])) < before + 2 and time.monotonic() < deadline + 4:
        time.sleep(0.02)
    stopped_in = time.monotonic() - t0
    assert len(disconnects(env["ollama"])) >= before + 2, "Ollama did not see both requests closed"
    assert stopped_in < 1.0, f"stop took {stopped_in:.2f} s"
    frozen = [page.locator(f"#playground-chat-{i}").inner_text() for i in (0, 1)]
    page.wait_for_timeout(500)
    assert [page.locator(f"#playground-chat-{i}").inner_text() for i in (0, 1)] == frozen
    env["ollama"].fail_next(token_delay=0)
    page.screenshot(path=str(screenshots / "playground.png"), full_page=True)


def test_chat_api_streams_through_gradio_client_and_raw_sse(env):
    messages = [{"role": "user", "content": "Count to ten."}]
    job = env["client"].submit("pg:q8_0", messages, {"num_predict": 40, "temperature": 0, "seed": 1},
                               api_name="/chat")
    updates = list(job)
    assert len(updates) > 1 and updates[-1]["done"]
    assert updates[-1]["content"] == "".join(u["delta"] for u in updates)
    stats = updates[-1]["stats"]
    assert stats["prompt_tokens"] > 0 and stats["eval_tokens"] > 0 and stats["tokens_per_s"] > 0
    assert stats["done_reason"] in ("stop", "length")
    # raw HTTP: POST /gradio_api/call/chat, then the event stream
    with httpx.Client(base_url=env["app"].url, timeout=60) as http:
        event = http.post("/gradio_api/call/chat", json={"data": ["pg:q8_0", messages, {"num_predict": 20}]})
        event_id = event.json()["event_id"]
        with http.stream("GET", f"/gradio_api/call/chat/{event_id}") as resp:
            events = [json.loads(line[5:]) for line in resp.iter_lines() if line.startswith("data:")]
    generating = [e for e in events if isinstance(e, list)]
    assert len(generating) > 1 and generating[-1][0]["done"]


@pytest.mark.parametrize("case,args,expected", [
    ("unknown model", ("no-such-model", [{"role": "user", "content": "hi"}], {}), "Ollama has no model named"),
    ("empty message", ("pg:q8_0", [{"role": "user", "content": "  "}], {}), "Type a message first"),
    ("over the context", ("pg:q8_0", [{"role": "user", "content": "word " * 900}], {"num_ctx": 128}),
     "longer than pg:q8_0's context window"),
    ("bad option", ("pg:q8_0", [{"role": "user", "content": "hi"}], {"temperature": "hot"}),
     "Option temperature must be a number"),
])
def test_bad_chat_inputs_are_one_sentence(env, case, args, expected):
    with pytest.raises(Exception, match=expected) as err:
        env["client"].predict(*args, api_name="/chat")
    assert "Traceback" not in str(err.value) and len(str(err.value)) < 300


def test_ollama_down_and_going_down_mid_stream(env):
    ollama = env["ollama"]
    client = env["client"]
    job = client.submit("pg:q4_k_m", [{"role": "user", "content": "Go on forever."}],
                        {"num_predict": LONG, "temperature": 0}, api_name="/chat")
    seen = 0
    for _update in job:
        seen += 1
        if seen == 3:
            ollama.container.stop(timeout=1)
    with pytest.raises(Exception, match="stopped answering mid-stream"):
        job.result()
    try:
        with pytest.raises(Exception, match="is not reachable"):
            client.predict("pg:q4_k_m", [{"role": "user", "content": "hi"}], {}, api_name="/chat")
        assert client.predict(api_name="/status")["engine_ok"]  # the app itself is fine
    finally:
        ollama.container.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(ollama.url + "/api/version", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
    assert "pg:q8_0" in [m["name"] for m in httpx.get(ollama.url + "/api/tags").json()["models"]]


def test_compare_with_base_is_built_from_the_base_weights(env):
    updates = list(env["client"].submit(env["job"], "", api_name="/compare_base"))
    log, status = updates[-1]
    assert status["status"] == "succeeded", log[-2000:]
    assert status["result"]["ollama_models"] == ["pg-base:q4_k_m", "pg-base:q8_0"]
    assert status["stages"]["merge"] == "skipped"
    show = {m: httpx.post(env["ollama"].url + "/api/show", json={"model": m}, timeout=30).json()
            for m in ("pg:q8_0", "pg-base:q8_0")}
    assert show["pg-base:q8_0"]["template"] == show["pg:q8_0"]["template"]  # the same chat format
    assert show["pg-base:q8_0"]["parameters"] == show["pg:q8_0"]["parameters"]
    gguf = next(a["file"] for a in status["result"]["artifacts"].values() if a["file"].endswith("-f16.gguf"))
    merged = env["data"] / "exports"
    merged_dir = next(p for p in merged.glob("*/merged"))
    cmp = run_tools_script("compare_gguf_weights.py", gguf, str(env["data"] / "models" / "tiny-llama"),
                           str(merged_dir))
    assert cmp["to_base"] < 1e-3 < cmp["to_merged"], cmp
    again = list(env["client"].submit(env["job"], "", api_name="/compare_base"))[-1][1]
    assert again["stages"]["convert"] == "reused"  # the base was converted before: content-keyed cache


def test_compare_with_base_keeps_the_tag_and_never_replaces_a_model_of_yours(env):
    client, ollama = env["client"], env["ollama"]
    final = list(client.submit(env["run"], "", "", "f16", [], "bot:v1", "", True, False, False,
                               api_name="/export"))[-1][1]
    assert final["status"] == "succeeded"
    blob = next(iter([r["body"] for r in ollama.requests() if r["path"] == "/api/create"
                      and r["body"]["model"] == "bot:v1"][-1]["files"].values()))
    # the user makes a model of their own under the name compare-with-base would use
    mine = httpx.post(ollama.url + "/api/create", json={"model": "bot-base:v1", "files": {"model.gguf": blob},
                                                        "stream": False}, timeout=60)
    assert mine.status_code == 200, mine.text
    before = httpx.post(ollama.url + "/api/show", json={"model": "bot-base:v1"}, timeout=30).json()
    refused = list(client.submit(final["job_id"], "", api_name="/compare_base"))[-1][1]
    assert refused["status"] == "failed" and refused["stage"] == "preflight"
    assert "Ollama already has a model named 'bot-base:v1'" in refused["error"]
    assert httpx.post(ollama.url + "/api/show", json={"model": "bot-base:v1"}, timeout=30).json() == before
    httpx.request("DELETE", ollama.url + "/api/delete", json={"model": "bot-base:v1"}, timeout=30)
    status = list(client.submit(final["job_id"], "", api_name="/compare_base"))[-1][1]
    assert status["status"] == "succeeded", status.get("error")
    assert status["result"]["compare_pair"] == ["bot:v1", "bot-base:v1"]
    again = list(client.submit(final["job_id"], "", api_name="/compare_base"))[-1][1]
    assert again["status"] == "succeeded"  # TuneDeck loaded it: replacing its own model is fine


@pytest.mark.browser
def test_prompt_from_the_run_and_compare_from_the_history(env, page):
    page.goto(env["app"].url)
    page.get_by_role("tab", name="Playground").click()
    page.locator("#playground-run input").click()
    page.locator("#playground-run input").fill(env["run"])
    page.keyboard.press("Enter")
    page.locator("#playground-sample").click()
    expect(page.locator(".toast-body, [data-testid='toast-body']").first).to_contain_text(
        re.compile("training data cannot be read"), timeout=20_000)  # the toy run records no dataset
    page.get_by_role("tab", name="Export").click()
    page.get_by_text("History", exact=True).click()
    page.locator("#history-refresh").click()
    page.locator("#export-history").get_by_text(env["job"]).click()
    expect(page.locator("#history-selected textarea, #history-selected input").first).to_have_value(env["job"])
    page.locator("#history-compare").click()
    expect(page.get_by_role("tab", name="Playground")).to_have_attribute("aria-selected", "true", timeout=180_000)
    expect(page.locator("#playground-note")).to_contain_text("is the base model")


def test_readme_chat_example_runs(env, tmp_path):
    out = run_readme_example("chat-example", tmp_path, TUNEDECK_URL=env["app"].url, TUNEDECK_MODEL="pg:q8_0")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "tokens_per_s" in out.stdout and "done_reason" in out.stdout
