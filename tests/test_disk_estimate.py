"""The disk estimate counts each weight once and prices what every stage really writes (no Docker)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from app.export.disk import estimate, parameters, weight_files
from app.export.plan import build_request, make_plan


def safetensors(path: Path, shapes: dict[str, list[int]], dtype: str = "F32") -> None:
    header, offset = {}, 0
    for name, shape in shapes.items():
        n = 4 * shape[0] * shape[1]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)


def test_duplicate_formats_and_consolidated_files_are_counted_once(tmp_path):
    model = tmp_path / "base"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"torch_dtype": "float32", "hidden_size": 8}))
    safetensors(model / "model-00001-of-00002.safetensors", {"a": [100, 10]})
    safetensors(model / "model-00002-of-00002.safetensors", {"b": [50, 10]})
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    safetensors(model / "consolidated.safetensors", {"a": [100, 10], "b": [50, 10]})
    (model / "pytorch_model.bin").write_bytes(b"\0" * 6000)  # the same weights again, as .bin
    assert [p.name for p in weight_files(model)] == ["model-00001-of-00002.safetensors",
                                                     "model-00002-of-00002.safetensors"]
    assert parameters(model)[0] == 1500
    (model / "model.safetensors.index.json").unlink()
    assert [p.name for p in weight_files(model)] == ["model-00001-of-00002.safetensors",
                                                     "model-00002-of-00002.safetensors"]


def test_each_stage_is_priced_from_the_parameter_count(tmp_path):
    data = tmp_path / "data"
    base = data / "models" / "base"
    base.mkdir(parents=True)
    (base / "config.json").write_text(json.dumps({"torch_dtype": "float32"}))
    safetensors(base / "model.safetensors", {"w": [1000, 1000]})  # 1M parameters, fp32
    run = data / "saves" / "base" / "lora" / "r"
    run.mkdir(parents=True)
    (run / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    (run / "adapter_model.safetensors").write_bytes(b"x")
    req = build_request(data, run="base/lora/r", template="llama2", dtype="f16", quant_types=["Q4_K_M", "Q8_0"],
                        ollama_name="m")
    plan = make_plan(data, req)
    parts = estimate(plan, set(), base)
    assert parts == {"merge": 4_000_000, "convert": 2_000_000, "quantize:Q4_K_M": 612_500, "quantize:Q8_0": 1_062_500,
                     "ollama": 612_500 + 1_062_500}
    reused = estimate(plan, {"merge", "convert", "quantize:Q8_0"}, base)
    assert reused == {"quantize:Q4_K_M": 612_500, "ollama": 612_500 + 1_062_500}
