"""Perturb one tensor of a GGUF in place (tools venv):  python perturb_gguf.py FILE TENSOR SCALE

Adds noise of relative size SCALE to an F16/F32 tensor's values; prints what changed as JSON."""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.environ.get("TUNEDECK_LLAMACPP_APP", "/app"), "gguf-py"))
from gguf import GGUFReader  # noqa: E402

path, name, scale = sys.argv[1], sys.argv[2], float(sys.argv[3])
reader = GGUFReader(path, "r+")
tensor = next(t for t in reader.tensors if t.name == name)
data = tensor.data
if data.dtype not in (np.float16, np.float32):
    raise SystemExit(f"{name} is {data.dtype}, not F16/F32")
rng = np.random.default_rng(0)
noise = rng.standard_normal(data.shape).astype(np.float32) * float(np.abs(data).mean() or 1.0) * scale
data[...] = (data.astype(np.float32) + noise).astype(data.dtype)
reader.data.flush()
print(json.dumps({"tensor": name, "dtype": str(data.dtype), "elements": int(data.size)}))
