"""LLaMA Board's saved arguments ("Save arguments" writes `llamaboard_config/<name>.yaml` under its working
directory, the data dir): listed, and turned into a training YAML by LLaMA Board's own code in its container."""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from ..config import Settings
from ..docker_gateway import DockerGateway
from ..export.validation import InvalidInput, confine
from .checks import ask_helper

FOLDER = "llamaboard_config"  # LLaMA-Factory 0.9.5 webui/common.py DEFAULT_CONFIG_DIR


def saved_arguments(data_dir: Path) -> list[str]:
    """The names of LLaMA Board's saved argument files, newest first."""
    folder = Path(data_dir) / FOLDER
    try:
        files = [p for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file() and not p.is_symlink()]
    except OSError:
        return []
    return [p.name for p in sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)]


def board_yaml(settings: Settings, gateway: DockerGateway, name: str, model_path: str = "") -> str:
    """The training YAML LLaMA Board would launch from the saved arguments `name`, with a new output_dir."""
    path = confine(Path(settings.data_dir) / FOLDER, name, "Saved arguments")
    if not path.is_file():
        raise InvalidInput(f"LLaMA Board has no saved arguments named {name!r}.")
    output = f"{path.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    result = ask_helper(settings, gateway, "board_args.py", str(path), model_path, output, what="LLaMA Board's code")
    if not result.get("ok"):
        raise InvalidInput(str(result.get("error")))
    return yaml.safe_dump(result["args"], sort_keys=False, allow_unicode=True)
