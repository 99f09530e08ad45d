"""The storage report: the scan, each path's kind, the rules' verdicts, Ollama's models and free space.

`build` is what the Storage tab, the `/storage` API, the delete endpoint (which re-checks everything on
a fresh report) and the export pre-flight's "not enough disk" use. It reads the disk and SQLite: call it
from a worker thread.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..export.history import History
from . import rules
from .context import STILL_TRAINING, RunningExport, export_rows, run_facts, trained_on_top
from .freespace import FreeSpace, data_dir_free
from .kinds import CHECKPOINT, Item, classify, run_folders, totals
from .scan import Tree, measure, scan_tree

log = logging.getLogger(__name__)
STAGING_PREFIX = "tunedeck-check-"
KEPT = {  # why the kinds no rule frees are kept
    "run": "a training run's own files (final weights, logs, arguments)",
    "gguf": "a file the export delivers (deleting it means converting again)",
    "report": "the export's evaluation and reuse files: they keep a re-export and its report fast",
    "hf_cache": "LLaMA-Factory's download cache (HF_HOME): deleting it means downloading again",
    "other": "not made by TuneDeck's exports (base models, datasets, databases, caches)",
}  # the export's load stage checks a model under this name first
SAFE_GROUPS = (("merged", "merged weights of {n} export(s)"), ("checkpoint", "{n} checkpoint(s)"),
               ("partial", "{n} stale .partial file(s)"), ("orphan", "{n} export folder(s) no history row knows"),
               ("ollama", "{n} staging model(s) in Ollama"))


@dataclass
class StorageReport:
    data_dir: Path
    tree: Tree
    items: list[Item]
    free: dict[str, FreeSpace]
    running_export: RunningExport | None = None
    trainings: dict[str, str] = field(default_factory=dict)  # run → state, for runs still training
    ollama_note: str = ""
    made: float = field(default_factory=time.time)
    _by_name: dict = field(default_factory=dict, repr=False)

    def item(self, name: str) -> Item | None:
        if len(self._by_name) != len(self.items):
            self._by_name = {i.name: i for i in self.items}
        return self._by_name.get(name)

    @property
    def safe_items(self) -> list[Item]:
        return [i for i in self.items if i.safe]

    def safe_bytes(self, kinds: tuple[str, ...] | None = None) -> int:
        """Bytes that deleting every safe item gives back (Ollama's apart: another volume)."""
        return sum(i.frees if i.frees is not None else i.bytes for i in self.safe_items
                   if (kinds is None and i.kind != "ollama") or (kinds is not None and i.kind in kinds))

    def safe_summary(self) -> str:
        """E.g. "13.4 GiB: merged weights of 1 export(s) 13.2 GiB, 2 checkpoint(s) 0.2 GiB"."""
        parts = []
        for kind, text in SAFE_GROUPS:
            chosen = [i for i in self.safe_items if i.kind == kind]
            if chosen and kind != "ollama":
                parts.append(f"{text.format(n=len(chosen))} {rules.format_bytes(self.safe_bytes((kind,)))}")
        return f"{rules.format_bytes(self.safe_bytes())}" + (f": {', '.join(parts)}" if parts else "")

    def as_dict(self) -> dict:
        """JSON for the API (no `path` keys: gradio_client would take them for files)."""
        tree = self.tree
        return {
            "data_dir": str(self.data_dir),
            "total_bytes": tree.total,
            "scan": {"engine": tree.engine, "folders": len(tree.dirs), "seconds": round(tree.seconds, 3),
                     # files are counted where names are read (runs, exports) with du, everywhere without
                     "files": tree.file_count if tree.engine == "python" else None,
                     "links_not_followed": tree.link_count, "links": [list(x) for x in tree.links[:50]],
                     "errors": tree.errors[:50]},
            "free": {k: v.as_dict() for k, v in self.free.items()},
            "kinds": totals(self.items),
            "items": [i.as_dict() for i in self.items],
            "safe": {"bytes": self.safe_bytes(), "count": len([i for i in self.safe_items if i.kind != "ollama"]),
                     "summary": self.safe_summary()},
            "running": {"export": self.running_export.job if self.running_export else None,
                        "trainings": sorted(self.trainings)},
            "ollama": self.ollama_note,
        }


def build(data_dir: Path, history: History | None, running_job=None, *, other_exporter: bool = False,
          ollama_models: list[dict] | None = None, ollama_note: str = "", loaded_by: dict[str, str] | None = None,
          free: dict[str, FreeSpace] | None = None, on_progress: Callable[[int, int], None] | None = None,
          should_stop: Callable[[], bool] | None = None, engine: str = "auto") -> StorageReport:
    """Scan `data_dir` and judge every item. `running_job`: the export running now (an ExportJob);
    `other_exporter`: another process holds the export lock; `ollama_models`: Ollama's /api/tags."""
    root = Path(data_dir).resolve()
    tree = scan_tree(root, on_progress, should_stop, engine)
    rows = history.rows() if history is not None else []
    by_folder = export_rows(rows, root)
    items = classify(tree, set(by_folder))
    running = RunningExport.of(running_job)
    report = StorageReport(root, tree, items, dict(free or {}), running, ollama_note=ollama_note)
    if not report.free.get("data_dir"):
        report.free["data_dir"] = data_dir_free(root)
    _judge(report, by_folder, other_exporter)
    loaded_by = loaded_by or {}
    for model in ollama_models or []:
        name = str(model.get("name") or "")
        # loaded as `name`, listed as `name:latest`
        job = loaded_by.get(name) or loaded_by.get(name.removesuffix(":latest"))
        report.items.append(_ollama_item(model, running, job))
    return report


def _judge(report: StorageReport, by_folder: dict, other_exporter: bool) -> None:
    root, tree, running = report.data_dir, report.tree, report.running_export
    exports_dir = root / "exports"
    runs = run_folders(tree)
    steps_of = {run: sorted(int(CHECKPOINT.match(c.rsplit("/", 1)[-1]).group(1)) for c in tree.children(run)
                            if CHECKPOINT.match(c.rsplit("/", 1)[-1])) for run in runs}
    facts = {run: run_facts(root, run, steps) for run, steps in steps_of.items()}
    report.trainings = {run: f.state for run, f in facts.items() if f.state in STILL_TRAINING}
    on_top = trained_on_top(root, runs)
    verdicts: dict[str, rules.Verdict] = {}
    for run, steps in steps_of.items():
        f = facts[run]
        if f.state in STILL_TRAINING:
            for s in steps:
                verdicts[f"{run}/checkpoint-{s}"] = rules.Verdict(
                    False, f"the run is still training (its log was written {f.age_s or 0:.0f} s ago)")
            continue
        kept_for = {s: f"run {on_top[root / run / f'checkpoint-{s}'].removeprefix('saves/')} was "
                       "trained on top of it" for s in steps if root / run / f"checkpoint-{s}" in on_top}
        for s, v in rules.checkpoint_verdicts(steps, f.losses, f.eval_losses, f.trainer_best, f.has_final,
                                              kept_for).items():
            verdicts[f"{run}/checkpoint-{s}"] = v
            item = report.item(f"{run}/checkpoint-{s}")
            if item is not None:
                item.detail.update(loss=rules.at(f.losses, s), eval_loss=rules.at(f.eval_losses, s))
    for item in report.items:
        verdict = None
        if item.kind == "checkpoint":
            verdict = verdicts.get(item.name)
        elif item.kind == "merged":
            folder = root / item.group
            verdict = rules.merged_verdict([r.as_fact(folder) for r in by_folder.get(folder, [])])
        elif item.kind == "partial":
            inside = running is not None and (running.workdir is None or
                                              (running.workdir in (root / item.name).parents))
            verdict = rules.partial_verdict(running.job if running else None, inside)
        elif item.kind == "orphan":
            verdict = rules.orphan_verdict()
        if verdict is None:
            item.reason = "still training" if item.name in report.trainings else KEPT.get(item.kind, "")
            continue
        item.safe, item.reason = verdict.safe, verdict.reason
        path = root / item.name
        if item.safe and running is not None:
            conflict = running.conflict(path, exports_dir)
            if conflict:
                item.safe, item.reason = False, conflict
        if item.safe and other_exporter and (path.is_relative_to(exports_dir) or path.is_relative_to(root / "saves")):
            # its export folder, run and checkpoints are not known here: nothing it may read is deleted
            item.safe, item.reason = False, "another TuneDeck process is exporting on this data directory"
        if item.safe:  # what deleting it gives back, exactly (its size stays the scan's: the kinds add up)
            try:
                item.frees = measure(path)[1]
            except OSError as exc:  # gone since the scan
                item.safe, item.reason = False, f"cannot be read now ({exc.strerror or exc})"
        item.deletable = item.safe


def _ollama_item(model: dict, running: RunningExport | None, job: str | None) -> Item:
    name = str(model.get("name") or model.get("model") or "")
    details = model.get("details") or {}
    item = Item(f"ollama:{name}", "ollama", int(model.get("size") or 0), label=name,
                detail={"quantization": details.get("quantization_level", ""), "family": details.get("family", ""),
                        "modified": str(model.get("modified_at") or "")[:19], "export_job": job or ""})
    short = name.removesuffix(":latest")
    if running is not None and (name in running.targets or short in running.targets):
        item.reason = f"the running export (job {running.job}) creates it"
    elif name.startswith(STAGING_PREFIX):
        verdict = rules.staging_verdict(running.job if running else None)
        item.safe, item.reason = verdict.safe, verdict.reason
    else:
        item.reason = f"made by export job {job}" if job else "in Ollama (not loaded by TuneDeck)"
    item.deletable = item.safe or (not item.reason.startswith("the running export") and
                                   not name.startswith(STAGING_PREFIX))
    return item
