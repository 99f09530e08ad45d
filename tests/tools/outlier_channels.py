"""Give a model the activation outliers real LLMs have (tools venv):
python outlier_channels.py MODEL_DIR OUT_DIR [FACTOR] [SHARE]

Copies MODEL_DIR to OUT_DIR and scales a few channels (SHARE of them, default 2%) of every RMSNorm
weight by FACTOR (default 24): their activations then dominate, as the "massive activations" of
trained models do. A random-weight model has none, and an importance matrix cannot help it."""

import json
import shutil
import sys

import torch
from safetensors.torch import load_file, save_file

src, dst = sys.argv[1], sys.argv[2]
factor = float(sys.argv[3]) if len(sys.argv) > 3 else 24.0
share = float(sys.argv[4]) if len(sys.argv) > 4 else 0.02
shutil.copytree(src, dst, dirs_exist_ok=True)
weights = load_file(f"{src}/model.safetensors")
gen = torch.Generator().manual_seed(7)
scaled = 0
for name, w in weights.items():
    if name.endswith("layernorm.weight") or name == "model.norm.weight":
        idx = torch.randperm(w.numel(), generator=gen)[: max(1, int(w.numel() * share))]
        w[idx] *= factor
        scaled += len(idx)
save_file(weights, f"{dst}/model.safetensors", metadata={"format": "pt"})
print(json.dumps({"scaled_channels": scaled, "factor": factor}))
