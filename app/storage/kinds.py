"""What each path of the data directory is, and how many bytes each kind holds. Pure: a `Tree` in, items out.

The items partition the data dir: every byte the scan counted belongs to exactly one item, so the kinds add
up to the total. A run's item holds its own files, each checkpoint is an item of its own; a known export
folder is split into its merged weights, each GGUF, each stale `.partial`, and the rest (report and work
files); an export folder no history row knows is one item.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..runs import MAX_DEPTH, RUN_MARKERS
from .scan import Tree

KINDS = {
    "run": "Training runs (their own files)",
    "checkpoint": "Checkpoints",
    "merged": "Merged weights of exports",
    "gguf": "GGUF files of exports",
    "report": "Report and work files of exports",
    "partial": "Stale .partial files",
    "orphan": "Export folders no history row knows",
    "hf_cache": "Hugging Face cache",
    "other": "Everything else (base models, datasets, databases)",
    "ollama": "Ollama models (in Ollama's own volume)",
}
HF_CACHE = "hf-cache"  # HF_HOME of the LLaMA-Factory container (compose/docker-compose.yml)
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_MARKERS = frozenset(RUN_MARKERS)


@dataclass
class Item:
    """One thing on disk (or in Ollama). `name` is its path relative to the data dir (`ollama:<model>` for
    an Ollama model): the name the delete endpoint takes."""

    name: str
    kind: str
    bytes: int
    files: int | None = 0    # None where the scan did not count files (du's sums only)
    group: str = ""          # the run or export folder it belongs to
    label: str = ""
    detail: dict = field(default_factory=dict)
    frees: int | None = None  # what deleting it gives back, measured (hard links counted once)
    safe: bool = False
    deletable: bool = False
    reason: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def classify(tree: Tree, known_exports: set[Path]) -> list[Item]:
    """Items for every byte of `tree`; `known_exports`: resolved export folders some history row names."""
    items: list[Item] = []
    root = tree.root
    covered = 0
    for top in tree.children(""):
        if top == "saves":
            items += _saves(tree)
        elif top == "exports":
            items += _exports(tree, known_exports)
        elif top == HF_CACHE:
            items += _hf_cache(tree)
        else:
            size, files = tree.size(top)
            items.append(Item(top, "other", size, files if tree.counted(top) else None, label=f"{top}/"))
        covered += tree.size(top)[0]
    rest = tree.total - covered
    if rest:
        items.append(Item(".", "other", rest, tree.files[0] if tree.files else 0,
                          label=f"files in {root.name}/ itself (history database, login, …)"))
    return items


def _rest(tree: Tree, rel: str, inner: list[str]) -> tuple[int, int]:
    size, files = tree.size(rel)
    for r in inner:
        s, f = tree.size(r)
        size, files = size - s, files - f
    return size, files


def run_folders(tree: Tree) -> list[str]:
    """Run folders under saves/, as `app.runs.discover_run_dirs` finds them (a folder holding a run file;
    nothing inside a run is a run; hidden folders and folders deeper than MAX_DEPTH are not looked into)."""
    saves = tree.index("saves")
    if saves is None:
        return []
    runs, state = [], {saves: 0}  # folder → depth below saves, for folders still looked into
    for i in range(saves + 1, len(tree.dirs)):
        depth = state.get(tree.parent[i])
        if depth is None or depth >= MAX_DEPTH:
            continue
        name = tree.dirs[i].rsplit("/", 1)[-1]
        if name.startswith("."):
            continue
        if _MARKERS & tree.names.get(i, set()):
            runs.append(tree.dirs[i])
            continue  # a run's folders are its own
        state[i] = depth + 1
    return runs


def _saves(tree: Tree) -> list[Item]:
    items = []
    runs = run_folders(tree)
    for run in runs:
        checkpoints = [c for c in tree.children(run) if CHECKPOINT.match(c.rsplit("/", 1)[-1])]
        size, files = _rest(tree, run, checkpoints)
        total = tree.size(run)[0]
        items.append(Item(run, "run", size, files, group=run, label=run.removeprefix("saves/"),
                          detail={"with_checkpoints": total, "checkpoints": len(checkpoints)}))
        for c in checkpoints:
            size, files = tree.size(c)
            step = int(CHECKPOINT.match(c.rsplit("/", 1)[-1]).group(1))
            items.append(Item(c, "checkpoint", size, files, group=run, label=c.removeprefix("saves/"),
                              detail={"step": step}))
    size, files = _rest(tree, "saves", runs)
    if size:
        items.append(Item("saves", "other", size, files, label="saves/ outside any run"))
    return items


def _exports(tree: Tree, known: set[Path]) -> list[Item]:
    items = []
    folders = tree.children("exports")
    for folder in folders:
        name = folder.rsplit("/", 1)[-1]
        size, files = tree.size(folder)
        if name.startswith("."):  # .cache: the template helper's answers
            items.append(Item(folder, "other", size, files, label=f"{folder}/ (cache)"))
        elif tree.root / folder not in known:  # the scan's paths hold no link: no need to resolve
            items.append(Item(folder, "orphan", size, files, group=folder, label=name))
        else:
            items += _export_folder(tree, folder)
    size, files = _rest(tree, "exports", folders)
    if size:
        items.append(Item("exports", "other", size, files, label="exports/ itself (lock file)"))
    return items


def _export_folder(tree: Tree, folder: str) -> list[Item]:
    items: list[Item] = []
    inner: list[str] = []
    name = folder.rsplit("/", 1)[-1]
    merged = f"{folder}/merged"
    if tree.index(merged) is not None:
        size, files = tree.size(merged)
        items.append(Item(merged, "merged", size, files, group=folder, label=f"{name}/merged"))
        inner.append(merged)
    loose = 0
    partials = sorted((n for n in tree.noted if n.rel.startswith(folder + "/") and n.rel.endswith(".partial")),
                      key=lambda n: n.rel)
    seen_partial: list[str] = []
    for n in partials:
        if any(n.rel.startswith(p + "/") for p in seen_partial):
            continue  # inside a partial folder: part of it
        seen_partial.append(n.rel)
        if n.folder:
            size, files = tree.size(n.rel)
            inner.append(n.rel)
        else:
            size, files = max(n.size, 0), 1
            loose += size
        items.append(Item(n.rel, "partial", size, files, group=folder, label=n.rel.removeprefix("exports/")))
    for n in tree.noted:
        if not n.folder and n.rel.endswith(".gguf") and n.rel.rsplit("/", 1)[0] == folder:
            items.append(Item(n.rel, "gguf", max(n.size, 0), 1, group=folder, label=n.rel.removeprefix("exports/")))
            loose += max(n.size, 0)
    size, files = _rest(tree, folder, inner)
    files -= sum(1 for i in items if i.kind in ("gguf", "partial") and tree.index(i.name) is None)
    items.append(Item(folder, "report", size - loose, max(files, 0), group=folder,
                      label=f"{name}: report and work files (eval/, stamps, merge.yaml)"))
    return items


def _hf_cache(tree: Tree) -> list[Item]:
    items, repos = [], []
    for hub in (f"{HF_CACHE}/hub",):
        for repo in tree.children(hub):
            base = repo.rsplit("/", 1)[-1]
            if base.startswith(("models--", "datasets--", "spaces--")):
                kind_, _, rest = base.partition("--")
                size, files = tree.size(repo)
                items.append(Item(repo, "hf_cache", size, files if tree.counted(repo) else None,
                                  label=f"{rest.replace('--', '/')} ({kind_[:-1]})"))
                repos.append(repo)
    size, files = _rest(tree, HF_CACHE, repos)
    items.append(Item(HF_CACHE, "hf_cache", size, files if tree.counted(HF_CACHE) else None,
                      label=f"{HF_CACHE}/ (other files)"))
    return items


def totals(items: list[Item]) -> dict[str, dict]:
    """Bytes and item count per kind, in KINDS order."""
    out = {k: {"label": label, "bytes": 0, "count": 0} for k, label in KINDS.items()}
    for item in items:
        out[item.kind]["bytes"] += item.bytes
        out[item.kind]["count"] += 1
    return {k: v for k, v in out.items() if v["count"]}
