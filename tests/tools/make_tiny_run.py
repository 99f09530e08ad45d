"""Create a tiny Llama model (SentencePiece tokenizer) and a non-zero LoRA run, LLaMA-Factory style.

Run with the tools venv:  python make_tiny_run.py DATA_DIR [--run NAME] [--template default]
Writes DATA_DIR/models/tiny-llama and DATA_DIR/saves/tiny-llama/lora/NAME.
Sizes follow ../shared/NOTES.md: every tool in the export chain accepts them.
"""

import argparse
import json
import random
import time
from datetime import timedelta
from pathlib import Path

import sentencepiece as spm
import torch
import yaml
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

WORDS = ("model data train loss step merge export quantize ollama gguf llama token adapter weight base "
         "layer hidden answer question hello world tune deck run fast slow small tiny value learn rate").split()


def make_tokenizer(out: Path, seed: int) -> LlamaTokenizer:
    rng = random.Random(seed)
    text = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 16))) + rng.choice(".?!") for _ in range(4000)]
    text += ["".join(chr(rng.randint(33, 126)) for _ in range(40)) for _ in range(200)]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text), model_prefix=str(out / "tokenizer"), vocab_size=1024, model_type="bpe",
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0,
        num_threads=1, minloglevel=2,
    )
    (out / "tokenizer.vocab").unlink()
    return LlamaTokenizer.from_pretrained(str(out), legacy=False)


def make_base(base: Path, seed: int) -> None:
    base.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tok = make_tokenizer(base, seed)
    config = LlamaConfig(
        vocab_size=tok.vocab_size, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(str(base))
    tok.save_pretrained(str(base))


def make_run(base: Path, run: Path, template: str, seed: int, steps: int = 10) -> None:
    torch.manual_seed(seed + 1)
    model = LlamaForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                          "up_proj", "down_proj"],
                      init_lora_weights=False, lora_dropout=0.0, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora)
    run.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(run))
    cfg = json.loads((run / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(base)
    (run / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    (run / "training_args.yaml").write_text(yaml.safe_dump({
        "model_name_or_path": str(base), "template": template, "finetuning_type": "lora", "stage": "sft",
        "do_train": True, "output_dir": str(run), "num_train_epochs": 1.0, "learning_rate": 1e-4,
    }))
    now = time.time()
    with open(run / "trainer_log.jsonl", "w") as f:
        for i in range(1, steps + 1):
            f.write(json.dumps({"current_steps": i, "total_steps": steps, "loss": round(3.0 - 0.2 * i, 4),
                                "lr": 1e-4 * (1 - i / steps), "epoch": round(i / steps, 2),
                                "percentage": round(100 * i / steps, 2), "elapsed_time": str(timedelta(seconds=i)),
                                "remaining_time": str(timedelta(seconds=steps - i))}) + "\n")
    (run / "train_results.json").write_text(json.dumps({"epoch": 1.0, "train_loss": 2.0}))
    (run / "trainer_state.json").write_text(json.dumps({"global_step": steps, "max_steps": steps}))
    (run / "running_log.txt").write_text(f"finished at {now}\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--run", default="run1")
    parser.add_argument("--template", default="default")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    base = args.data_dir / "models" / "tiny-llama"
    if not (base / "config.json").exists():
        make_base(base, args.seed)
    make_run(base, args.data_dir / "saves" / "tiny-llama" / "lora" / args.run, args.template, args.seed)
    print(json.dumps({"base": str(base), "run": f"tiny-llama/lora/{args.run}"}))


if __name__ == "__main__":
    main()
