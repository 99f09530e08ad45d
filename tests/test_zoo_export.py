"""Exports that keep the fine-tune, for the families people train (issue: fidelity).

The zoo (tests/tools/make_zoo.py, built by .ci/setup.sh) holds tiny Llama 3, Qwen2.5-style (tied
embeddings) and Llama 2 models with tokenizers rebuilt from llama.cpp's vocabularies, each trained
for real with `llamafactory-cli train` on short answers with its real template. Every export runs
the real tools in containers and the Ollama stand-in runs the real GGUF with llama.cpp.
"""

from __future__ import annotations

import shutil
import time

import pytest
from gradio_client import Client

from tests.harness.stack import Stack, new_project_name
from tests.harness.toolbox import run_tools_script, tool_app
from tests.harness.zoo import FAMILIES, install, zoo_facts

pytestmark = pytest.mark.tools


@pytest.fixture(scope="module")
def zoo_env(docker_client, hosttools_image, tmp_path_factory):
    data = tmp_path_factory.mktemp("zoo") / "data"
    install(data)
    stack = Stack(docker_client, new_project_name(), hosttools_image)
    try:
        with tool_app(stack, data) as tools:
            yield {"data": data, "app": tools.app, "ollama": tools.ollama, "stack": stack}
    finally:
        stack.cleanup()


def export(url: str, *args, timeout: float = 900, **kw):
    client = Client(url, verbose=False)
    job = client.submit(*args, api_name="/export", **kw)
    t0 = time.monotonic()
    final = None
    for final in job:
        assert time.monotonic() - t0 < timeout, "export did not finish in time"
    client.close()
    return final[0], final[1], time.monotonic() - t0


def test_zoo_tokenizers_reproduce_llama_cpp_test_vectors():
    facts = zoo_facts()
    assert set(facts) == set(FAMILIES)
    for family, info in facts.items():
        assert info["vectors"] >= 40, f"{family}: the build checks every .gguf.inp/.gguf.out vector"
        assert info["template"] == FAMILIES[family][0]
    assert facts["qwen2"]["tied"] and not facts["llama3"]["tied"]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_cli_run_exports_with_its_inferred_template_and_keeps_the_fine_tune(zoo_env, family):
    template, stops = FAMILIES[family]
    run = f"{family}/lora/cli"  # llamafactory-cli train: no training_args.yaml
    # the quantization report has its own tests (test_quant_report.py): not repeated per family
    log, status, seconds = export(zoo_env["app"].url, run, "", "", "f16", ["Q4_K_M"], f"zoo-{family}", "", True,
                                  False, False)
    assert status["status"] == "succeeded", log[-3000:]
    result = status["result"]
    assert result["template"] == {"name": template, "source": "inferred from the run's tokenizer"}
    assert f"template: {template} (inferred from the run's tokenizer)" in log

    # Ollama got the template's real stop tokens, and renders exactly training's prompt
    create = [r["body"] for r in zoo_env["ollama"].requests()
              if r["path"] == "/api/create" and r["body"]["model"] == f"zoo-{family}"][-1]
    assert set(create["parameters"]["stop"]) == stops
    fmt = result["chat_format"]["conversations"]
    chats = [r for r in zoo_env["ollama"].requests() if r["path"] == "/api/chat"
             and r["body"]["model"] == f"zoo-{family}"]
    for key, conv in fmt.items():
        served = [c for c in chats if len(c["body"]["messages"]) == (4 if key == "with_system" else 3)
                  and c["body"]["options"].get("num_predict") == 1]
        assert served, f"no chat-format request for {key}"
        assert served[-1]["prompt_ids"] == conv["train_ids"], (key, served[-1]["prompt"])
    check = result["verify"][f"zoo-{family}"]["template_check"]
    assert check["ok"] and all(c["served_tokens"] == c["train_tokens"] for c in check["conversations"].values())

    # fidelity: the f16 GGUF keeps the merged model's predictions; the model stops on its own
    fidelity = result["fidelity"]
    assert fidelity["gguf"]["tokens"] >= 256 and fidelity["gguf"]["agreement"] >= 0.99, fidelity
    assert fidelity["gguf"]["tokenizer"]["first_mismatch"] is None
    assert fidelity["eval"]["from_run"], fidelity["eval"]
    verify = result["verify"][f"zoo-{family}"]
    assert verify["clean_stop"] and verify["done_reason"] == "stop", verify
    assert fidelity["verdict"] == "ok", fidelity["causes"]
    assert status["stages"]["fidelity"] == "done"
    row = {"template": template, "stops": sorted(set(create["parameters"]["stop"])),
                       "f16": fidelity["gguf"]["agreement"], "q4": fidelity["quantized"]["Q4_K_M"]["agreement"],
                       "stop": verify["clean_stop"], "seconds": round(seconds, 1)}
    print(f"\n[fidelity-table] {family}: {row}")


def test_board_shaped_run_uses_its_training_args(zoo_env):
    log, status, _ = export(zoo_env["app"].url, "llama2/lora/board", "", "", "f16", [], "zoo-board", "", True)
    assert status["status"] == "succeeded", log[-3000:]
    assert status["result"]["template"] == {"name": "llama2", "source": "from the run's training_args.yaml"}
    assert status["result"]["verify"]["zoo-board"]["template_check"]["ok"]


def test_a_wrong_template_given_by_hand_fails_the_check(zoo_env):
    log, status, _ = export(zoo_env["app"].url, "llama2/lora/cli", "", "default", "f16", [], "zoo-wrong", "", True)
    assert status["status"] == "succeeded", log[-3000:]
    fidelity = status["result"]["fidelity"]
    assert fidelity["verdict"] == "warning" and status["stages"]["fidelity"] == "warning"
    assert any("the chosen template default is not the one the run was trained with (llama2" in c
               for c in fidelity["causes"]), fidelity["causes"]
    assert "⚠️ Fidelity warning" in fidelity["summary"]


def test_a_perturbed_gguf_fails_the_check(zoo_env):
    data = zoo_env["data"]
    log, status, _ = export(zoo_env["app"].url, "llama2/lora/cli", "", "", "f16", [], "zoo-perturbed", "", True)
    assert status["status"] == "succeeded" and status["result"]["fidelity"]["verdict"] == "ok", log[-2000:]
    workdir = status["result"]["workdir"]
    gguf = next(p for p in (data / "exports").glob("*/*-f16.gguf") if str(p).startswith(workdir))
    run_tools_script("perturb_gguf.py", str(gguf), "blk.1.ffn_down.weight", "3.0")
    shutil.rmtree(gguf.parent / "eval")  # forget the logits measured on the intact file
    try:
        log, status, _ = export(zoo_env["app"].url, "llama2/lora/cli", "", "", "f16", [], "zoo-perturbed", "", True)
    finally:  # later exports of this run convert again instead of reusing the perturbed file
        gguf.unlink()
        shutil.rmtree(gguf.parent / "eval", ignore_errors=True)
    fidelity = status["result"]["fidelity"]
    assert status["stages"]["convert"] == "reused", "the perturbed file must be the one measured"
    assert fidelity["verdict"] == "warning" and fidelity["gguf"]["agreement"] < 0.95, fidelity
    assert any("predicts a different next token than the merged model" in c for c in fidelity["causes"])
