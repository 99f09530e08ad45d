"""Pure builders of the commands Storage runs in a tool container (argv only; the path is one argv slot)."""

from __future__ import annotations

from pathlib import Path

from ..config import Settings
from ..docker_gateway import ToolCommand


def remove_command(settings: Settings, path: Path) -> ToolCommand:
    """`rm -rf -- PATH` in the LLaMA-Factory container: for what its user wrote and the app's user may not
    delete (rm removes a link itself and follows none inside a folder)."""
    return ToolCommand(settings.llamafactory_service, ("rm", "-rf", "--", str(path)))
