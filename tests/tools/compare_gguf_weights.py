"""Which model a GGUF was converted from (tools venv):  python compare_gguf_weights.py GGUF BASE_DIR MERGED_DIR

Prints JSON: the largest |difference| of one unpermuted weight (layer 0's MLP down projection)
between the GGUF and the base model, and between the GGUF and the merged model."""

import json
import os
import sys

import numpy as np
from safetensors.numpy import load_file

sys.path.insert(0, os.path.join(os.environ.get("TUNEDECK_LLAMACPP_APP", "/app"), "gguf-py"))
from gguf import GGUFReader  # noqa: E402

gguf, base_dir, merged_dir = sys.argv[1:4]
tensor = next(t for t in GGUFReader(gguf).tensors if t.name == "blk.0.ffn_down.weight")
ours = np.asarray(tensor.data, dtype=np.float32).reshape(-1)
name = "model.layers.0.mlp.down_proj.weight"
base = load_file(os.path.join(base_dir, "model.safetensors"))[name].astype(np.float32).reshape(-1)
merged = load_file(os.path.join(merged_dir, "model.safetensors"))[name].astype(np.float32).reshape(-1)
print(json.dumps({"to_base": float(np.abs(ours - base).max()), "to_merged": float(np.abs(ours - merged).max())}))
