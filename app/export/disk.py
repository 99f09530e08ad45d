"""What an export writes to disk, estimated from the base model's own files before anything runs.

The parameter count comes from the safetensors headers (the files transformers would load: an index's
shards, or the single file; a `consolidated.safetensors` beside them is a duplicate and not counted),
else from `.bin` sizes and the config's dtype. Each stage's output is priced from it: the merged folder
in the config's dtype, the GGUF in its dtype, each quantized file at its bits per weight, and the copy
Ollama keeps of every delivered file (in its own volume, reported apart).
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from .plan import ExportPlan

QUANT_BITS = {"Q2_K": 3.0, "Q3_K_S": 3.5, "Q3_K_M": 3.9, "Q3_K_L": 4.3, "Q4_0": 4.5, "Q4_1": 5.0, "Q4_K_S": 4.6,
              "Q4_K_M": 4.9, "Q5_0": 5.5, "Q5_1": 6.0, "Q5_K_S": 5.5, "Q5_K_M": 5.7, "Q6_K": 6.6, "Q8_0": 8.5,
              "IQ4_NL": 4.5, "IQ4_XS": 4.3, "IQ3_XXS": 3.1, "IQ3_S": 3.5, "IQ2_XS": 2.4, "IQ2_XXS": 2.1,
              "IQ1_S": 1.6}
GGUF_BITS = {"f16": 16.0, "bf16": 16.0, "auto": 16.0, "q8_0": 8.5, "f32": 32.0}
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8,
                "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def _header(path: Path) -> dict:
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > 100 << 20:
            raise ValueError("safetensors header too large")
        return json.loads(f.read(length))


def weight_files(model_dir: Path) -> list[Path]:
    """The weight files transformers loads from `model_dir` (no duplicate formats)."""
    d = Path(model_dir)
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        try:
            shards = sorted(set(json.loads((d / index).read_text())["weight_map"].values()))
            return [d / s for s in shards if (d / s).is_file()]
        except (OSError, ValueError, KeyError, TypeError):
            continue
    safetensors = sorted(p for p in d.glob("*.safetensors") if p.is_file())
    named = [p for p in safetensors if not p.name.startswith("consolidated")]
    if named or safetensors:
        return named or safetensors
    return sorted(p for p in d.glob("*") if p.suffix in {".bin", ".pt", ".pth"} and p.is_file()
                  and not p.name.startswith(("training_args", "optimizer", "scheduler", "rng_state")))


def config_dtype_bytes(model_dir: Path) -> int | None:
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    config = config.get("text_config", config) if isinstance(config.get("text_config"), dict) else config
    return _DTYPE_BYTES.get(str(config.get("torch_dtype") or config.get("dtype") or ""))


def parameters(model_dir: Path) -> tuple[int, int]:
    """(parameter count, bytes on disk) of the model's weights."""
    count = stored = 0
    files = weight_files(model_dir)
    for path in files:
        stored += path.stat().st_size
        if path.suffix == ".safetensors":
            try:
                for name, info in _header(path).items():
                    if name != "__metadata__" and isinstance(info, dict):
                        count += math.prod(info.get("shape") or [1])
                continue
            except (OSError, ValueError):
                pass
        count += path.stat().st_size // (config_dtype_bytes(model_dir) or 4)
    return count, stored


def estimate(plan: ExportPlan, skip: set[str], model_dir: Path) -> dict[str, int]:
    """Bytes each stage writes into the data dir, plus `ollama` (its own volume), for the stages not reused."""
    params, stored = parameters(model_dir)
    if not params:
        return {}
    req = plan.request
    out: dict[str, int] = {}
    if "merge" not in skip and req.run.merges and not req.base_only:
        out["merge"] = params * (config_dtype_bytes(model_dir) or max(1, round(stored / params)))
    if "convert" not in skip:
        out["convert"] = int(params * GGUF_BITS.get(req.dtype, 16.0) / 8)
    sizes = {plan.gguf: int(params * GGUF_BITS.get(req.dtype, 16.0) / 8)}
    for label, path in plan.quantized.items():
        sizes[path] = int(params * QUANT_BITS.get(ExportPlan.qtype(label), 8.5) / 8)
        if f"quantize:{label}" not in skip:
            out[f"quantize:{label}"] = sizes[path]
    out["ollama"] = sum(sizes[t.gguf] for t in plan.targets)
    return out
