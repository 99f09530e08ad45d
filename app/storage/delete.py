"""Deleting what the storage report allows: checked again on a fresh report, confirmed, link-safe, and
recorded in the export history so its rows say what is gone (a re-export rebuilds it).

`remove` is the only function here that deletes a file or folder of the data dir: it walks from the data
dir down with `O_NOFOLLOW`, one component at a time, and removes the last one with `shutil.rmtree(dir_fd=)`
(fd-based: it never follows a link, it unlinks it) or `os.unlink(dir_fd=)`. A link is never deleted as
an item, and a link inside a deleted folder is removed without touching what it points to.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

from ..export.history import History
from ..export.validation import InvalidInput, check_text, confine
from ..ollama import OllamaClient, OllamaError
from .freespace import data_dir_free
from .kinds import Item
from .report import StorageReport
from .rules import format_bytes

log = logging.getLogger(__name__)
MAX_ITEMS = 1000


class Refused(Exception):
    """A path that must not be deleted; the message is one sentence."""


def remove(data_dir: Path, rel: str) -> None:
    """Delete `data_dir/rel` (a file or a folder) without following any link on the way or inside."""
    parts = PurePosixPath(rel).parts
    if not parts or PurePosixPath(rel).is_absolute() or any(p in ("", ".", "..") for p in parts):
        raise Refused(f"{rel!r} is not a path inside the data directory.")
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(Path(data_dir).resolve(), flags)
    try:
        for part in parts[:-1]:
            try:
                nfd = os.open(part, flags, dir_fd=fd)
            except OSError as exc:  # ELOOP: a link where a folder was
                raise Refused(f"{rel} cannot be reached without following a link ({exc.strerror}).") from None
            os.close(fd)
            fd = nfd
        name = parts[-1]
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            raise Refused(f"{rel} is a link; TuneDeck never deletes through links.")
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(name, dir_fd=fd)
        else:
            os.unlink(name, dir_fd=fd)
    finally:
        os.close(fd)


@dataclass
class Outcome:
    confirmed: bool
    items: list[Item]
    bytes: int                      # data dir bytes the deletion frees (measured, hard links counted once)
    ollama_bytes: int               # what Ollama reported for the models (shared blobs stay)
    deleted: list[str] = field(default_factory=list)
    message: str = ""
    free_after: int | None = None

    def as_dict(self) -> dict:
        return {"confirmed": self.confirmed, "bytes": self.bytes, "ollama_bytes": self.ollama_bytes,
                "items": [{"name": i.name, "kind": i.kind, "bytes": i.frees if i.frees is not None else i.bytes}
                          for i in self.items],
                "deleted": self.deleted, "message": self.message, "free_after": self.free_after}


def parse_names(names: object) -> list[str]:
    """The requested item names: a list of text (one per item) or text with one name per line."""
    if isinstance(names, str):
        names = [n for n in names.splitlines() if n.strip()]
    if not isinstance(names, (list, tuple)) or not names:
        raise InvalidInput("Choose at least one item to delete.")
    if len(names) > MAX_ITEMS:
        raise InvalidInput(f"Choose at most {MAX_ITEMS} items at a time.")
    out = []
    for raw in names:
        name = check_text("Item", raw, 4096).strip()
        if name and name not in out:
            out.append(name)
    if not out:
        raise InvalidInput("Choose at least one item to delete.")
    return out


def choose(report: StorageReport, names: list[str]) -> list[Item]:
    """The report's items for `names`; one sentence (nothing deleted) for the first that cannot be."""
    chosen = []
    for name in names:
        if not name.startswith("ollama:"):
            path = confine(report.data_dir, name, "Item")  # a link out of the data dir is refused here
            if path != Path(os.path.normpath(report.data_dir / name)):
                raise InvalidInput(f"{name} is a link or goes through one; TuneDeck never deletes through links.")
            name = path.relative_to(report.data_dir).as_posix() if path != report.data_dir else "."
        item = report.item(name)
        if item is None:
            raise InvalidInput(f"{name} is not something TuneDeck can delete: the Storage tab lists what it can "
                               "(merged weights, checkpoints, stale .partial files, orphaned export folders, "
                               "Ollama models).")
        if not item.deletable:
            raise InvalidInput(f"{name} cannot be deleted: {item.reason or 'TuneDeck does not count it as safe'}.")
        chosen.append(item)
    return chosen


def execute(report: StorageReport, items: list[Item], confirm: bool, history: History | None,
            ollama: OllamaClient | None, as_owner: Callable[[Path], None] | None = None) -> Outcome:
    """Without `confirm`, say what would be freed; with it, delete, record it in the history and say what
    was freed. Call it on a report made while no export can start (ExportManager.hold).

    `as_owner(path)` deletes what the app's own user may not: files the tool containers wrote as their user
    (checkpoints in saves/), removed by a tool container after the same link-free checks."""
    files = [i for i in items if i.kind != "ollama"]
    models = [i for i in items if i.kind == "ollama"]
    nbytes = sum(i.frees if i.frees is not None else i.bytes for i in files)
    obytes = sum(i.bytes for i in models)
    what = _describe(files, models, nbytes, obytes)
    outcome = Outcome(confirm, items, nbytes, obytes)
    if not confirm:
        outcome.message = f"Deleting {what} needs confirmation (confirm=true); nothing was deleted."
        return outcome
    done_files, done_models = [], []
    try:
        for item in files:
            try:
                remove(report.data_dir, item.name)
            except PermissionError:
                if as_owner is None:
                    raise
                as_owner(report.data_dir / item.name)
            done_files.append(item)
            outcome.deleted.append(item.name)
            log.info("storage: deleted %s (%s, %d bytes)", item.name, item.kind, item.frees or item.bytes)
        for item in models:
            ollama.delete(item.label)
            done_models.append(item)
            outcome.deleted.append(item.name)
            log.info("storage: deleted Ollama model %s", item.label)
    except (Refused, OllamaError, OSError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InvalidInput(f"Deleting {item.name} failed ({reason}); "
                           + (f"{', '.join(outcome.deleted)} were deleted before it." if outcome.deleted
                              else "nothing was deleted.")) from None
    finally:
        if history is not None and (done_files or done_models):
            record(history, report, done_files, done_models)
    free = data_dir_free(report.data_dir)
    outcome.free_after = free.free_bytes
    outcome.message = f"Deleted {what}" + (f"; {format_bytes(free.free_bytes)} now free in the data directory."
                                           if free.free_bytes is not None else ".")
    return outcome


def _describe(files: list[Item], models: list[Item], nbytes: int, obytes: int) -> str:
    parts = []
    if files:
        parts.append(f"{len(files)} item(s) from the data directory, freeing {format_bytes(nbytes)} "
                     f"({nbytes:,} bytes)")
    if models:
        parts.append(f"{len(models)} Ollama model(s) ({', '.join(m.label for m in models)}), "
                     f"{format_bytes(obytes)} as Ollama reports them (blobs other models share stay)")
    return " and ".join(parts)


def record(history: History, report: StorageReport, files: list[Item], models: list[Item]) -> None:
    """Every history row whose export folder, merged folder, artifacts, run or Ollama models a deletion
    touched says so in its result's `deleted` (and an artifact whose file went gets `deleted` too)."""
    now = time.time()
    root = report.data_dir
    gone = {(root / i.name): {"what": i.kind, "bytes": i.frees if i.frees is not None else i.bytes, "at": now}
            for i in files}
    names = {i.label: {"what": "ollama", "bytes": i.bytes, "at": now} for i in models}
    marks: dict[str, dict] = {}
    artifacts: dict[str, list[str]] = {}

    def hit(p: object, parts_too: bool) -> Path | None:
        """The deleted path that is `p` or holds it (or, `parts_too`, lies inside it)."""
        if not isinstance(p, str) or not p:
            return None
        path = Path(p) if os.path.isabs(p) else root / p
        return next((t for t in gone if t == path or t in path.parents or (parts_too and path in t.parents)), None)

    for row in history.rows():
        result = row.get("result") or {}
        request = row.get("request") or {}
        touched: dict[str, dict] = {}
        run = request.get("run")
        for p, parts_too in ((result.get("workdir"), True), (result.get("merged_dir"), False),
                             (str(root / "saves" / run) if isinstance(run, str) and run else None, False)):
            target = hit(p, parts_too)
            if target is not None:
                touched[target.relative_to(root).as_posix()] = gone[target]
        for key, art in (result.get("artifacts") or {}).items():
            path = Path(str((art or {}).get("file") or ""))
            target = next((t for t in gone if t == path or t in path.parents), None)
            if target is not None:
                touched[target.relative_to(root).as_posix()] = gone[target]
                artifacts.setdefault(row["id"], []).append(key)
        for model in [*(result.get("ollama_models") or []), *(result.get("loaded") or {})]:
            for name in (model, f"{model}:latest"):
                if name in names:
                    touched[f"ollama:{name}"] = names[name]
        if touched:
            marks[row["id"]] = touched
    if marks:
        history.mark_deleted(marks, artifacts)
    for name in names:
        history.forget_load(name)
        history.forget_load(name.removesuffix(":latest"))
