"""Free space: the data dir's filesystem (statvfs), Ollama's volume (measured in its container), and the
banner shown when either falls under TUNEDECK_DISK_WARN_GB."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from .rules import format_bytes

GIB = 1 << 30


@dataclass(frozen=True)
class FreeSpace:
    """Bytes free (for an unprivileged writer) and in all; None with a `note` when unknown."""

    where: str
    free_bytes: int | None
    total_bytes: int | None
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def text(self) -> str:
        if self.free_bytes is None:
            return f"unknown ({self.note})" if self.note else "unknown"
        return f"{format_bytes(self.free_bytes)} free of {format_bytes(self.total_bytes)}"


def data_dir_free(path: Path) -> FreeSpace:
    try:
        st = os.statvfs(path)
    except OSError as exc:
        return FreeSpace(str(path), None, None, f"statvfs failed: {exc.strerror or exc}")
    return FreeSpace(str(path), st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize)


def banner(spaces: dict[str, FreeSpace], warn_gb: float, safe_bytes: int | None = None) -> str:
    """One line when a known free space is under `warn_gb` GiB (0: never), naming what could be freed."""
    if warn_gb <= 0:
        return ""
    low = [(key, s) for key, s in spaces.items() if s.free_bytes is not None and s.free_bytes < warn_gb * GIB]
    if not low:
        return ""
    where = {"data_dir": "the data directory", "ollama": "Ollama's volume"}
    parts = [f"{format_bytes(s.free_bytes)} free on {where.get(key, key)} ({s.where})" for key, s in low]
    text = f"⚠️ Low disk: {'; '.join(parts)}, under {warn_gb:g} GiB."
    if any(key == "data_dir" for key, _ in low) and safe_bytes:
        text += f" The Storage tab lists {format_bytes(safe_bytes)} that is safe to delete."
    elif any(key == "data_dir" for key, _ in low):
        text += " See the Storage tab for where it went."
    if any(key == "ollama" for key, _ in low):
        text += " Delete Ollama models you no longer serve in the Storage tab."
    return text
