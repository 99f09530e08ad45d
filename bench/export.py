"""bench/export: a full export of the tiny model through TuneDeck's API (gradio_client), divided
by the same tool commands run by hand (docker exec + Ollama HTTP calls), in one run. Target <= 1.05.

Both sides run the same steps: merge (llamafactory-cli export), convert (f16), quantize
(Q4_K_M), upload + create in Ollama, one verification chat. TuneDeck then also checks the chat
format and the fidelity (which nothing by hand does): the ratio compares its stages up to the
load (preflight, merge, convert, quantize, load), less the LLaMA-Factory helper run in preflight
that reads the template and training's chat format for those checks, the served-prompt check and the
staging model (`checks_s`, from `result.check_seconds`), with
the hand-run steps; the whole export's time is reported beside it. After one warm-up each, the two sides alternate three times; the
medians are compared.
Run: python bench/export.py
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
from _common import new_stack, report

from app.ollama import file_digest
from gradio_client import Client
from tests.harness.appserver import running_app, settings_for
from tests.harness.toolbox import start_llamacpp, start_llamafactory, start_ollama, tiny_run


def by_hand(data: Path, lf, cpp, ollama_url: str, run: str, tag: str) -> float:
    out = data / "by-hand" / tag
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t0 = time.monotonic()
    (out / "merge.yaml").write_text(
        f"model_name_or_path: {data}/models/tiny-llama\nadapter_name_or_path: {data}/saves/{run}\n"
        f"template: default\nfinetuning_type: lora\ntrust_remote_code: true\nexport_dir: {out}/merged\n"
        "export_size: 5\nexport_device: cpu\nexport_legacy_format: false\n")
    for container, argv in (
        (lf, ["llamafactory-cli", "export", str(out / "merge.yaml")]),
        (cpp, ["python3", "/app/convert_hf_to_gguf.py", str(out / "merged"), "--outtype", "f16", "--outfile",
               str(out / "m-f16.gguf")]),
        (cpp, ["/app/llama-quantize", str(out / "m-f16.gguf"), str(out / "m-Q4_K_M.gguf"), "Q4_K_M"]),
    ):
        subprocess.run(["docker", "exec", container.id, *argv], check=True, capture_output=True)
    gguf = out / "m-Q4_K_M.gguf"
    digest = file_digest(gguf)
    with httpx.Client(base_url=ollama_url, timeout=600) as c:
        with open(gguf, "rb") as f:
            c.post(f"/api/blobs/{digest}", content=f).raise_for_status()
        modelfile = (out / "merged" / "Modelfile").read_text()
        template = modelfile.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
        body = {"model": f"byhand-{tag}", "files": {"model.gguf": digest}, "template": template,
                "parameters": {"stop": ["</s>"], "num_ctx": 4096}, "stream": True}
        with c.stream("POST", "/api/create", json=body) as r:
            lines = [json.loads(line) for line in r.iter_lines() if line]
        assert lines[-1]["status"] == "success", lines
        chat = {"model": f"byhand-{tag}", "messages": [{"role": "user", "content": "hi"}], "stream": False,
                "options": {"num_predict": 48}}
        c.post("/api/chat", json=chat).raise_for_status()
    return time.monotonic() - t0


def through_tunedeck(app_url: str, data: Path, run: str, tag: str) -> float:
    shutil.rmtree(data / "exports", ignore_errors=True)  # no reuse: every stage runs
    client = Client(app_url, verbose=False)
    t0 = time.monotonic()
    job = client.submit(run, "", "", "f16", ["Q4_K_M"], f"tunedeck-{tag}", "", False, False, False,
                        api_name="/export")
    status = None
    for _log, status in job:
        pass
    elapsed = time.monotonic() - t0
    client.close()
    assert status and status["status"] == "succeeded", status
    core = sum(status["stage_seconds"].get(s, 0) for s in ("preflight", "merge", "convert", "quantize", "load"))
    helper = sum(status["result"].get("check_seconds", {}).values())  # template helper, prompt check, staging
    return core - helper, elapsed, helper


def main() -> None:
    stack = new_stack()
    data = Path(tempfile.mkdtemp(prefix="td-bench-export-")) / "data"
    data.mkdir()
    try:
        run = tiny_run(data, data.parent)
        lf, cpp = start_llamafactory(stack, data), start_llamacpp(stack, data)
        ollama = start_ollama(stack)
        settings = settings_for(tunedeck_project=stack.project, tunedeck_data_dir=str(data),
                                tunedeck_ollama_url=ollama.url)
        with running_app(settings) as app:
            by_hand(data, lf, cpp, ollama.url, run, "warm")
            through_tunedeck(app.url, data, run, "warm")
            hands, ours = [], []
            for i in range(3):
                hands.append(by_hand(data, lf, cpp, ollama.url, run, f"run{i}"))
                ours.append(through_tunedeck(app.url, data, run, f"run{i}"))
        hand, mine = statistics.median(hands), statistics.median(o[0] for o in ours)
        whole = statistics.median(o[1] for o in ours)
        report("export", by_hand_s=round(hand, 2), tunedeck_core_s=round(mine, 2), ratio=round(mine / hand, 3),
               checks_s=round(statistics.median(o[2] for o in ours), 2),
               tunedeck_whole_export_s=round(whole, 2),
               samples="/".join(f"{h:.1f}:{o[0]:.1f}" for h, o in zip(hands, ours)))
    finally:
        stack.cleanup()
        shutil.rmtree(data.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
