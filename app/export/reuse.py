"""Reuse stamps: a stage whose inputs are unchanged since it last succeeded is skipped.

A stamp is a small JSON file beside the plan's work folder recording the stage's input key
(a hash of everything that decides its output) and, for a file, its size. An artifact whose
stamp is missing, stale or does not match its file is rebuilt.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..safe_fs import SafeDir
from .plan import ExportPlan


class Stamps:
    def __init__(self, plan: ExportPlan, fs: SafeDir) -> None:
        self.plan = plan
        self.fs = fs

    def _path(self, stage: str) -> Path:
        return self.plan.stamp_path(stage.replace(":", "-"))

    def valid(self, stage: str, artifact: Path) -> dict | None:
        """The stamp of `stage` if it matches the plan's key and `artifact` as it is on disk."""
        try:
            stamp = json.loads(self._path(stage).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(stamp, dict) or stamp.get("key") != self.plan.keys.get(stage) or not artifact.exists():
            return None
        if artifact.is_file() and stamp.get("size") != artifact.stat().st_size:
            return None
        return stamp

    def write(self, stage: str, artifact: Path, **extra) -> None:
        data = {"key": self.plan.keys[stage], "finished": time.time(), **extra}
        if artifact.is_file():
            data["size"] = artifact.stat().st_size
        self.fs.write_text(self._path(stage), json.dumps(data))

    def reusable(self) -> set[str]:
        """Stages whose output can be reused; each one only if everything it was built from can be."""
        plan = self.plan
        skip: set[str] = set()
        if plan.request.base_only or self.valid("merge", plan.merged_dir):
            skip.add("merge")
            if self.valid("convert", plan.gguf):
                skip.add("convert")
                for q, path in plan.quantized.items():
                    if self.valid(f"quantize:{q}", path):
                        skip.add(f"quantize:{q}")
        return skip
