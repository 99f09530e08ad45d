"""Model export end to end with the REAL tools in containers, through the Gradio API.

LLaMA-Factory merges, llama.cpp converts and quantizes (each `docker exec`ed in its own
labelled container), the Ollama stand-in parses the GGUF and runs it for the chat.
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from gradio_client import Client

from tests.harness.appserver import app_process, run_readme_example, running_app, settings_for, wait_job_finished
from tests.harness.stack import Stack, new_project_name
from tests.harness.toolbox import big_run, run_tools_script, tiny_run, tool_app

sys.path.insert(0, str(Path(__file__).parent / "standins"))
from ollama_server import FILE_TYPES, read_gguf_header  # noqa: E402

pytestmark = pytest.mark.tools


@pytest.fixture(scope="module")
def env(docker_client, hosttools_image, tmp_path_factory):
    data = tmp_path_factory.mktemp("export") / "data"
    data.mkdir()
    stack = Stack(docker_client, new_project_name(), hosttools_image)
    try:
        run = tiny_run(data, tmp_path_factory.getbasetemp())
        with tool_app(stack, data) as t:
            yield {"data": data, "run": run, "stack": stack, "ollama": t.ollama, "app": t.app, "settings": t.settings,
                   "llamafactory": t.llamafactory, "llamacpp": t.llamacpp}
    finally:
        stack.cleanup()


def export_args(run, *, base="", template="", dtype="f16", quants=("Q4_K_M",), name="", system="", overwrite=False):
    return (run, base, template, dtype, list(quants), name, system, overwrite)


def stream_export(url: str, args: tuple, timeout: float = 400):
    """Submit through gradio_client; returns [(arrival time, log, status)] and the end time."""
    client = Client(url, verbose=False)
    job = client.submit(*args, api_name="/export")
    seen = []
    deadline = time.monotonic() + timeout
    for out in job:
        assert isinstance(out, (tuple, list)) and len(out) == 2, f"unexpected stream item {out!r}"
        log, status = out
        seen.append((time.monotonic(), log, status))
        assert time.monotonic() < deadline, "export did not finish in time"
    end = time.monotonic()
    client.close()
    return seen, end


def files_under(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*") if "tunedeck.db" not in p.name}


SYSTEM = 'Answer in """triple quotes""" if asked.\nSecond line: ünïcödé ✓'


def full_export(env):
    """The module's first full export (run once, by whichever test needs it first: any order works)."""
    if "full" not in env:
        import shutil

        shutil.rmtree(env["data"] / "exports", ignore_errors=True)  # whatever ran before: merge for real
        env["full"] = stream_export(env["app"].url, export_args(env["run"], quants=("Q4_K_M", "Q8_0"),
                                                                name="tiny-test", system=SYSTEM, overwrite=True))
    return env["full"]


def test_full_export_streams_and_produces_verified_models(env):
    system = SYSTEM
    seen, end = full_export(env)
    log, status = seen[-1][1], seen[-1][2]
    assert status["status"] == "succeeded", log[-3000:]

    # Streamed: merge lines reached the client long before the job ended.
    first_merge = next(t for t, text, _ in seen if "[merge] $ llamafactory-cli export" in (text or ""))
    assert end - first_merge > 5, "log lines were not streamed while the tools ran"
    assert any("[convert]" in line and "gguf" in line.lower() for line in log.splitlines())

    # Artifacts: merged model differs from base; GGUF types are what was asked for.
    result = status["result"]
    merged = Path(result["merged_dir"])
    assert (merged / "config.json").is_file() and (merged / "Modelfile").is_file()
    arts = {Path(a["file"]).name: Path(a["file"]) for a in result["artifacts"].values()}
    f16 = next(p for n, p in arts.items() if n.endswith("-f16.gguf"))
    assert FILE_TYPES[read_gguf_header(f16)["metadata"]["general.file_type"]] == "F16"
    for quant in ("Q4_K_M", "Q8_0"):
        path = next(p for n, p in arts.items() if n.endswith(f"-{quant}.gguf"))
        assert FILE_TYPES[read_gguf_header(path)["metadata"]["general.file_type"]] == quant
    assert not list(env["data"].rglob("*.partial"))

    cmp = run_tools_script("compare_logits.py", str(env["data"] / "models" / "tiny-llama"), str(merged), str(f16))
    assert cmp["weight_diff"] > 1e-3, "merging did not change the weights"
    assert cmp["logit_diff"] < 5e-3, cmp

    # Ollama got the training template (as LLaMA-Factory's template defines it), its stop tokens and the
    # system prompt verbatim; TuneDeck's Modelfile beside the GGUF files says the same.
    creates = [r["body"] for r in env["ollama"].requests() if r["path"] == "/api/create"]
    staged = {c["model"] for c in creates if c["model"].startswith("tunedeck-check-")}
    creates = [c for c in creates if c["model"] not in staged]
    assert {c["model"] for c in creates} == {"tiny-test:q4_k_m", "tiny-test:q8_0"}
    # each model was first created under a staging name, checked, and the staging copy deleted
    assert len(staged) == 2
    tags = {m["name"] for m in httpx.get(env["ollama"].url + "/api/tags", timeout=10).json()["models"]}
    assert not {t for t in tags if t.startswith("tunedeck-check-")}
    modelfile = Path(result["modelfile"]).read_text()
    for body in creates:
        assert body["template"] and body["template"] in modelfile
        assert "Human: {{ $m.Content }}</s>" in body["template"]
        assert body["parameters"]["stop"] == ["</s>"]
        assert body["system"] == system
        assert body["files"]["model.gguf"].startswith("sha256:")
    chats = [r for r in env["ollama"].requests() if r["path"] == "/api/chat"]
    assert chats and chats[-1]["prompt"].startswith("System: Answer in")
    verify = result["verify"]
    assert set(verify) == {"tiny-test:q4_k_m", "tiny-test:q8_0"}
    assert all(v["done_reason"] in {"stop", "length"} for v in verify.values())
    # fidelity on fixed text (the toy run records no dataset): the f16 GGUF keeps the merged model's outputs
    fidelity = result["fidelity"]
    assert not fidelity["eval"]["from_run"] and fidelity["gguf"]["agreement"] >= 0.99
    assert set(fidelity["quantized"]) == {"Q4_K_M", "Q8_0"}
    assert fidelity["quantized"]["Q8_0"]["agreement"] > fidelity["quantized"]["Q4_K_M"]["agreement"]
    report = result["quant_report"]
    assert [r["type"] for r in report["rows"]] == ["f16", "Q4_K_M", "Q8_0"]
    assert list(status["stages"]) == ["preflight", "merge", "convert", "imatrix", "quantize", "fidelity", "load",
                                      "verify", "report"]  # fidelity before anything changes in Ollama
    assert status["stages"] == {"preflight": "done", "merge": "done", "convert": "done", "imatrix": "skipped",
                                "quantize": "done", "load": "done", "verify": "done",
                                "fidelity": status["stages"]["fidelity"], "report": "done"}
    # the `default` template puts no BOS before the prompt: the GGUF says not to add one, and the served
    # prompt is training's token for token
    assert read_gguf_header(f16)["metadata"]["tokenizer.ggml.add_bos_token"] is False
    assert "set tokenizer.ggml.add_bos_token = false" in log
    for name, v in verify.items():
        check = v["template_check"]
        assert check["ok"], (name, check)
        for conv in check["conversations"].values():
            assert conv["served_tokens"] == conv["train_tokens"]
    assert status["stages"]["fidelity"] in {"done", "warning"}


def test_second_run_with_same_inputs_reuses_stages(env):
    full_export(env)
    seen, _ = stream_export(env["app"].url, export_args(env["run"], quants=("Q4_K_M", "Q8_0"), name="tiny-test",
                                                        system='Answer in """triple quotes""" if asked.\n'
                                                               "Second line: ünïcödé ✓", overwrite=True))
    log, status = seen[-1][1], seen[-1][2]
    assert status["status"] == "succeeded", log[-2000:]
    assert status["stages"]["merge"] == "reused" and status["stages"]["convert"] == "reused"
    assert status["stages"]["quantize"] == "reused" and status["stages"]["load"] == "reused"
    assert "reused" in log and "$ llamafactory-cli" not in log


def test_existing_name_without_overwrite_is_refused(env):
    full_export(env)  # Ollama holds tiny-test:q8_0
    before = files_under(env["data"])
    seen, _ = stream_export(env["app"].url, export_args(env["run"], quants=("Q4_K_M",), name="tiny-test:q8_0"))
    status = seen[-1][2]
    assert status["status"] == "failed"
    assert "already has a model named 'tiny-test:q8_0'" in status["error"]
    assert files_under(env["data"]) == before


def test_history_survives_restart(env):
    full_export(env)
    stream_export(env["app"].url, export_args(env["run"], quants=("Q4_K_M",), name="tiny-test:q8_0"))  # refused
    stream_export(env["app"].url, export_args(env["run"], quants=("Q4_K_M", "Q8_0"), name="tiny-test",
                                              system=SYSTEM, overwrite=True))
    settings = env["settings"]
    with running_app(settings) as second:
        client = Client(second.url, verbose=False)
        jobs = client.predict(api_name="/history")
        client.close()
    statuses = [j["status"] for j in jobs]
    assert statuses.count("succeeded") >= 2 and "failed" in statuses
    ok = next(j for j in jobs if j["status"] == "succeeded")
    assert ok["result"]["artifacts"] and ok["stages"]["merge"] >= 0


def test_cancel_mid_merge_leaves_no_partial_folder(env):
    client = Client(env["app"].url, verbose=False)
    job = client.submit(*export_args(env["run"], base=str(env["data"] / "models" / "tiny-llama"), template="alpaca",
                                     name="tiny-cancel"), api_name="/export")
    cancelled = False
    for log, status in job:
        if "[merge] $ llamafactory-cli" in (log or "") and not cancelled:
            time.sleep(2)
            partials = list(env["data"].rglob("merged.partial"))
            assert partials, "the merge was not writing into its .partial folder when cancelled"
            client.predict(api_name="/cancel_export")
            cancelled = True
    job.cancel()
    client.close()
    manager = env["app"].runtime.exports
    assert wait_job_finished(manager, 15).status == "cancelled"
    assert not any(p.exists() for p in partials), "the partial folder was left behind"
    assert not list(env["data"].rglob("*.partial"))
    # the tool process inside the container is gone
    ps = env["llamafactory"].exec_run(["ps", "-o", "args"]).output.decode()
    assert "llamafactory-cli" not in ps
    row = manager.history.get(manager.current.id)
    assert row["status"] == "cancelled" and "merge" in row["error"]


def test_converter_failing_midway_cleans_up(env):
    full_export(env)
    # Corrupt the cached merged weights: merge is reused, the real converter then fails on them.
    merged = next(env["data"].glob("exports/*/merged"))
    weights = merged / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[: len(original) // 3])
    try:
        seen, _ = stream_export(env["app"].url, export_args(env["run"], dtype="bf16", quants=(), name="tiny-bf16"))
    finally:
        weights.write_bytes(original)
    log, status = seen[-1][1], seen[-1][2]
    assert status["status"] == "failed" and status["stage"] == "convert", log[-2000:]
    assert "exited with code" in status["error"]
    assert not list(env["data"].rglob("*.partial"))
    assert not list(env["data"].rglob("*-bf16.gguf"))


def test_one_export_at_a_time(env):
    client = Client(env["app"].url, verbose=False)
    first = client.submit(*export_args(env["run"], template="alpaca", name="tiny-one", quants=()),
                          api_name="/export")
    deadline = time.monotonic() + 60
    while env["app"].runtime.exports.current is None or env["app"].runtime.exports.current.request.ollama_name != "tiny-one":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    with pytest.raises(Exception, match="already running"):
        client.predict(*export_args(env["run"], name="tiny-two"), api_name="/export")
    assert client.predict(api_name="/status")["engine_ok"]  # the Services tab stays live (bench/loop.py)
    first.cancel()
    client.predict(api_name="/cancel_export")
    client.close()
    deadline = time.monotonic() + 15
    while not env["app"].runtime.exports.current.finished:
        assert time.monotonic() < deadline
        time.sleep(0.1)


@pytest.mark.parametrize("case", ["quantized_base", "tool_stopped", "ollama_down"])
def test_preflight_refusals_change_nothing(env, case):
    data = env["data"]
    before = files_under(data)
    args = export_args(env["run"], name=f"tiny-{case.replace('_', '-')}")
    settings = env["settings"]
    if case == "quantized_base":
        qbase = data / "models" / "tiny-llama-4bit"
        if not qbase.exists():
            shutil.copytree(data / "models" / "tiny-llama", qbase)
            cfg = json.loads((qbase / "config.json").read_text())
            cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
            (qbase / "config.json").write_text(json.dumps(cfg))
        before = files_under(data)
        args = export_args(env["run"], base=str(qbase), template="alpaca", name="tiny-q")
        expected = "quantized (bitsandbytes 4-bit)"
    elif case == "tool_stopped":
        env["llamacpp"].stop(timeout=1)
        args = export_args(env["run"], template="chatml", name="tiny-stopped")
        expected = "llamacpp container is exited, not running"
    else:
        settings = settings_for(tunedeck_project=settings.project, tunedeck_data_dir=str(data),
                                tunedeck_ollama_url="http://127.0.0.1:9")
        expected = "Ollama is not reachable at http://127.0.0.1:9"
    try:
        if case == "ollama_down":
            with running_app(settings) as app:
                seen, _ = stream_export(app.url, args)
        else:
            seen, _ = stream_export(env["app"].url, args)
    finally:
        if case == "tool_stopped":
            env["llamacpp"].start()
    status = seen[-1][2]
    assert status["status"] == "failed" and status["stage"] == "preflight"
    assert expected in status["error"]
    assert files_under(data) == before


# -- nothing slow on Gradio's event loop (figures: bench/loop.py) --------------------------------
BIG = 1 << 30   # hashed by content: planning takes a while


def test_status_answers_while_an_export_plans_a_large_base(env):
    run = big_run(env["data"], BIG)
    client, status_client = Client(env["app"].url, verbose=False), Client(env["app"].url, verbose=False)
    done, final = threading.Event(), {}

    def export():
        for _log, status in client.submit(*export_args(run, quants=(), name="big", overwrite=True),
                                          api_name="/export"):
            final.update(status)
        done.set()

    threading.Thread(target=export, daemon=True).start()
    latencies = []
    try:
        while not done.is_set():
            t0 = time.monotonic()
            assert status_client.predict(api_name="/status")["engine_ok"]
            latencies.append(time.monotonic() - t0)
    finally:
        done.wait(120)
        status_client.close()
        client.close()
        for folder in ("models/big", "saves/big"):  # other tests pick the newest run
            shutil.rmtree(env["data"] / folder)
    assert final["status"] == "failed" and final["stage"] == "merge", final  # planned, then the shards don't load
    planning = final["stage_seconds"]["preflight"]
    assert planning > 0.3, f"planning took {planning:.2f} s: too quick to tell a blocked loop from a free one"
    assert len(latencies) >= 5, latencies  # /status kept answering while the base was hashed
    assert max(latencies) < final["stage_seconds"]["preflight"], latencies


# -- the README's API script, against the running app -------------------------------------------
def test_readme_api_script_runs(env, tmp_path):
    out = run_readme_example("api-example", tmp_path, TUNEDECK_URL=env["app"].url)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "succeeded ['my-model']" in out.stdout
    import re

    stages = set(re.findall(r"^\s*(\w+)\s+\d+%", out.stdout, re.M))
    assert {"preflight", "report"} <= stages and len(stages) >= 3, stages  # streamed stage by stage


# -- faults -----------------------------------------------------------------------------------------
def _final(seen):
    return seen[-1][1], seen[-1][2]


def test_ollama_error_line_mid_stream_fails_cleanly_and_is_retryable(env):
    env["ollama"].fail_next(create="no space left on device (injected)")
    log, status = _final(stream_export(env["app"].url, export_args(env["run"], name="tiny-retry"))[0])
    assert status["status"] == "failed" and status["stage"] == "load"
    assert "Ollama /api/create failed: no space left on device (injected)" in status["error"]
    assert "tiny-retry:latest" not in [m["name"] for m in httpx.get(env["ollama"].url + "/api/tags").json()["models"]]
    log, status = _final(stream_export(env["app"].url, export_args(env["run"], name="tiny-retry"))[0])
    assert status["status"] == "succeeded", log[-2000:]
    assert status["stages"]["merge"] == "reused"


def test_upload_dropped_midway_fails_cleanly_and_is_retryable(env):
    env["ollama"].fail_next(upload_drop_after=200_000)
    args = export_args(env["run"], dtype="q8_0", quants=(), name="tiny-q8")
    log, status = _final(stream_export(env["app"].url, args)[0])
    assert status["status"] == "failed" and status["stage"] == "load", log[-2000:]
    assert "interrupted" in status["error"] or "dropped" in status["error"]
    log, status = _final(stream_export(env["app"].url, args)[0])
    assert status["status"] == "succeeded", log[-2000:]
    assert status["stages"]["convert"] == "reused"  # the finished GGUF was kept for the retry


def test_tool_container_killed_mid_merge(env):
    client = Client(env["app"].url, verbose=False)
    job = client.submit(*export_args(env["run"], template="vicuna", name="tiny-killed"), api_name="/export")
    killed = False
    status = None
    partials: list[Path] = []
    for log, status in job:
        if not killed and "[merge] $ llamafactory-cli" in (log or ""):
            time.sleep(1.5)
            partials = list(env["data"].rglob("merged.partial"))
            env["llamafactory"].kill()
            killed = True
    client.close()
    try:
        assert killed and status["status"] == "failed" and status["stage"] == "merge"
        assert "container" in status["error"], status["error"]
        assert partials, "the merge was not writing into its .partial folder when killed"
        assert not any(p.exists() for p in partials)
        assert not list(env["data"].rglob("*.partial"))
        row = env["app"].runtime.exports.history.get(status["job_id"])
        assert row["status"] == "failed" and row["error"] == status["error"]
    finally:
        env["llamafactory"].start()


def forget_merges(env) -> None:
    """The next export merges for real (a template chosen by hand no longer gives a fresh merge: a template
    other than the run's own is refused)."""
    for stamp in (env["data"] / "exports").glob("*/.stamps/merge.json"):
        stamp.unlink()


def test_app_killed_mid_export_then_restarted(env):
    import os
    import signal

    s = env["settings"]
    with app_process(s) as (proc, url):
        client = Client(url, verbose=False)
        forget_merges(env)
        job = client.submit(*export_args(env["run"], name="tiny-crash"), api_name="/export")
        job_id = None
        for log, status in job:
            job_id = status["job_id"]
            if "[merge] $ llamafactory-cli" in (log or ""):
                time.sleep(2)
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait(10)
    # the app died: the row is still "running", the tool may still run in its container
    with running_app(s) as app:
        row = app.runtime.exports.history.get(job_id)
        assert row["status"] == "interrupted" and "stopped while this export was running" in row["error"]
        assert not list(env["data"].rglob("*.partial"))
        time.sleep(0.5)
        ps = env["llamafactory"].exec_run(["ps", "-o", "args"]).output.decode()
        assert "llamafactory-cli" not in ps, ps
        seen, _ = stream_export(app.url, export_args(env["run"], quants=(), name="tiny-after-crash"))
        assert seen[-1][2]["status"] == "succeeded"


def test_sigterm_cancels_the_running_export_and_exits_quickly(env):
    """`docker compose stop app` sends SIGTERM: the tool is killed, its partial output removed, the
    history says cancelled, and the app is gone within 5 s."""
    import signal

    s = env["settings"]
    with app_process(s) as (proc, url):
        client = Client(url, verbose=False)
        forget_merges(env)
        job = client.submit(*export_args(env["run"], name="tiny-sigterm"), api_name="/export")
        job_id, partials = None, []
        for log, status in job:
            job_id = status["job_id"]
            if "[merge] $ llamafactory-cli" in (log or ""):
                time.sleep(1.5)
                partials = list(env["data"].rglob("merged.partial"))
                t0 = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                break
        proc.wait(10)
        exited_in = time.monotonic() - t0
    assert exited_in < 5, f"the app took {exited_in:.1f} s to exit"
    assert partials and not any(p.exists() for p in partials)
    ps = env["llamafactory"].exec_run(["ps", "-o", "args"]).output.decode()
    assert "llamafactory-cli" not in ps, ps
    from app.export.history import History

    row = History(s.data_dir / "tunedeck.db").get(job_id)
    assert row["status"] == "cancelled" and "merge" in row["error"]


@pytest.mark.browser
def test_export_tab_in_the_browser(env, page, screenshots):
    import re

    from playwright.sync_api import expect

    page.goto(env["app"].url)
    page.get_by_role("tab", name="Export").click()
    expect(page.locator("#export-run input")).to_have_value(env["run"])
    expect(page.locator("#export-base textarea, #export-base input").first).to_have_value(
        re.compile(r"/models/tiny-llama$"))
    page.locator("#export-name textarea, #export-name input").first.fill("tiny-ui")
    page.locator("#export-start").click()
    log = page.locator("#export-log textarea")
    expect(log).to_have_value(re.compile(r"\[preflight\]"))
    expect(page.locator("#export-progress-bar")).to_have_attribute("data-state", "succeeded", timeout=120_000)
    expect(log).to_have_value(re.compile(r"\[verify\] done_reason="))
    expect(page.locator("#export-stages")).to_contain_text(re.compile(r"verify\s*(done|reused)"))  # any order
    page.screenshot(path=str(screenshots / "export-tab.png"), full_page=True)

    # a second export while idle with a bad name: one clear sentence, nothing starts
    page.locator("#export-name textarea, #export-name input").first.fill("bad name")
    page.locator("#export-start").click()
    expect(page.get_by_text(re.compile("not a valid Ollama model name")).first).to_be_visible()

    # Ollama models: delete asks first
    page.get_by_text("Ollama models").click()
    page.locator("#ollama-refresh").click()
    expect(page.locator("#ollama-models")).to_contain_text("tiny-ui:latest")
    page.locator("#ollama-delete-name textarea, #ollama-delete-name input").first.fill("tiny-ui")
    page.locator("#ollama-delete").click()
    expect(page.locator("#ollama-confirm-text")).to_contain_text("Really delete tiny-ui?")
    names = [m["name"] for m in httpx.get(env["ollama"].url + "/api/tags").json()["models"]]
    assert "tiny-ui:latest" in names  # nothing deleted before confirming
    page.locator("#ollama-confirm").click()
    expect(page.locator("#ollama-models")).not_to_contain_text("tiny-ui:latest")
    names = [m["name"] for m in httpx.get(env["ollama"].url + "/api/tags").json()["models"]]
    assert "tiny-ui:latest" not in names


# -- links planted by code in a tool container (issue 20) -------------------------------------------
LINK_SENTENCE = "is a symbolic link; TuneDeck does not write through links in the data directory."


def plant(env, script: str) -> None:
    """Run `script` as root in the LLaMA-Factory container, where user code runs (trust_remote_code)."""
    out = env["llamafactory"].exec_run(["sh", "-c", "set -e; " + script])
    assert out.exit_code == 0, out.output.decode()


def outside_files(outside: Path) -> dict:
    return {str(p.relative_to(outside)): p.read_text() for p in outside.rglob("*") if p.is_file()}


def test_links_planted_in_an_export_folder_never_make_the_app_write_outside(env, tmp_path):
    seen, _ = full_export(env)
    work = Path(seen[-1][2]["result"]["workdir"])
    gguf = next(n for n in seen[-1][2]["result"]["artifacts"] if n.endswith("-f16.gguf"))
    q4 = gguf.replace("-f16.gguf", "-Q4_K_M.gguf")
    outside = tmp_path / "outside"  # on the host, beside the data dir: the app (run here as root) could write it
    outside.mkdir()
    (outside / "victim").write_text("keep")
    before = outside_files(outside)
    # files, `.partial` names and a whole folder: each one a name the next export writes
    plant(env, f"cd {work}; for n in merge.yaml Modelfile .stamps/merge.json; do rm -f $n; ln -s {outside}/victim $n; "
               f"done; ln -sfn {outside}/made-f16 {gguf}.partial; ln -sfn {outside}/victim {q4}.partial; "
               f"rm -rf merged.partial; ln -sfn {outside} merged.partial")
    log, status = _final(stream_export(env["app"].url, export_args(env["run"], name="tiny-links", overwrite=True))[0])
    assert status["status"] == "succeeded", log[-3000:]
    assert status["stages"]["merge"] == "done" and status["stages"]["convert"] == "done"  # really rewritten
    assert outside_files(outside) == before and sorted(p.name for p in outside.iterdir()) == ["victim"]
    for name in ("merge.yaml", "Modelfile", ".stamps/merge.json", "merged", gguf, q4):
        assert (work / name).exists() and not (work / name).is_symlink(), name
    assert not list(env["data"].rglob("*.partial"))

    # a linked folder in the way: the export stops with one sentence, and nothing is written there
    def export_while_linked(link: str, restore: str) -> tuple[str, dict]:
        plant(env, link)
        try:
            return _final(stream_export(env["app"].url, export_args(env["run"], name="tiny-links",
                                                                    overwrite=True))[0])
        finally:
            plant(env, restore)

    log, status = export_while_linked(f"cd {work}; mv eval eval.kept; ln -s {outside} eval",
                                      f"cd {work}; rm eval; mv eval.kept eval")
    assert status["status"] == "failed" and status["stage"] == "fidelity", log[-2000:]
    assert status["error"] == f"fidelity failed: exports/{work.name}/eval {LINK_SENTENCE}"
    # the whole work folder replaced by a link
    log, status = export_while_linked(f"mv {work} {work}.kept; ln -s {outside} {work}",
                                      f"rm {work}; mv {work}.kept {work}")
    assert status["status"] == "failed" and status["stage"] == "merge", log[-2000:]
    assert status["error"] == f"merge failed: exports/{work.name} {LINK_SENTENCE}"
    assert outside_files(outside) == before and sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert not list(env["data"].rglob("*.partial"))


# -- a cancel whenever it lands (issue 20) ----------------------------------------------------------
IDLE = ("/sbin/docker-init", "sleep 86400", "ps -o args")


def tool_processes(env) -> list[str]:
    """What runs in the tool containers besides their idle command."""
    out = []
    for container in (env["llamafactory"], env["llamacpp"]):
        ps = container.exec_run(["ps", "-o", "args"]).output.decode().splitlines()[1:]
        out += [p for p in ps if p.strip() and not p.startswith(IDLE) and p.strip() != "args"]
    return out


class ExecRecorder:
    """The app's real gateway, recording which stage started each tool; with `cancel_in` set, the export is
    cancelled right after that stage's first tool starts: before anyone has read its first line (the PID
    its wrapper prints)."""

    def __init__(self, gateway, manager) -> None:
        self.gateway, self.manager, self.cancel_in, self.execs = gateway, manager, None, []

    def __getattr__(self, name):
        return getattr(self.gateway, name)

    def exec_tool(self, command):
        handle = self.gateway.exec_tool(command)
        stage = self.manager.current.stage
        self.execs.append((stage, handle))
        if stage == self.cancel_in:
            self.cancel_in = None
            self.manager.cancel()
        return handle


def test_a_cancel_at_every_stage_boundary_and_before_a_tool_pid_leaves_nothing_running(env):
    from app.export.engine import PIPELINE, STAGES
    from app.export.plan import build_request

    full_export(env)  # the stages before each boundary are then reused: each case costs seconds
    manager = env["app"].runtime.exports
    request = lambda: build_request(env["data"], run=env["run"], quant_types=("Q4_K_M",),  # noqa: E731
                                    ollama_name="tiny-cancel-at", overwrite=True)

    def at_start(stage: str):
        def wrap(name, progress, fn):
            def cancelled_first(ctx):
                manager.cancel(ctx.job.id)  # the cancel lands before the stage does anything
                fn(ctx)
            return (name, progress, cancelled_first if name == stage else fn)
        return tuple(wrap(*step) for step in PIPELINE)

    def finished_clean(job, stage: str) -> None:
        assert job.done_event.wait(120), f"the export cancelled at {stage} did not end"
        assert job.status == "cancelled" and job.error == f"Cancelled during {stage}.", (stage, job.error)
        deadline = time.monotonic() + 5
        while tool_processes(env) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not tool_processes(env), (stage, tool_processes(env))
        assert not list(env["data"].rglob("*.partial")), stage

    tools = manager.tools
    gateway = tools.gateway
    stamps = next((env["data"] / "exports").glob("*/merged")).parent / ".stamps"
    kept = {p.name: p.read_bytes() for p in stamps.iterdir()}
    tools.gateway = recorder = ExecRecorder(gateway, manager)
    try:
        for stage in STAGES:
            recorder.execs.clear()
            finished_clean(manager.start(request(), at_start(stage)), stage)
            assert not [s for s, _ in recorder.execs if s == stage], f"a tool was started after the cancel in {stage}"
        # before the PID is read: merge (after its cleanup of a stale partial) and convert run their tools
        for stage in ("convert", "merge"):
            (stamps / f"{stage}.json").unlink()  # the stage runs its tool for real
            if stage == "merge":
                (stamps.parent / "merged.partial").mkdir()  # a stale partial the merge cleans up first
            recorder.execs.clear()
            recorder.cancel_in = stage
            job = manager.start(request())
            finished_clean(job, stage)
            started = [h for s, h in recorder.execs if s == stage]
            assert len(started) == 1, started  # its tool was started, once,
            assert gateway.exec_exit_code(started[0].exec_id) in (143, 137)  # and killed, not left to finish
    finally:
        tools.gateway = gateway
        for name, content in kept.items():  # the next tests reuse the stages again
            (stamps / name).write_bytes(content)
