"""The export stages, one module each. A stage is `run(ctx)`: it reads the plan, does its work
through `ctx.tools` (tool containers) or `ctx.ollama`, and records results on the job."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from ...config import Settings
from ...docker_gateway import DockerGateway
from ...ollama import OllamaClient
from ...safe_fs import SafeDir
from ..history import History
from ..jobs import ExportJob
from ..plan import ExportPlan, ExportRequest
from ..reuse import Stamps
from ..runner import ToolRunner


@dataclass
class StageContext:
    job: ExportJob
    settings: Settings
    gateway: DockerGateway
    ollama: OllamaClient
    history: History
    tools: ToolRunner
    skip: set[str] = field(default_factory=set)
    stamps: Stamps | None = None
    extras: dict = field(default_factory=dict)  # what one stage hands the next: eval set, chat format

    @property
    def plan(self) -> ExportPlan:
        assert self.job.plan is not None, "the plan is made by the preflight stage"
        return self.job.plan

    @property
    def request(self) -> ExportRequest:
        return self.job.request

    @property
    def data_dir(self) -> Path:
        return Path(self.settings.data_dir)

    @cached_property
    def fs(self) -> SafeDir:
        """Every write of a stage in the data directory goes through this (no symlink is followed); made once
        per export, as the data directory is fixed for it."""
        return SafeDir(self.settings.data_dir)

    def emit(self, text: str) -> None:
        self.job.emit(text)

    def reused(self, stage: str, what: str) -> bool:
        """True (and said in the log) when `stage`'s output can be reused."""
        if stage not in self.skip:
            return False
        self.emit(f"reused {what}")
        self.job.set_stage_status(stage, "reused")
        return True

    def claim(self, final: Path, folder: bool = False) -> Path:
        """The `.partial` path a tool writes `final` to, created here right before the tool starts (so a
        cancel at any moment has something to clean) and removed if the job does not succeed. Whatever sat
        at that name (a stale partial, or a link planted by code in a tool container) is removed first, and
        the work folder must be a real folder all the way down: the tool is handed nothing TuneDeck did not
        just make."""
        from ..plan import partial

        out = self.job.add_partial(partial(final))
        self.fs.remove(out)
        if folder:
            self.fs.new_dir(out)
        else:
            self.fs.new_file(out)
        return out

    def artifact(self, path: Path) -> None:
        """List a finished file in the job's result."""
        self.job.update_result("artifacts", **{path.name: {"file": str(path), "bytes": path.stat().st_size}})
