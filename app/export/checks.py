"""Checks run before any export work (base model, adapter fit, disk); each failure is one clear sentence."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

from .disk import estimate
from .vocab import vocabulary_size
from .plan import ExportPlan, ExportRequest

_HIDDEN_INPUT_MODULES = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor shapes from a safetensors header, without loading any weights."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > 100 << 20:
            raise ValueError("safetensors header too large")
        header = json.loads(f.read(length))
    return {k: v["shape"] for k, v in header.items() if isinstance(v, dict) and "shape" in v}


def base_config(base: str) -> dict | None:
    path = Path(base) / "config.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError:
        return None
    return data.get("text_config", data) if isinstance(data.get("text_config"), dict) and "hidden_size" not in data else data


def quantized_base_problem(config: dict) -> str | None:
    q = config.get("quantization_config")
    if not q:
        return None
    method = q.get("quant_method", "unknown")
    bits = "4-bit" if q.get("load_in_4bit") else "8-bit" if q.get("load_in_8bit") else q.get("bits", "")
    return (f"The base model is quantized ({method} {bits}); LLaMA-Factory cannot merge a LoRA adapter into a "
            "quantized model, so point Base model at the unquantized weights.").replace("  ", " ")


def adapter_mismatch(run_dir: Path, config: dict) -> str | None:
    """Compare the adapter's LoRA shapes (and resized vocab) with the base model's config."""
    weights = Path(run_dir) / "adapter_model.safetensors"
    if not weights.is_file():
        return None
    try:
        shapes = safetensors_shapes(weights)
    except (OSError, ValueError, struct.error):
        return "The adapter weights (adapter_model.safetensors) cannot be read."
    hidden = config.get("hidden_size")
    vocab = config.get("vocab_size")
    for name, shape in shapes.items():
        if hidden and "lora_A" in name and any(f".{m}." in name for m in _HIDDEN_INPUT_MODULES):
            if len(shape) == 2 and shape[1] != hidden:
                return (f"The adapter does not fit this base model: it was trained on hidden size {shape[1]}, "
                        f"the base has {hidden}.")
        if vocab and ("embed_tokens" in name or "lm_head" in name) and "lora" not in name and len(shape) == 2:
            resized = shape[0] > vocab and (vocabulary_size(Path(run_dir)) or 0) > vocab  # the trainer added tokens
            if shape[0] != vocab and not resized:
                return (f"The adapter does not fit this base model: its vocabulary has {shape[0]} tokens, "
                        f"the base has {vocab}.")
    adapter_cfg = json.loads((Path(run_dir) / "adapter_config.json").read_text() or "{}")
    if adapter_cfg.get("peft_type", "LORA") != "LORA":
        return f"The run holds a {adapter_cfg.get('peft_type')} adapter; only LoRA adapters can be merged."
    init = adapter_cfg.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith("pissa"):
        return ("The run's adapter was trained with PiSSA, which changes the base weights it is relative to, and "
                "the run does not keep those; train with pissa_convert: true and export the run's pissa_converted "
                "folder (a plain LoRA adapter on the original base).")
    return None


def room_needed(need: int) -> int:
    """Free bytes an export writing `need` bytes asks for: 5 % and 64 MiB of margin."""
    return int(need * 1.05) + (64 << 20)


def disk_problem(data_dir: Path, plan: ExportPlan, skip: set[str]) -> tuple[str | None, dict]:
    """One sentence when the data dir cannot hold what the export writes; (sentence, bytes by stage)."""
    req = plan.request
    model = req.run.path if not req.run.merges and not req.base_only else req.base_model
    if not os.path.isdir(model):
        return None, {}
    parts = estimate(plan, skip, Path(model))
    need = sum(v for k, v in parts.items() if k != "ollama")
    free = shutil.disk_usage(data_dir).free
    if need and free < room_needed(need):
        detail = ", ".join(f"{k.split(':')[-1]} {v / 2**30:.1f}" for k, v in parts.items() if k != "ollama")
        return (f"Not enough free disk in {data_dir}: the export writes about {need / 2**30:.1f} GiB ({detail}), "
                f"{free / 2**30:.1f} GiB are free."), parts
    return None, parts


def base_model_problems(request: ExportRequest) -> list[str]:
    """What makes the base model unusable, checked before anything reads it (a hub id is resolved
    by LLaMA-Factory in its container)."""
    base = request.base_model
    if not os.path.isabs(base):
        return []
    if not os.path.isdir(base):
        return [f"The base model folder {base} does not exist."]
    config = base_config(base)
    if config is None:
        return [f"The base model folder {base} has no readable config.json."]
    problems = [p for p in (quantized_base_problem(config), adapter_mismatch(Path(request.run.path), config)) if p]
    commas = [a for a in (*request.run.prior_adapters, request.run.path) if "," in a]
    if commas and request.run.merges and not request.base_only:
        problems.append(f"The adapter folder {commas[0]} has a comma in its path, which LLaMA-Factory reads as a "
                        "list separator; rename the folder.")
    missing = [a for a in request.run.prior_adapters if not os.path.isdir(a)]
    if missing and not request.base_only:
        problems.append(f"The run was trained on top of the adapter {missing[0]}, which is not a folder any more; "
                        "restore it (the export must merge it first, as training did).")
    return problems
