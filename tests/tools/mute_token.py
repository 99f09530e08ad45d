"""Make a model never choose one token greedily (tools venv):  python mute_token.py MODEL_DIR TOKEN_ID

Zeroes the token's output-embedding row, so its logit is 0 while the others spread around it; a
random tiny model then runs to its token limit instead of stopping early (for streaming tests)."""

import json
import os
import sys

from safetensors.torch import load_file, save_file

model_dir, token = sys.argv[1], int(sys.argv[2])
path = os.path.join(model_dir, "model.safetensors")
weights = load_file(path)
weights["lm_head.weight"][token] = 0
tmp = path + ".tmp"
save_file(weights, tmp, metadata={"format": "pt"})
os.replace(tmp, path)
print(json.dumps({"muted": token}))
