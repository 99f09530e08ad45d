"""Nothing slow runs on Gradio's event loop: while an export plans a large base model (hashing
every file of it), the Services tab's /status keeps answering. (Figures: bench/loop.py.)"""

from __future__ import annotations

import json
import struct
import threading
import time

from gradio_client import Client

from tests.harness.appserver import running_app, settings_for

SIZE = 768 << 20   # hashed by content in 60 MiB files: seconds of work for the planner
SHARD = 60 << 20


def big_run(data) -> None:
    base = data / "models" / "big"
    base.mkdir(parents=True)
    (base / "config.json").write_text(json.dumps({"hidden_size": 256, "vocab_size": 1000}))
    block = bytes(range(256)) * 4096
    for i in range(SIZE // SHARD):
        with open(base / f"model-{i:05d}.safetensors", "wb") as f:
            for _ in range(SHARD // len(block)):
                f.write(block)
    run = data / "saves" / "big" / "lora" / "run"
    run.mkdir(parents=True)
    (run / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    header = json.dumps({"__metadata__": {}}).encode()
    (run / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    (run / "training_args.yaml").write_text(f"model_name_or_path: {base}\ntemplate: default\n")


def test_status_answers_while_an_export_plans_a_large_base(stack, data_dir):
    big_run(data_dir)
    settings = settings_for(tunedeck_project=stack.project, tunedeck_data_dir=str(data_dir))
    with running_app(settings) as app:
        client = Client(app.url, verbose=False)
        done = threading.Event()
        final = {}

        def export():
            for _log, status in client.submit("big/lora/run", "", "", "f16", [], "big", "", True,
                                              api_name="/export"):
                final.update(status)
            done.set()

        threading.Thread(target=export, daemon=True).start()
        status_client = Client(app.url, verbose=False)
        latencies = []
        while not done.is_set():
            t0 = time.monotonic()
            assert status_client.predict(api_name="/status")["engine_ok"]
            latencies.append(time.monotonic() - t0)
        status_client.close()
        client.close()
    assert final["status"] == "failed" and final["stage"] == "preflight"  # no tool containers: planned, refused
    assert final["stage_seconds"]["preflight"] > 1.0, "planning was too quick to show anything"
    assert len(latencies) >= 5, latencies  # /status kept answering while the base was hashed
    assert max(latencies) < final["stage_seconds"]["preflight"], latencies
