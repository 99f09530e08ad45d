"""Datasets between the tools: easy-dataset's exports, registered for LLaMA-Factory's training."""

from __future__ import annotations

from pathlib import Path

from ..config import Settings
from ..safe_fs import SafeDir
from .easydataset import DatasetExport, discover
from .registry import RegistryError, register, registered


def easydataset_db(settings: Settings) -> Path:
    """easy-dataset's SQLite database beside its local-db folder (prisma/db.sqlite)."""
    return Path(settings.easydataset_dir).parent / "prisma" / "db.sqlite"


def exports(settings: Settings) -> list[DatasetExport]:
    return discover(settings.easydataset_dir, easydataset_db(settings))


def status_of(export: DatasetExport, current: dict) -> str:
    if export.problem:
        return f"skipped: {export.problem}"
    entry = current.get(export.name)
    if not isinstance(entry, dict):
        return "not registered"
    return "registered" if entry.get("file_name") == export.file else "registered (another file)"


def register_by_name(settings: Settings, name: str) -> str:
    matches = [e for e in exports(settings) if e.name == name]
    if not matches:
        raise RegistryError(f"No easy-dataset export named {name!r} under {settings.easydataset_dir}.")
    folder = Path(settings.llamafactory_data)
    inside = SafeDir(settings.data_dir).contains(folder)
    return register(folder, matches[0], Path(settings.data_dir) if inside else folder)


__all__ = ["DatasetExport", "RegistryError", "easydataset_db", "exports", "register_by_name", "registered",
           "status_of"]
