"""The served-prompt check's pure parts, the GGUF metadata edits it relies on, and run kinds (no Docker)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from app.export.jobs import StageFailed
from app.export.ollama_prompt import chat_prompt
from app.export.prompt_check import candidates, difference_sentence, first_difference, parse_ids
from app.export.reports import base_name
from app.export.stages.convert import training_starts_with_bos
from app.gguf import add_bool, read_metadata, set_bool, token_pieces
from app.runs import discover_runs, find_run, prior_adapters


def _s(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def tiny_gguf(path: Path, tokens: list[str], add_bos: bool | None = True, tensor: bytes = b"") -> Path:
    kvs = [_s("general.name") + struct.pack("<I", 8) + _s("tiny")]
    if add_bos is not None:
        kvs.append(_s("tokenizer.ggml.add_bos_token") + struct.pack("<I", 7) + bytes([add_bos]))
    kvs.append(_s("tokenizer.ggml.tokens") + struct.pack("<I", 9) + struct.pack("<I", 8)
               + struct.pack("<Q", len(tokens)) + b"".join(_s(t) for t in tokens))
    kvs.append(_s("tokenizer.ggml.model") + struct.pack("<I", 8) + _s("llama"))
    infos = _s("t") + struct.pack("<I", 1) + struct.pack("<Q", len(tensor) // 4) + struct.pack("<I", 0) \
        + struct.pack("<Q", 0) if tensor else b""
    head = (b"GGUF" + struct.pack("<I", 3) + struct.pack("<Q", 1 if tensor else 0) + struct.pack("<Q", len(kvs))
            + b"".join(kvs) + infos)
    path.write_bytes(head + b"\0" * (-len(head) % 32) + (tensor or b"\0" * 32))
    return path


def test_parse_ids_takes_the_ids_line_among_log_lines():
    assert parse_ids(["llama_model_loader: loaded meta data", "[1, 15043, 13]", "main: done"]) == [1, 15043, 13]
    assert parse_ids(["[]"]) == []
    with pytest.raises(StageFailed, match="printed no token ids"):
        parse_ids(["error: could not load model"])


def test_first_difference_and_the_sentence_name_the_token():
    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 2, 3], [1, 9, 3]) == 1
    assert first_difference([2, 3], [1, 2, 3]) == 0
    assert first_difference([1, 2], [1, 2, 3]) == 2
    sentence = difference_sentence("without_system", [2, 3], [1, 2, 3], {1: "<s>", 2: "▁Human", 3: ":"})
    assert sentence == ("for the without system conversation the served prompt has 3 tokens, training's 2; at "
                        "token 0 it has '<s>' (id 1) where training had '▁Human' (id 2)")
    assert "training had nothing (the prompt ends)" in difference_sentence("with_system", [1], [1, 5], {5: "x"})


def test_candidates_start_with_the_runtime_variant_and_never_repeat():
    chat = {"ollama_templates": {"bos": "A", "nobos": "B"}, "lf_ollama_template": "A"}
    assert candidates(chat, True) == [("TuneDeck's template", "A"),
                                      ("TuneDeck's template for the other BOS behaviour", "B")]
    assert [t for _, t in candidates(chat, False)] == ["B", "A"]
    assert [t for _, t in candidates({"ollama_templates": {"bos": "A", "nobos": "A"}, "lf_ollama_template": "C"},
                                     True)] == ["A", "C"]


def test_chat_prompt_renders_like_ollama():
    spec = {"template": "{{ if .System }}S:{{ .System }}|{{ end }}{{ range .Messages }}{{ .Role }}:{{ .Content }}|"
                        "{{ end }}", "system": "be brief"}
    # the model's SYSTEM becomes a system message, kept in .Messages too (as Ollama does)
    assert chat_prompt(spec, [{"role": "user", "content": "hi"}]) == "S:be brief|system:be brief|user:hi|"
    # a system message in the request replaces the model's default
    assert chat_prompt(spec, [{"role": "system", "content": "x"}, {"role": "user", "content": "hi"}]) == \
        "S:x|system:x|user:hi|"


def test_set_bool_flips_add_bos_in_place_and_token_pieces_reads_the_vocabulary(tmp_path):
    path = tiny_gguf(tmp_path / "m.gguf", ["<unk>", "<s>", "</s>", "▁Human"])
    size = path.stat().st_size
    assert read_metadata(path)["tokenizer.ggml.add_bos_token"] is True
    assert set_bool(path, "tokenizer.ggml.add_bos_token", False)
    assert read_metadata(path)["tokenizer.ggml.add_bos_token"] is False
    assert path.stat().st_size == size
    assert not set_bool(path, "general.name", True)  # not a boolean: left alone
    assert read_metadata(path)["general.name"] == "tiny"
    assert token_pieces(path, {1, 3, 99}) == {1: "<s>", 3: "▁Human"}
    data = struct.pack("<8f", *range(8))
    no_key = tiny_gguf(tmp_path / "n.gguf", ["a", "b"], add_bos=None, tensor=data)
    assert not set_bool(no_key, "tokenizer.ggml.add_bos_token", False)
    add_bool(no_key, "tokenizer.ggml.add_bos_token", False)  # the header grows, the tensor data moves intact
    meta = read_metadata(no_key)
    assert meta["tokenizer.ggml.add_bos_token"] is False and meta["general.name"] == "tiny"
    raw = no_key.read_bytes()
    assert raw.endswith(data) and (len(raw) - len(data)) % 32 == 0
    assert token_pieces(no_key, {1}) == {1: "b"}


def test_training_bos_is_read_from_training_ids():
    chat = {"bos_id": 1, "conversations": {"a": {"train_ids": [1, 5]}, "b": {"train_ids": [1, 6]}}}
    assert training_starts_with_bos(chat) is True
    chat["conversations"]["b"]["train_ids"] = [6]
    assert training_starts_with_bos(chat) is False
    assert training_starts_with_bos({"bos_id": None, "conversations": chat["conversations"]}) is None
    assert training_starts_with_bos({}) is None


@pytest.mark.parametrize("tuned, base", [("bot", "bot-base"), ("bot:v1", "bot-base:v1"),
                                         ("me/bot:v1", "me/bot-base:v1"), ("my-base", "my-base-base"),
                                         ("host:5000/me/bot", "host:5000/me/bot-base")])
def test_base_names_keep_the_tag(tuned, base):
    assert base_name(tuned) == base


def _write(path: Path, files: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def test_full_runs_checkpoints_and_early_stopped_runs_are_exportable(tmp_path):
    saves = tmp_path / "saves"
    log = "\n".join(json.dumps({"current_steps": s, "total_steps": 300, "loss": 3.0 / s}) for s in (50, 150, 300))
    adapter = {"adapter_config.json": json.dumps({"base_model_name_or_path": "/m/base"}),
               "adapter_model.safetensors": "x"}
    model = {"config.json": "{}", "model.safetensors": "x"}
    lora = _write(saves / "m/lora/a", {**adapter, "trainer_log.jsonl": log})
    _write(lora / "checkpoint-150", adapter)
    _write(lora / "checkpoint-50", {"optimizer.pt": "x"})  # holds neither: not offered
    full = _write(saves / "m/full/b", {**model, "trainer_log.jsonl": log,
                                      "README.md": "---\nbase_model: /m/base\n---\n"})
    early = _write(saves / "m/lora/c", {"trainer_log.jsonl": log})
    _write(early / "checkpoint-150", adapter)
    runs = {r.name: r for r in discover_runs(tmp_path)}
    assert set(runs) == {"m/lora/a", "m/full/b", "m/lora/c"}
    assert runs["m/lora/a"].finetuning_type == "lora" and runs["m/lora/a"].merges
    assert runs["m/lora/a"].checkpoints == ({"name": "m/lora/a/checkpoint-150", "step": 150, "loss": 3.0 / 150},)
    assert runs["m/full/b"].finetuning_type == "full" and not runs["m/full/b"].merges
    assert runs["m/full/b"].base_model == "/m/base" and runs["m/full/b"].path == str(full)
    assert runs["m/lora/c"].path == str(early / "checkpoint-150")  # stopped early: its last checkpoint
    ckpt = find_run(tmp_path, "m/lora/a/checkpoint-150")
    assert ckpt.path == str(lora / "checkpoint-150") and ckpt.last_loss == pytest.approx(0.02)
    assert ckpt.base_model == "/m/base"
    assert find_run(tmp_path, "m/lora/a/checkpoint-50") is None


def test_prior_adapters_follow_llama_factorys_order():
    assert prior_adapters({"adapter_name_or_path": "/a,/b", "create_new_adapter": True}) == ("/a", "/b")
    assert prior_adapters({"adapter_name_or_path": "/a,/b"}) == ("/a",)  # /b was resumed: it is the run itself
    assert prior_adapters({"adapter_name_or_path": ["/a"], "create_new_adapter": True}) == ("/a",)
    assert prior_adapters({"adapter_name_or_path": "/a"}) == ()
    assert prior_adapters({}) == ()


def _tokenizer_json(folder: Path, vocab: int, added: list[tuple[int, str, bool]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(json.dumps({
        "model": {"vocab": {f"t{i}": i for i in range(vocab)}},
        "added_tokens": [{"id": i, "content": c, "special": sp} for i, c, sp in added]}))


def test_tokens_a_trainer_added_are_merged_again_in_order(tmp_path):
    from app.export.vocab import added_tokens, merge_keys, unmergeable

    _tokenizer_json(tmp_path / "base", 100, [(0, "<s>", True)])
    _tokenizer_json(tmp_path / "run", 100, [(0, "<s>", True), (101, "<|eot_id|>", True), (100, "<|tool|>", True)])
    tokens = added_tokens(tmp_path / "run", tmp_path / "base")
    assert [t["content"] for t in tokens] == ["<|tool|>", "<|eot_id|>"]
    assert merge_keys(tokens) == {"resize_vocab": True, "add_special_tokens": "<|tool|>,<|eot_id|>"}
    assert unmergeable(tokens) is None
    assert merge_keys([]) == {}
    assert "comma" in unmergeable([{"id": 1, "content": "a,b", "special": True}])
    assert "plain tokens before special" in unmergeable([{"id": 1, "content": "a", "special": False},
                                                         {"id": 2, "content": "b", "special": True}])


def test_resized_adapters_pass_and_pissa_is_refused_in_one_sentence(tmp_path):
    from app.export.checks import adapter_mismatch

    run = tmp_path / "run"
    _tokenizer_json(run, 100, [(100, "<|tool|>", True)])
    header = json.dumps({"base_model.model.model.embed_tokens.modules_to_save.default.weight":
                         {"dtype": "F32", "shape": [128, 8], "data_offsets": [0, 0]}}).encode()
    (run / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    (run / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    assert adapter_mismatch(run, {"vocab_size": 100}) is None  # grown by the trainer: exportable
    _tokenizer_json(run, 100, [])
    assert "its vocabulary has 128 tokens, the base has 100" in adapter_mismatch(run, {"vocab_size": 100})
    _tokenizer_json(run, 100, [(100, "<|tool|>", True)])
    (run / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "init_lora_weights": "pissa_niter_4"}))
    assert "pissa_convert: true" in adapter_mismatch(run, {"vocab_size": 100})
