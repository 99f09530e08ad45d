"""The training queue on the real toolchain: real `llamafactory-cli train` runs of the zoo's llama2 model in
the LLaMA-Factory container, started by TuneDeck through its public API, in order, one at a time on this
CPU-only host; a cancel mid-training, a SIGKILL and restart of the app while a trainer runs, a resume from
a checkpoint, an export when done."""

from __future__ import annotations

import signal

import httpx
import pytest
from gradio_client import Client
from playwright.sync_api import expect

from tests.harness import zoo
from tests.harness.appserver import app_process, running_app, settings_for
from tests.harness.parts import wait_for
from tests.harness.toolbox import run_tools_script, start_llamacpp, start_llamafactory, start_ollama
from tests.harness.training import jobs_by_id, log_steps, train_yaml, trainer_processes, wait_jobs

pytestmark = pytest.mark.tools
ENDED = ("succeeded", "failed", "cancelled")


def submit(client, config: str, priority: int = 0, export: dict | None = None) -> dict:
    return client.predict(config, "all", "local", priority, None, export, api_name="/train")


def queue_ids(client) -> list[str]:
    return [j["id"] for j in client.predict(api_name="/train_queue") if j["state"] in ("running", "queued")]


def submit_in_browser(page, url: str, config: str) -> str:
    """The Train tab: paste the YAML, queue it; returns the job id the page names."""
    page.goto(url)
    page.get_by_role("tab", name="Train", exact=True).click()
    editor = page.locator("#train-config .cm-content")
    editor.click()
    editor.fill(config)
    page.locator("#train-submit").click()
    expect(page.locator("#train-result")).to_contain_text("Queued as job", timeout=120_000)
    job_id = page.locator("#train-result strong").first.inner_text()
    expect(page.locator("#train-queue")).to_contain_text("llama2/lora/qa", timeout=30_000)
    return job_id


def test_queue_orders_cancels_survives_a_kill_resumes_and_exports(stack, tmp_path, page):
    data = tmp_path / "data"
    zoo.install(data, ("llama2",))
    lf = start_llamafactory(stack, data)
    start_llamacpp(stack, data)
    ollama = start_ollama(stack)
    settings = settings_for(tunedeck_project=stack.project, tunedeck_data_dir=str(data),
                            tunedeck_ollama_url=ollama.url)
    saves = data / "saves" / "llama2" / "lora"

    with app_process(settings) as (proc, url):
        client = Client(url, verbose=False)
        with pytest.raises(Exception, match="Dataset 'nope' is not in"):
            submit(client, train_yaml(data, "bad", 10).replace("dataset: stop_qa", "dataset: nope"))
        with pytest.raises(Exception, match="LLaMA-Factory refuses this config: .*lora_rnak"):
            submit(client, train_yaml(data, "typo", 10, lora_rnak=4))  # its own parser: an unknown key
        a_id = submit_in_browser(page, url, train_yaml(data, "qa", 60, save_steps=10))
        a = jobs_by_id(client)[a_id]
        b = submit(client, train_yaml(data, "qb", 20), export={"quant_types": [], "ollama_name": "qb-bot"})
        c = submit(client, train_yaml(data, "qc", 80), priority=5)  # jumps ahead of B; runs through the restart
        assert b["state"] == c["state"] == "queued"
        jobs = wait_jobs(client, lambda j: j[a["id"]]["state"] == "running", 60, "A running")
        assert queue_ids(client) == [a["id"], c["id"], b["id"]]  # one at a time on a host without GPUs
        page.get_by_role("tab", name="Runs", exact=True).click()  # queued jobs show in Runs before they write
        expect(page.locator("#runs-table")).to_contain_text("queued (#2)", timeout=30_000)
        wait_for(lambda: (saves / "qa" / "checkpoint-10").is_dir(), 240, 0.3, "A's checkpoint-10")
        client.predict(a["id"], "cancel", api_name="/train_control")
        wait_jobs(client, lambda j: j[a["id"]]["state"] == "cancelled", 60, "A cancelled")
        assert not [p for p in trainer_processes(lf) if a["id"] in p], "A's trainer outlived its cancel"
        cancelled_steps = log_steps(saves / "qa")
        assert cancelled_steps and 10 <= max(cancelled_steps) < 60
        last = max(int(p.name.split("-")[1]) for p in (saves / "qa").glob("checkpoint-*"))
        jobs = wait_jobs(client, lambda j: j[c["id"]]["state"] == "running", 60, "C started after A")
        d = submit(client, train_yaml(data, "qd", 5))
        client.predict(d["id"], "up", api_name="/train_control")  # D before B, taking B's priority
        order = queue_ids(client)
        assert order == [c["id"], d["id"], b["id"]]
        running_c = jobs_by_id(client)[c["id"]]
        assert running_c["state"] == "running", "C ended before the restart: make it longer"
        client.close()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    assert [p for p in trainer_processes(lf) if c["id"] in p], "C's trainer did not outlive the app"
    with app_process(settings) as (proc, url):
        client = Client(url, verbose=False)
        assert queue_ids(client)[1:] == order[1:]  # C may have finished while the app was away
        jobs = jobs_by_id(client)
        assert jobs[c["id"]]["started"] == running_c["started"] and jobs[a["id"]]["state"] == "cancelled"
        resumed = client.predict(a["id"], "resume", api_name="/train_control")
        assert resumed["state"] == "queued" and resumed["attempt"] == 2
        assert resumed["resume_from"].endswith(f"checkpoint-{last}")
        ids = (a["id"], b["id"], c["id"], d["id"])
        jobs = wait_jobs(client, lambda j: all(j[x]["state"] in ENDED for x in ids), 600, "every job ended")
        assert [jobs[x]["state"] for x in ids] == ["succeeded"] * 4, {x: jobs[x]["error"] for x in ids}
        # re-attached to C, then the queue's order: D, B, and A resumed last
        starts = sorted((jobs[x]["started"], x) for x in ids)
        assert [s[1] for s in starts] == [c["id"], d["id"], b["id"], a["id"]]
        steps = log_steps(saves / "qa")
        resumed_steps = steps[len(cancelled_steps):]
        assert resumed_steps and resumed_steps[0] > last and resumed_steps[-1] == 60, (cancelled_steps, steps)
        log_a = client.predict(a["id"], False, api_name="/train_log")
        assert f"attempt 2, resuming from checkpoint-{last}" in log_a and "attempt 2 succeeded" in log_a
        runs = {r["name"]: r for r in client.predict(api_name="/training_runs")}
        assert [runs[f"llama2/lora/{r}"]["status"] for r in ("qa", "qb", "qc", "qd")] == ["finished"] * 4
        # B was exported when it finished, with the settings saved with its job
        export_id = wait_for(lambda: jobs_by_id(client)[b["id"]]["export_job"], 60, 0.5, "B's export started")
        history: dict = {}

        def export_done():
            history.update({h["id"]: h for h in client.predict(api_name="/history")})
            return history.get(export_id, {}).get("status") in ("succeeded", "failed")

        wait_for(export_done, 300, 1.0, "B's export finished")
        assert history[export_id]["status"] == "succeeded", history[export_id].get("error")
        models = httpx.get(ollama.url + "/api/tags", timeout=10).json()["models"]
        assert "qb-bot:latest" in [m["name"] for m in models]
        assert trainer_processes(lf) == []
        gpus = client.predict(api_name="/gpus")
        assert gpus["gpus"] == [] and gpus["note"].startswith("No GPU: nvidia-smi is not available")
        client.close()
        # "Train again" from the Runs tab: the run's arguments (as TuneDeck wrote them) with a fresh output_dir
        page.goto(url)
        page.get_by_role("tab", name="Runs", exact=True).click()
        page.locator("#runs-select input").click()
        page.locator("#runs-select input").fill("llama2/lora/qb")
        page.get_by_role("option", name="llama2/lora/qb", exact=True).click()
        page.locator("#runs-again").click()
        expect(page.locator("#train-config")).to_contain_text(f"output_dir: {saves / 'qb-again-2'}", timeout=20_000)
        expect(page.locator("#train-config")).to_contain_text("max_steps: 20")


def test_llama_board_saved_arguments_become_a_queued_training(stack, tmp_path, page):
    """LLaMA Board's "Save arguments" file (written by LLaMA Board's own code) is turned into the training it
    would launch, by LLaMA Board's own code in its container, then accepted by LLaMA-Factory's parser and
    queued (the queue's own runs are the other test's)."""
    data = tmp_path / "data"
    zoo.install(data, ("llama2",))
    start_llamafactory(stack, data)
    saved = run_tools_script("save_board_args.py", str(data), "qa-board.yaml", "Llama-2-7B",
                             str(data / "models" / "llama2"), "stop_qa", "llama2", "5000")["saved"]
    assert saved == str(data / "llamaboard_config" / "qa-board.yaml")
    settings = settings_for(tunedeck_project=stack.project, tunedeck_data_dir=str(data))
    with running_app(settings) as app:
        page.goto(app.url)
        page.get_by_role("tab", name="Train", exact=True).click()
        page.locator("#train-board input").click()
        page.get_by_role("option", name="qa-board.yaml").click()
        config = page.locator("#train-config")
        expect(config).to_contain_text("output_dir: saves/Llama-2-7B/lora/qa-board-", timeout=120_000)
        expect(config).to_contain_text(f"model_name_or_path: {data / 'models' / 'llama2'}")
        expect(config).to_contain_text("max_steps: 5000")
        page.locator("#train-submit").click()
        expect(page.locator("#train-result")).to_contain_text("Queued as job", timeout=120_000)
        job_id = page.locator("#train-result strong").first.inner_text()
        client = Client(app.url, verbose=False)
        job = jobs_by_id(client)[job_id]
        assert job["run"].startswith("Llama-2-7B/lora/qa-board-") and job["source"] == "yaml"
        client.predict(job_id, "cancel", api_name="/train_control")
        jobs = wait_jobs(client, lambda j: j[job_id]["state"] in ENDED, 60, "the LLaMA Board job cancelled")
        assert jobs[job_id]["state"] == "cancelled", jobs[job_id]["error"]
        client.close()
