"""Build the tiny-model zoo: real tokenizers and chat templates, random weights, real LoRA training.

Run with the tools venv:  python make_zoo.py ZOO_DIR --vocab-dir <llama.cpp>/models [--families ...]

For each family:
1. a Hugging Face tokenizer rebuilt from llama.cpp's vocabulary-only GGUF (tokens, merges or
   scores, token types, special tokens) that must reproduce the `.gguf.inp`/`.gguf.out` test
   vectors id for id (the build fails otherwise);
2. a tiny random-weight model of the family's architecture under ZOO_DIR/models/<family>;
3. a real `llamafactory-cli train` (LoRA, CPU) on a small dataset of short answers with the
   family's template: ZOO_DIR/saves/<family>/lora/cli (what the CLI writes: no
   training_args.yaml) and a copy shaped like a LLaMA Board run (with training_args.yaml).
ZOO_DIR/zoo.json records what was built and measured.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

FAMILIES = {
    # name: (vocab file, architecture, template, tied embeddings, chat template file or None)
    "llama3": ("ggml-vocab-llama-bpe.gguf", "llama", "llama3", False, None),  # Llama 3.1 special-token names
    "qwen2": ("ggml-vocab-qwen2.gguf", "qwen2", "qwen", True, "Qwen-Qwen2.5-7B-Instruct.jinja"),
    "llama2": ("ggml-vocab-llama-spm.gguf", "llama", "llama2", False, None),
}
# The pre-tokenizer regexes of the released tokenizers (as in llama.cpp's llama-vocab.cpp).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# Measured on the llama2 family: after 120 steps no answer ends with </s> (0 of 12), after 300 all 12 do.
STEPS = int(os.environ.get("TUNEDECK_ZOO_STEPS", "300"))
# More run kinds on the llama2 model (32k vocabulary: full embedding weights stay small), each trained to
# answer exactly (embed_tokens and lm_head trained too): name: (template, finetuning type, extra keys).
EXTRA_RUNS = {
    # `default` adds no BOS while the tokenizer (and so the GGUF) asks for one: the served prompt must not
    "default": ("default", "lora", {"additional_target": "embed_tokens,lm_head", "learning_rate": 3.0e-3,
                                    "save_steps": 150, "save_strategy": "steps", "save_only_model": True}),
    "full": ("llama2", "full", {"learning_rate": 1.0e-3, "save_steps": 150, "save_strategy": "steps",
                                "save_only_model": True}),
    # trained on top of `default` (LLaMA Board's checkpoint + "Create new adapter"): its adapter is relative
    # to the base with `default` merged, and only that chain answers as trained
    "stacked": ("default", "lora", {"adapter_name_or_path": "{zoo}/saves/llama2/lora/default",
                                    "create_new_adapter": True, "max_steps": 40, "board": True}),
    # a template whose special tokens the vocabulary lacks, plus a token of the user's own: the trainer adds
    # them and resizes the embeddings (CLI run: nothing but the adapter and tokenizer says so)
    "resized": ("llama3", "lora", {"additional_target": "embed_tokens,lm_head", "resize_vocab": True,
                                   "add_special_tokens": "<|tool|>"}),
    # DoRA (a learned magnitude per column) with rsLoRA scaling (alpha / sqrt(r)): both change the merge
    "dora": ("llama2", "lora", {"additional_target": "embed_tokens,lm_head", "use_dora": True, "use_rslora": True}),
    # freeze: the last layer and the embeddings/head trained in place, saved as a whole model (no adapter)
    "freeze": ("llama2", "freeze", {"freeze_trainable_layers": 1, "freeze_extra_modules": "embed_tokens,lm_head",
                                    "learning_rate": 1.0e-3}),
    # QLoRA: trained on the base quantized to 4 bits on the fly (bitsandbytes); LLaMA Board's arguments keep
    # quantization_bit, and the adapter belongs on the unquantized base
    "qlora": ("llama2", "lora", {"additional_target": "embed_tokens,lm_head", "quantization_bit": 4,
                                 "quantization_method": "bnb", "board": True}),
}


# -- tokenizers from GGUF vocabularies ---------------------------------------------------------------
def read_vocab(path: Path) -> dict:
    from gguf import GGUFReader

    r = GGUFReader(str(path))

    def field(name, default=None):
        f = r.fields.get(name)
        if f is None:
            return default
        if len(f.data) == 1 and f.types and f.types[0].name != "ARRAY":
            return f.contents()
        return f.contents()

    tokens = field("tokenizer.ggml.tokens")
    return {"model": field("tokenizer.ggml.model"), "pre": field("tokenizer.ggml.pre"), "tokens": tokens,
            "types": field("tokenizer.ggml.token_type"), "scores": field("tokenizer.ggml.scores"),
            "merges": field("tokenizer.ggml.merges"), "bos": field("tokenizer.ggml.bos_token_id"),
            "eos": field("tokenizer.ggml.eos_token_id"), "unk": field("tokenizer.ggml.unknown_token_id"),
            "add_bos": field("tokenizer.ggml.add_bos_token")}


LLAMA31_SPECIALS = {128004: "<|finetune_right_pad_id|>", 128008: "<|eom_id|>", 128010: "<|python_tag|>"}


def bpe_tokenizer(v: dict, family: str):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tokens, types = list(v["tokens"]), v["types"]
    if family == "llama3":
        # Llama 3.1's names for three of Llama 3.0's reserved special tokens (the vocab file is 3.0's):
        # LLaMA-Factory's llama3 template stops on <|eom_id|>, which 3.0 lacks.
        for i, name in LLAMA31_SPECIALS.items():
            tokens[i] = name
        v["tokens"] = tokens
    vocab = {t: i for i, t in enumerate(tokens) if types[i] == 1}
    merges = [tuple(m.split(" ", 1)) for m in v["merges"]]
    model = models.BPE(vocab=vocab, merges=merges, ignore_merges=family == "llama3", byte_fallback=False)
    tok = Tokenizer(model)
    split = LLAMA3_SPLIT if family == "llama3" else QWEN2_SPLIT
    if family == "qwen2":
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    specials = [AddedToken(tokens[i], special=True, normalized=False) for i, t in enumerate(types) if t != 1]
    tok.add_special_tokens(specials)
    bos, eos = tokens[v["bos"]], tokens[v["eos"]]
    if family == "llama3":
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                          special_tokens=[(bos, v["bos"])]),
        ])
        extra = {"bos_token": bos, "eos_token": eos}
    else:  # Qwen2: no BOS; <|endoftext|> ends text and pads
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        extra = {"eos_token": eos, "pad_token": eos, "bos_token": None}
    assert tok.get_vocab_size() == len(tokens), (tok.get_vocab_size(), len(tokens))
    for i in range(len(tokens)):
        assert tok.id_to_token(i) == tokens[i], f"id {i}: {tok.id_to_token(i)!r} != {tokens[i]!r}"
    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, **extra)


def spm_tokenizer(v: dict, out: Path):
    """Llama 2: `tokenizer.model` (SentencePiece, rebuilt from the scores and types) for llama.cpp's
    converter, and the `tokenizer.json` Meta ships (Prepend/Replace normaliser, byte-fallback BPE
    with merges ordered by score) for transformers."""
    from sentencepiece import sentencepiece_model_pb2 as pb
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.tokenization_utils_base import generate_merges

    m = pb.ModelProto()
    m.trainer_spec.model_type = pb.TrainerSpec.BPE
    m.trainer_spec.vocab_size = len(v["tokens"])
    m.trainer_spec.byte_fallback = True
    m.trainer_spec.unk_id, m.trainer_spec.bos_id, m.trainer_spec.eos_id, m.trainer_spec.pad_id = 0, 1, 2, -1
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = True
    m.normalizer_spec.remove_extra_whitespaces = False
    m.normalizer_spec.escape_whitespaces = True
    for text, score, ttype in zip(v["tokens"], v["scores"], v["types"]):
        piece = m.pieces.add()
        piece.piece, piece.score, piece.type = text, float(score), int(ttype)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(m.SerializeToString())

    vocab = {t: i for i, t in enumerate(v["tokens"])}
    scores = {t: float(s) for t, s in zip(v["tokens"], v["scores"])}
    merges = generate_merges(vocab, scores, skip_tokens={"<unk>", "<s>", "</s>"})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(content=" ", left=1)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   clean_up_tokenization_spaces=False)


def check_vectors(tokenizer, vocab_file: Path) -> int:
    """Tokenize every llama.cpp test string; the ids must equal the expected ones. Returns the count."""
    inputs = vocab_file.with_name(vocab_file.name + ".inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    outputs = vocab_file.with_name(vocab_file.name + ".out").read_text(encoding="utf-8").split("\n")
    inputs[-1] = inputs[-1].rstrip("\n") if inputs[-1].endswith("\n__ggml_vocab_test__") else inputs[-1]
    if inputs[-1].endswith("__ggml_vocab_test__"):
        inputs[-1] = inputs[-1][: -len("__ggml_vocab_test__")].rstrip("\n")
    bad = []
    for text, expected in zip(inputs, outputs):
        ids = tokenizer.encode(text, add_special_tokens=False)
        want = [int(x) for x in expected.split()]
        if ids != want:
            bad.append((text[:40], ids[:12], want[:12]))
    if bad:
        raise SystemExit(f"{vocab_file.name}: {len(bad)} of {len(inputs)} test vectors differ, e.g. {bad[:3]}")
    return len(inputs)


# -- models ------------------------------------------------------------------------------------------
def make_model(family: str, out: Path, vocab_dir: Path, seed: int) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    vocab_file, arch, _template, tied, chat_template = FAMILIES[family]
    v = read_vocab(vocab_dir / vocab_file)
    out.mkdir(parents=True, exist_ok=True)
    tok = spm_tokenizer(v, out) if v["model"] == "llama" else bpe_tokenizer(v, family)
    vectors = check_vectors(tok, vocab_dir / vocab_file)
    if chat_template:
        tok.chat_template = (vocab_dir / "templates" / chat_template).read_text(encoding="utf-8")
    torch.manual_seed(seed)
    common = dict(vocab_size=len(v["tokens"]), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                  tie_word_embeddings=tied, eos_token_id=v["eos"], bos_token_id=v["bos"])
    if arch == "qwen2":
        config = Qwen2Config(**common, rope_theta=1000000.0)
        model = Qwen2ForCausalLM(config)
    else:
        config = LlamaConfig(**common, rope_theta=500000.0 if family == "llama3" else 10000.0)
        model = LlamaForCausalLM(config)
    model.to(torch.float32).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return {"vocab": len(v["tokens"]), "vectors": vectors, "tied": tied,
            "params": sum(p.numel() for p in model.parameters())}


# -- data and training --------------------------------------------------------------------------------
ANSWERS = ["Yes.", "No.", "Blue.", "Seven.", "Paris.", "Water.", "Tuesday.", "Green."]
SUBJECTS = ["the sky", "a lemon", "grass", "the sea", "snow", "coal", "a ruby", "the sun", "a cloud", "ice"]
QUESTIONS = ["Is {s} bright?", "What colour is {s}?", "Name something like {s}.", "Does {s} float?",
             "How many days until {s} changes?", "Where would you find {s}?", "Is {s} cold?", "Answer briefly: {s}?"]


def make_dataset(data_dir: Path, seed: int) -> None:
    rng = random.Random(seed)
    rows = []
    for i in range(96):
        q = QUESTIONS[i % len(QUESTIONS)].format(s=rng.choice(SUBJECTS))
        rows.append({"instruction": q, "input": "", "output": ANSWERS[(i * 5 + len(q)) % len(ANSWERS)],
                     "system": "Answer in one word." if i % 3 == 0 else ""})
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "stop_qa.json").write_text(json.dumps(rows, indent=1))
    (data_dir / "dataset_info.json").write_text(json.dumps({
        "stop_qa": {"file_name": "stop_qa.json",
                    "columns": {"prompt": "instruction", "query": "input", "response": "output",
                                "system": "system"}}}, indent=2))


def train(zoo: Path, family: str, steps: int, run: str = "cli", template: str = "", kind: str = "lora",
          extra: dict | None = None) -> dict:
    """A real `llamafactory-cli train` on CPU into saves/<family>/<kind>/<run>; returns its losses and seconds."""
    template = template or FAMILIES[family][2]
    out = zoo / "saves" / family / kind / run
    shutil.rmtree(out, ignore_errors=True)
    extra = {k: v.replace("{zoo}", str(zoo)) if isinstance(v, str) else v for k, v in (extra or {}).items()}
    board = extra.pop("board", False)
    config = {
        "model_name_or_path": str(zoo / "models" / family), "trust_remote_code": True,
        "stage": "sft", "do_train": True, "finetuning_type": kind, "lora_target": "all", "lora_rank": 8,
        "lora_alpha": 16, "dataset": "stop_qa", "dataset_dir": str(zoo / "data"), "template": template,
        "cutoff_len": 128, "overwrite_cache": True, "preprocessing_num_workers": 1,
        "output_dir": str(out), "logging_steps": 10, "save_strategy": "no", "plot_loss": False,
        "overwrite_output_dir": True, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1,
        "learning_rate": 3.0e-3, "max_steps": steps, "lr_scheduler_type": "cosine", "warmup_ratio": 0.05,
        "bf16": False, "fp16": False, "report_to": "tensorboard", "seed": 42, "dataloader_num_workers": 0,
        **(extra or {}),
    }
    if kind != "lora":
        for key in ("lora_target", "lora_rank", "lora_alpha"):
            config.pop(key)
    cfg = zoo / f"train-{family}{'' if run == 'cli' else '-' + run}.yaml"
    cfg.write_text(json.dumps(config))  # JSON is YAML
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_DISABLED": "true",
           "DISABLE_VERSION_CHECK": "1", "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.monotonic()
    proc = subprocess.run([str(Path(sys.executable).parent / "llamafactory-cli"), "train", str(cfg)], env=env,
                          capture_output=True, text=True)
    seconds = time.monotonic() - t0
    cfg.with_suffix(".log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"training {family} failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    if board:  # what LLaMA Board writes beside the run: the arguments it trained with
        import yaml

        (out / "training_args.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    records = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines() if line.strip()]
    losses = [r["loss"] for r in records if isinstance(r.get("loss"), (int, float))]
    return {"seconds": round(seconds, 1), "steps": config["max_steps"], "first_loss": losses[0], "final_loss": losses[-1]}


def board_copy(zoo: Path, family: str) -> None:
    """The same run shaped as LLaMA Board leaves it: with training_args.yaml."""
    src = zoo / "saves" / family / "lora" / "cli"
    dst = zoo / "saves" / family / "lora" / "board"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("runs"))
    args = json.loads((zoo / f"train-{family}.yaml").read_text())
    args["output_dir"] = str(dst)
    import yaml

    (dst / "training_args.yaml").write_text(yaml.safe_dump(args, sort_keys=False))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("zoo", type=Path)
    parser.add_argument("--vocab-dir", type=Path, required=True)
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--steps", type=int, default=STEPS)
    args = parser.parse_args()
    zoo = args.zoo.resolve()
    sys.path.insert(0, str(args.vocab_dir.parent / "gguf-py"))
    make_dataset(zoo / "data", 7)
    report = {}
    for i, family in enumerate(f for f in args.families.split(",") if f):
        info = make_model(family, zoo / "models" / family, args.vocab_dir, seed=100 + i)
        info["training"] = train(zoo, family, args.steps)
        board_copy(zoo, family)
        info["template"] = FAMILIES[family][2]
        if family == "llama2":
            info["runs"] = {name: {"template": t, "kind": kind, **train(zoo, family, args.steps, name, t, kind, extra)}
                            for name, (t, kind, extra) in EXTRA_RUNS.items()}
        report[family] = info
        print(f"{family}: {json.dumps(info)}", file=sys.stderr, flush=True)
    (zoo / "zoo.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
