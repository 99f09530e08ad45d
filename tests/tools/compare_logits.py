"""Compare a merged HF model with its base and with a GGUF of it.

Run with the tools venv:  python compare_logits.py BASE_DIR MERGED_DIR GGUF
Prints JSON: max |merged - base| over the weights, and max |logits(HF) - logits(GGUF)|.
"""

import json
import sys

import numpy as np
import torch
from llama_cpp import Llama
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def main() -> None:
    base_dir, merged_dir, gguf = sys.argv[1:4]
    base = load_file(f"{base_dir}/model.safetensors")
    merged = load_file(f"{merged_dir}/model.safetensors")
    weight_diff = max(float((merged[k].float() - base[k].float()).abs().max()) for k in base if k in merged)

    tokens = [1, 45, 300, 17, 512, 88, 9, 700, 3, 250, 61, 99]
    model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    with torch.no_grad():
        hf = model(torch.tensor([tokens])).logits[0].numpy()
    llm = Llama(model_path=gguf, n_ctx=64, logits_all=True, verbose=False, n_threads=2)
    llm.eval(tokens)
    gg = np.array(llm.scores[: len(tokens)])
    llm.close()
    print(json.dumps({"weight_diff": weight_diff, "logit_diff": float(np.abs(hf - gg).max()),
                      "logit_scale": float(np.abs(hf).max())}))


if __name__ == "__main__":
    main()
