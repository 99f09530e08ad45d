"""A Llama model of a chosen size with a real vocabulary and a random non-zero LoRA run, for bench/export_scale
(tools venv):  python make_scaled_run.py DATA_DIR NAME TOKENIZER_DIR HIDDEN INTERMEDIATE LAYERS

The tokenizer files are copied from TOKENIZER_DIR (the zoo's Llama 2 model); weights are random, in
bfloat16 (what released checkpoints ship). Prints {"base", "run", "params"} as JSON."""

import json
import shutil
import sys
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

data, name, tok_dir = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
hidden, inter, layers = (int(x) for x in sys.argv[4:7])
base = data / "models" / f"scale-{name}"
run = data / "saves" / f"scale-{name}" / "lora" / "run"
base.mkdir(parents=True, exist_ok=True)
for f in tok_dir.iterdir():
    if f.name.startswith(("tokenizer", "special_tokens")):
        shutil.copy(f, base / f.name)
vocab = json.loads((tok_dir / "config.json").read_text())["vocab_size"]
torch.manual_seed(0)
heads = max(4, hidden // 128)
config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                     num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), max_position_embeddings=2048,
                     bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, torch_dtype="bfloat16")
model = LlamaForCausalLM(config).to(torch.bfloat16)
model.save_pretrained(str(base))
params = sum(p.numel() for p in model.parameters())
lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                  init_lora_weights=False, lora_dropout=0.0, task_type="CAUSAL_LM")
peft_model = get_peft_model(model, lora)
run.mkdir(parents=True, exist_ok=True)
peft_model.save_pretrained(str(run))
cfg = json.loads((run / "adapter_config.json").read_text())
cfg["base_model_name_or_path"] = str(base)
(run / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
(run / "trainer_log.jsonl").write_text(json.dumps({"current_steps": 1, "total_steps": 1, "loss": 1.0}) + "\n")
print(json.dumps({"base": str(base), "run": f"scale-{name}/lora/run", "params": params}))
