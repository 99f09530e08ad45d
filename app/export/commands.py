"""Pure builders of the tool commands the pipeline runs in the tool containers.

These are the only producers of `ToolCommand`: user text travels as one argv slot or as a
YAML value, never through a shell.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..config import Settings
from ..docker_gateway import ToolCommand


def merge_yaml(base_model: str, adapter_dir: str, template: str, export_dir: str) -> str:
    """LLaMA-Factory `export` config: merge the LoRA adapter into the base model on CPU."""
    config = {
        "model_name_or_path": base_model,
        "adapter_name_or_path": adapter_dir,
        "template": template,
        "finetuning_type": "lora",
        "trust_remote_code": True,
        "export_dir": export_dir,
        "export_size": 5,
        "export_device": "cpu",
        "export_legacy_format": False,
    }
    # ASCII-only output: every other character is written as an escape, so no value (a NEL or a line
    # separator in a path, say) can be folded or re-read differently by LLaMA-Factory's YAML loader.
    return yaml.safe_dump(config, sort_keys=False, allow_unicode=False, width=1 << 16)


def merge_command(settings: Settings, yaml_path: Path) -> ToolCommand:
    return ToolCommand(settings.llamafactory_service, (settings.llamafactory_cli, "export", str(yaml_path)))


def convert_command(settings: Settings, merged_dir: Path, dtype: str, outfile: Path) -> ToolCommand:
    return ToolCommand(
        settings.llamacpp_service,
        ("python3", settings.convert_script, str(merged_dir), "--outtype", dtype, "--outfile", str(outfile)),
    )


def quantize_command(settings: Settings, source: Path, outfile: Path, quant_type: str) -> ToolCommand:
    return ToolCommand(settings.llamacpp_service, (settings.quantize_bin, str(source), str(outfile), quant_type))
