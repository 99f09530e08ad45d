"""Storage with the real parts: real exports of a zoo run (real LLaMA-Factory and llama.cpp in containers,
the Ollama stand-in), deletions through the public API and the Ollama stand-in's `DELETE /api/delete`,
free space measured by `df` in the Ollama container, and the Storage tab in a browser.

Two exports in all: the first, and the re-export after its merged weights were deleted.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from gradio_client import Client

from app.storage.rules import format_bytes
from app.ui.export_views import verdict_markdown
from tests.harness.stack import Stack, new_project_name
from tests.harness.toolbox import tool_app
from tests.harness.zoo import install

pytestmark = pytest.mark.tools
RUN = "llama2/lora/cli"
NAME = "st-cli"
ARGS = (RUN, "", "", "f16", [], NAME, "", True, False, False)  # f16 only, no quantization, no report


def du(path: Path) -> int:
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout.split()[0])


@pytest.fixture(scope="module")
def env(docker_client, hosttools_image, tmp_path_factory):
    data = tmp_path_factory.mktemp("storage") / "data"
    install(data, ("llama2",))
    stack = Stack(docker_client, new_project_name(), hosttools_image)
    try:
        with tool_app(stack, data) as tools:
            yield {"data": data, "app": tools.app, "ollama": tools.ollama, "docker": docker_client}
    finally:
        stack.cleanup()


def client(env) -> Client:
    return Client(env["app"].url, verbose=False)


def run_export(env, seen: list | None = None, during=None):
    """The export through /export; `during(log)` is called with each streamed log until it returns True."""
    c = client(env)
    final, done = None, during is None
    for final in c.submit(*ARGS, api_name="/export"):
        if not done:
            done = bool(during(final[0] or ""))
    c.close()
    assert done, "the export ended before the check could run"
    return final[1], final[0]


def exported(env) -> dict:
    if "first" not in env:
        status, log = run_export(env)
        assert status["status"] == "succeeded", log[-3000:]
        assert status["result"]["fidelity"]["verdict"] == "ok", status["result"]["fidelity"]
        env["first"] = status
    return env["first"]


def items(report: dict) -> dict[str, dict]:
    return {i["name"]: i for i in report["items"]}


def test_merged_weights_deleted_then_export_again_rebuilds_them(env):
    status = exported(env)
    data = env["data"]
    merged = Path(status["result"]["merged_dir"])
    rel = merged.relative_to(data).as_posix()
    c = client(env)
    report = c.predict(api_name="/storage")
    on_disk = [i for i in report["items"] if i["kind"] != "ollama"]  # Ollama's models live in its own volume
    assert report["total_bytes"] == du(data) and sum(i["bytes"] for i in on_disk) == du(data)
    item = items(report)[rel]
    gguf = status["result"]["fidelity"]["gguf"]["file"]
    assert item["kind"] == "merged" and item["safe"] and item["deletable"]
    assert item["reason"] == (f"its GGUF {gguf} passed fidelity (export job {status['job_id']}); a re-export "
                              "merges again")
    assert item["frees"] == du(merged)
    gguf_item = items(report)[f"{Path(status['result']['workdir']).relative_to(data).as_posix()}/{gguf}"]
    assert gguf_item["kind"] == "gguf" and not gguf_item["deletable"]

    asked = c.predict([rel], False, api_name="/storage_delete")
    assert merged.is_dir() and not asked["deleted"] and asked["bytes"] == item["frees"]
    assert f"({item['frees']:,} bytes) needs confirmation" in asked["message"]
    done = c.predict([rel], True, api_name="/storage_delete")
    assert done["deleted"] == [rel] and done["bytes"] == item["frees"] and not merged.exists()
    row = next(j for j in c.predict(api_name="/history") if j["id"] == status["job_id"])
    assert row["result"]["deleted"][rel]["what"] == "merged"
    assert row["result"]["deleted"][rel]["bytes"] == item["frees"]
    assert f"**Deleted since (Storage):** {rel} (merged, " in verdict_markdown(row["result"])  # the history's view

    partial = rel + ".partial"
    refused = {}

    def while_merging(log: str) -> bool:
        if "[merge] $ llamafactory-cli" not in log:
            return False
        listing = items(c.predict(api_name="/storage"))
        refused["listed"] = listing[partial]
        with pytest.raises(Exception) as err:
            c.predict([partial], True, api_name="/storage_delete")
        refused["error"] = str(err.value)
        refused["exists"] = (data / partial).is_dir()
        return True

    again, log = run_export(env, during=while_merging)
    c.close()
    running = again["job_id"]
    assert refused["listed"]["kind"] == "partial" and not refused["listed"]["deletable"]
    assert refused["listed"]["reason"] == f"being written by the running export (job {running})"
    assert f"{partial} cannot be deleted: being written by the running export (job {running})" in refused["error"]
    assert refused["exists"]
    assert again["status"] == "succeeded", log[-3000:]
    assert again["stages"]["merge"] == "done" and again["stages"]["convert"] == "done"  # rebuilt, not reused
    assert "[merge] reused" not in log and (merged / "config.json").is_file()


def test_ollama_models_are_sized_and_deleted_through_its_api(env):
    exported(env)
    c = client(env)
    report = c.predict(api_name="/storage")
    tags = {m["name"]: m["size"] for m in httpx.get(env["ollama"].url + "/api/tags", timeout=10).json()["models"]}
    listed = {i["name"].removeprefix("ollama:"): i for i in report["items"] if i["kind"] == "ollama"}
    assert {n: i["bytes"] for n, i in listed.items()} == tags and f"{NAME}:latest" in tags
    ours = listed[f"{NAME}:latest"]
    assert ours["deletable"] and not ours["safe"] and ours["reason"].startswith("made by export job ")
    # Ollama's volume, measured by df inside the Ollama container: the stand-in keeps its store on the
    # container's own filesystem, which lives on Docker's root filesystem
    space = report["free"]["ollama"]
    root = os.statvfs(env["docker"].info()["DockerRootDir"])
    assert space["where"] == "ollama:/tmp" and space["total_bytes"] == root.f_blocks * root.f_frsize, space
    assert 0 < space["free_bytes"] <= space["total_bytes"]

    done = c.predict([f"ollama:{NAME}:latest"], True, api_name="/storage_delete")
    assert done["deleted"] == [f"ollama:{NAME}:latest"] and done["ollama_bytes"] == tags[f"{NAME}:latest"]
    left = {m["name"] for m in httpx.get(env["ollama"].url + "/api/tags", timeout=10).json()["models"]}
    assert f"{NAME}:latest" not in left and left == set(tags) - {f"{NAME}:latest"}
    rows = [j for j in c.predict(api_name="/history") if f"ollama:{NAME}:latest" in (j["result"].get("deleted") or {})]
    assert rows and all(NAME in j["result"]["ollama_models"] for j in rows)
    assert env["app"].runtime.exports.history.last_loaded_key(NAME) is None  # the next export loads it again
    with pytest.raises(Exception, match=f"ollama:{NAME}:latest is not something TuneDeck can delete"):
        c.predict([f"ollama:{NAME}:latest"], True, api_name="/storage_delete")
    c.close()


def huge_base(data: Path) -> str:
    """A run on a base whose weights' header claims 10^12 parameters (a few bytes on disk): the export's
    disk estimate asks for terabytes."""
    base = data / "models" / "huge"
    base.mkdir(parents=True, exist_ok=True)
    for f in (data / "models" / "llama2").iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            shutil.copy(f, base / f.name)
    header = json.dumps({"w": {"dtype": "F32", "shape": [1_000_000, 1_000_000], "data_offsets": [0, 0]}}).encode()
    (base / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    run = data / "saves" / "huge" / "lora" / "run"
    # the run exported first, on the new base: the same tokenizer files, so its template inference is reused
    shutil.copytree(data / "saves" / RUN, run)
    path = run / "adapter_config.json"
    path.write_text(path.read_text().replace(str(data / "models" / "llama2"), str(base)))
    return "huge/lora/run"


def test_not_enough_disk_says_what_could_be_freed(env):
    data = env["data"]
    stray = data / "exports" / "stray-folder"
    stray.mkdir(parents=True)
    (stray / "old.gguf").write_bytes(b"\0" * (1 << 20))
    exported(env)
    run = huge_base(data)
    c = client(env)
    try:
        safe = c.predict(api_name="/storage")["safe"]
        assert safe["bytes"] >= 1 << 20 and "1 export folder(s) no history row knows 1.0 MiB" in safe["summary"]
        final = None
        for final in c.submit(run, "", "", "f16", [], "st-huge", "", True, False, False, api_name="/export"):
            pass
        status = final[1]
        assert status["status"] == "failed" and status["stage"] == "preflight", final[0][-2000:]
        assert "Not enough free disk in" in status["error"]
        assert f" The Storage tab can free {safe['summary']} safely (not enough on its own: " in status["error"]
        assert status["error"].endswith(" more is needed).")
    finally:
        c.close()
        for p in (stray, data / "models" / "huge", data / "saves" / "huge"):
            shutil.rmtree(p, ignore_errors=True)


@pytest.mark.browser
def test_storage_tab_deletes_after_a_confirmation_naming_the_bytes(env, page, screenshots):
    import re

    from playwright.sync_api import expect

    from tests.harness.appserver import running_app

    data = env["data"]
    # the low-disk banner: the same data dir, a threshold above what is free
    settings = replace(env["app"].runtime.settings, disk_warn_gb=1 << 19)
    with running_app(settings) as warned:
        page.goto(warned.url)
        banner = page.locator("#disk-banner")
        expect(banner).to_contain_text(re.compile(r"Low disk: [0-9.]+ GiB free on the data directory \(" +
                                                  re.escape(str(data)) + r"\), under 524288 GiB\. See the Storage tab"))
        page.get_by_role("tab", name="Storage").click()  # a scan: the banner then names what is safe to delete
        expect(page.locator("#storage-progress-state")).to_have_attribute("data-state", "done", timeout=30_000)
        safe = warned.runtime.storage.last.safe_bytes()
        expect(banner).to_contain_text(f"The Storage tab lists {format_bytes(safe)} that is safe to delete.",
                                       timeout=15_000)

    stray = data / "exports" / "stray-ui"
    stray.mkdir(parents=True)
    (stray / "old.gguf").write_bytes(b"\0" * 300_000)
    size = du(stray)
    page.goto(env["app"].url)
    page.get_by_role("tab", name="Storage").click()
    expect(page.locator("#storage-progress-state")).to_have_attribute("data-state", "done", timeout=30_000)
    expect(page.locator("#storage-items")).to_contain_text("exports/stray-ui")
    expect(page.locator("#storage-summary")).to_contain_text("Safe to delete:")
    choose = page.locator("#storage-choose input")
    choose.click()
    choose.fill("exports/stray-ui")
    expect(page.get_by_role("option", name="exports/stray-ui")).to_be_visible()
    page.keyboard.press("Enter")
    page.locator("#storage-delete").click()
    confirm = page.locator("#storage-confirm-text")
    expect(confirm).to_contain_text(f"freeing {format_bytes(size)} ({size:,} bytes)")
    assert stray.is_dir(), "nothing is deleted before the confirmation"
    page.screenshot(path=str(screenshots / "storage-tab.png"), full_page=True)
    page.locator("#storage-confirm").click()
    expect(page.locator("#storage-result")).to_contain_text(re.compile(r"Deleted 1 item\(s\) from the data directory"))
    expect(page.locator("#storage-items")).not_to_contain_text("exports/stray-ui", timeout=30_000)
    assert not stray.exists()
