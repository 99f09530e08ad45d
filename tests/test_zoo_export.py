"""Exports that keep the fine-tune, for the families people train (issue: fidelity).

The zoo (tests/tools/make_zoo.py, built by .ci/setup.sh) holds tiny Llama 3, Qwen2.5-style (tied
embeddings) and Llama 2 models with tokenizers rebuilt from llama.cpp's vocabularies, each trained
for real with `llamafactory-cli train` on short answers with its real template. Every export runs
the real tools in containers and the Ollama stand-in runs the real GGUF with llama.cpp.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import httpx
import pytest
import yaml
from gradio_client import Client

from app.gguf import read_metadata, set_bool
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
             and r["body"]["model"].startswith("tunedeck-check-")]  # checked before zoo-{family} was created
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


def ollama_models(zoo_env) -> list[tuple[str, str]]:
    tags = httpx.get(zoo_env["ollama"].url + "/api/tags", timeout=10).json()["models"]
    return sorted((m["name"], m["digest"]) for m in tags)


def test_a_wrong_template_given_by_hand_fails_before_ollama_changes(zoo_env):
    # the right export first, so the name exists in Ollama: a wrong template must not replace it
    log, status, _ = export(zoo_env["app"].url, "llama2/lora/cli", "", "", "f16", [], "zoo-wrong", "", True)
    assert status["status"] == "succeeded", log[-3000:]
    before = ollama_models(zoo_env)
    log, status, _ = export(zoo_env["app"].url, "llama2/lora/cli", "", "default", "f16", [], "zoo-wrong", "", True)
    assert status["status"] == "failed" and status["stage"] == "preflight", log[-3000:]
    assert status["error"] == ("preflight failed: The chosen template default is not the one the run was trained "
                               "with: its tokenizer records llama2. Leave the template empty to use the run's own, "
                               "or choose llama2.")
    assert ollama_models(zoo_env) == before


def test_a_wrong_gguf_tokenizer_setting_fails_before_ollama_changes(zoo_env):
    """The GGUF told to add a BOS that training never saw (`default` puts none): no Ollama template can take
    away what the runtime adds, so the export fails, naming the token, before Ollama changes."""
    data = zoo_env["data"]
    log, status, _ = export(zoo_env["app"].url, "llama2/lora/default", "", "", "f16", [], "zoo-vocab", "", True)
    assert status["status"] == "succeeded", log[-3000:]
    before = ollama_models(zoo_env)
    requests_before = len(zoo_env["ollama"].requests())
    gguf = next(Path(a["file"]) for a in status["result"]["artifacts"].values() if a["file"].endswith("-f16.gguf"))
    assert read_metadata(gguf)["tokenizer.ggml.add_bos_token"] is False  # as TuneDeck corrected it
    assert set_bool(gguf, "tokenizer.ggml.add_bos_token", True)
    try:
        log, status, _ = export(zoo_env["app"].url, "llama2/lora/default", "", "", "f16", [], "zoo-vocab", "", True)
    finally:  # later exports convert again instead of reusing the edited file
        gguf.unlink()
        shutil.rmtree(gguf.parent / "eval", ignore_errors=True)
    assert status["stages"]["convert"] == "reused", "the edited file must be the one checked"
    assert status["status"] == "failed" and status["stage"] == "load", log[-3000:]
    assert status["error"].startswith("load failed: Ollama would not serve the prompt the model was trained on: ")
    assert "at token 0 it has '<s>' (id 1) where training had" in status["error"], status["error"]
    assert status["error"].endswith("Nothing was created in Ollama.")
    assert ollama_models(zoo_env) == before
    new = zoo_env["ollama"].requests()[requests_before:]
    assert not [r for r in new if r["path"] == "/api/create"], "nothing may be created, not even a staging model"


def answer_check(status: dict, name: str) -> dict:
    """The served model answers a question of the run's own data with its trained answer, and stops."""
    verify = status["result"]["verify"][name]
    assert verify["reference"], verify
    # SentencePiece: LLaMA-Factory encodes the answer on its own, so it was trained as "▁Blue", which reads " Blue"
    assert verify["reply"] in (verify["reference"], " " + verify["reference"]), verify
    assert verify["done_reason"] == "stop", verify
    return verify


def test_a_template_without_bos_is_served_without_one(zoo_env):
    """`default` puts no BOS before the prompt, on a tokenizer that asks for one: the GGUF is corrected, the
    served prompt is training's id for id, and the model answers as trained."""
    log, status, seconds = export(zoo_env["app"].url, "llama2/lora/default", "", "", "f16", [], "zoo-default", "",
                                  True)
    assert status["status"] == "succeeded", log[-3000:]
    result = status["result"]
    assert result["template"]["name"] == "default"
    assert "set tokenizer.ggml.add_bos_token = false" in log
    fmt = result["chat_format"]["conversations"]
    chats = [r for r in zoo_env["ollama"].requests() if r["path"] == "/api/chat"
             and r["body"]["model"].startswith("tunedeck-check-")]
    for key, conv in fmt.items():
        assert conv["train_ids"][0] != 1, "the default template starts without BOS"
        served = [c for c in chats if len(c["body"]["messages"]) == (4 if key == "with_system" else 3)]
        assert served[-1]["prompt_ids"] == conv["train_ids"], (key, served[-1]["prompt"])
    verify = answer_check(status, "zoo-default")
    print(f"\n[run-kinds] lora default-template: succeeded in {seconds:.1f} s, answer {verify['reply']!r}")


def test_a_full_fine_tune_exports_its_own_weights(zoo_env):
    runs = {r["name"]: r for r in Client(zoo_env["app"].url, verbose=False).predict(api_name="/runs")}
    assert runs["llama2/full/full"]["finetuning_type"] == "full"
    log, status, seconds = export(zoo_env["app"].url, "llama2/full/full", "", "", "f16", [], "zoo-full", "", True)
    assert status["status"] == "succeeded", log[-3000:]
    run = zoo_env["data"] / "saves" / "llama2" / "full" / "full"
    merged = Path(status["result"]["merged_dir"])
    assert "nothing to merge" in log and "[merge] $ llamafactory-cli" not in log
    assert (merged / "model.safetensors").stat().st_ino == (run / "model.safetensors").stat().st_ino  # linked
    assert (merged / "tokenizer.model").is_file() and not (run / "tokenizer.model").exists()  # from the base
    assert status["result"]["fidelity"]["gguf"]["agreement"] >= 0.99
    verify = answer_check(status, "zoo-full")
    print(f"\n[run-kinds] full fine-tune: succeeded in {seconds:.1f} s, answer {verify['reply']!r}")


def test_a_freeze_fine_tune_exports_its_own_weights(zoo_env):
    """Freeze tuning saves the whole model like a full fine-tune: converted as it is, no merge."""
    runs = {r["name"]: r for r in Client(zoo_env["app"].url, verbose=False).predict(api_name="/runs")}
    assert runs["llama2/freeze/freeze"]["finetuning_type"] == "freeze"
    log, status, seconds = export(zoo_env["app"].url, "llama2/freeze/freeze", "", "", "f16", [], "zoo-freeze", "",
                                  True)
    assert status["status"] == "succeeded", log[-3000:]
    assert "nothing to merge" in log and "[merge] $ llamafactory-cli" not in log
    verify = answer_check(status, "zoo-freeze")
    print(f"\n[run-kinds] freeze fine-tune: succeeded in {seconds:.1f} s, answer {verify['reply']!r}")


def test_a_qlora_run_merges_onto_the_unquantized_base(zoo_env):
    """Trained with quantization_bit 4 (bitsandbytes, on the fly): LLaMA Board's arguments say so, the adapter
    names the unquantized base, and the merge runs on that base without quantizing it."""
    run = zoo_env["data"] / "saves" / "llama2" / "lora" / "qlora"
    assert yaml.safe_load((run / "training_args.yaml").read_text())["quantization_bit"] == 4
    log, status, seconds = export(zoo_env["app"].url, "llama2/lora/qlora", "", "", "f16", [], "zoo-qlora", "", True)
    assert status["status"] == "succeeded", log[-3000:]
    merge_yaml = yaml.safe_load((Path(status["result"]["workdir"]) / "merge.yaml").read_text())
    assert "quantization_bit" not in merge_yaml and merge_yaml["model_name_or_path"] == \
        str(zoo_env["data"] / "models" / "llama2")
    assert status["result"]["fidelity"]["gguf"]["reference"] == "peft"
    verify = answer_check(status, "zoo-qlora")
    print(f"\n[run-kinds] QLoRA (4-bit bitsandbytes): succeeded in {seconds:.1f} s, answer {verify['reply']!r}")


def test_a_stacked_adapter_is_merged_with_the_adapters_it_was_trained_on(zoo_env):
    """Trained on top of `default` with create_new_adapter: only base + default + stacked answers as trained,
    and fidelity's reference is that chain applied by peft, not TuneDeck's own merge."""
    runs = {r["name"]: r for r in Client(zoo_env["app"].url, verbose=False).predict(api_name="/runs")}
    default = str(zoo_env["data"] / "saves" / "llama2" / "lora" / "default")
    assert runs["llama2/lora/stacked"]["prior_adapters"] == [default]
    log, status, seconds = export(zoo_env["app"].url, "llama2/lora/stacked", "", "", "f16", [], "zoo-stacked", "",
                                  True)
    assert status["status"] == "succeeded", log[-3000:]
    merge_yaml = yaml.safe_load((Path(status["result"]["workdir"]) / "merge.yaml").read_text())
    assert merge_yaml["adapter_name_or_path"] == f"{default},{zoo_env['data'] / 'saves/llama2/lora/stacked'}"
    fidelity = status["result"]["fidelity"]
    assert fidelity["gguf"]["reference"] == "peft" and fidelity["gguf"]["agreement"] >= 0.99, fidelity
    verify = answer_check(status, "zoo-stacked")
    print(f"\n[run-kinds] stacked adapter: succeeded in {seconds:.1f} s, answer {verify['reply']!r}")


def test_a_run_whose_trainer_added_tokens_exports_with_its_own_vocabulary(zoo_env):
    """llama3's template on a Llama 2 vocabulary (its header and end tokens are new) plus a token of the
    user's own, trained with resize_vocab: the merge adds the same tokens in the same order."""
    log, status, seconds = export(zoo_env["app"].url, "llama2/lora/resized", "", "", "f16", [], "zoo-resized", "",
                                  True)
    assert status["status"] == "succeeded", log[-3000:]
    assert status["result"]["template"]["name"] == "llama3"
    merge_yaml = yaml.safe_load((Path(status["result"]["workdir"]) / "merge.yaml").read_text())
    assert merge_yaml["resize_vocab"] is True and merge_yaml["add_special_tokens"].startswith("<|tool|>,")
    run_tok = json.loads((zoo_env["data"] / "saves/llama2/lora/resized/tokenizer.json").read_text())
    merged_tok = json.loads((Path(status["result"]["merged_dir"]) / "tokenizer.json").read_text())
    assert merged_tok["added_tokens"] == run_tok["added_tokens"]
    verify = answer_check(status, "zoo-resized")
    print(f"\n[run-kinds] resized vocabulary: succeeded in {seconds:.1f} s, answer {verify['reply']!r}")


def test_dora_with_rslora_merges_as_trained(zoo_env):
    config = json.loads((zoo_env["data"] / "saves/llama2/lora/dora/adapter_config.json").read_text())
    assert config["use_dora"] and config["use_rslora"]
    log, status, seconds = export(zoo_env["app"].url, "llama2/lora/dora", "", "", "f16", [], "zoo-dora", "", True)
    assert status["status"] == "succeeded", log[-3000:]
    assert status["result"]["fidelity"]["gguf"]["reference"] == "peft"
    assert status["result"]["fidelity"]["gguf"]["agreement"] >= 0.99
    verify = answer_check(status, "zoo-dora")
    print(f"\n[run-kinds] DoRA + rsLoRA: succeeded in {seconds:.1f} s, answer {verify['reply']!r}")


def test_a_checkpoint_can_be_exported(zoo_env):
    runs = {r["name"]: r for r in Client(zoo_env["app"].url, verbose=False).predict(api_name="/runs")}
    steps = [c["step"] for c in runs["llama2/lora/default"]["checkpoints"]]
    assert steps == [150, 300], runs["llama2/lora/default"]
    log, status, seconds = export(zoo_env["app"].url, "llama2/lora/default/checkpoint-150", "", "", "f16", [],
                                  "zoo-ckpt", "", True)
    assert status["status"] == "succeeded", log[-3000:]
    assert status["result"]["template"]["name"] == "default"
    final = next(r for r in httpx.get(zoo_env["ollama"].url + "/api/tags", timeout=10).json()["models"]
                 if r["name"] == "zoo-ckpt:latest")
    assert final
    print(f"\n[run-kinds] checkpoint-150: succeeded in {seconds:.1f} s")


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
