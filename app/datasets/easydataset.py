"""easy-dataset's "Use in LLaMA Factory" exports, found on disk (pure reads, no Docker).

easy-dataset (app/api/projects/[projectId]/llamaFactory/generate/route.js, 1.5.0 to 1.7.3) writes
`<local-db>/<projectId>/dataset_info.json` with one entry per format, and the data files beside
it with relative `file_name`s: `alpaca.json` (instruction/input/output/system), `sharegpt.json`
(messages of role/content) and, from 1.5.0, `multilingual-thinking.json`, whose `formatting`
LLaMA-Factory has no converter for. Project names live in easy-dataset's SQLite database
(`prisma/db.sqlite`, table `Projects`).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

SUPPORTED = ("alpaca", "sharegpt", "openai")  # LLaMA-Factory's DATASET_CONVERTERS


@dataclass(frozen=True)
class DatasetExport:
    name: str            # the entry name easy-dataset gave it, kept in LLaMA-Factory's dataset_info.json
    project_id: str
    project: str         # project name, or its id when the database is not readable
    formatting: str
    file: str            # absolute path of the data file
    rows: int | None
    updated: float
    sha256: str          # content hash of the data file (first 16 hex digits)
    entry: dict          # the entry as easy-dataset wrote it
    problem: str         # "" when it can be registered, else one sentence

    def as_dict(self) -> dict:
        d = asdict(self)
        d["data_file"] = d.pop("file")  # gradio_client treats `file`/`path` keys as file uploads
        return d


class _FileFacts:
    """(rows, hash, rows sample) per data file, recomputed only when its size or mtime changes."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[tuple, tuple]] = {}
        self._lock = threading.Lock()

    def get(self, path: Path) -> tuple[int | None, str, list]:
        st = path.stat()
        key = (st.st_size, st.st_mtime_ns)
        with self._lock:
            hit = self._cache.get(str(path))
        if hit and hit[0] == key:
            return hit[1]
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()[:16]
        try:
            rows = json.loads(data)
        except ValueError:
            rows = None
        facts = (len(rows), digest, rows[:2000]) if isinstance(rows, list) else (None, digest, [])
        with self._lock:
            self._cache[str(path)] = (key, facts)
        return facts


FACTS = _FileFacts()


def project_names(db_path: Path) -> dict[str, str]:
    """{project id: name} from easy-dataset's database, read-only; {} when it cannot be read."""
    if not Path(db_path).is_file():
        return {}
    try:
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=2) as db:
            return {row[0]: row[1] for row in db.execute("SELECT id, name FROM Projects")}
    except sqlite3.Error:
        return {}


def check_entry(entry: dict, rows: list | None) -> str:
    """Why LLaMA-Factory could not load this entry (one sentence), or ""."""
    formatting = entry.get("formatting", "alpaca")
    if formatting not in SUPPORTED:
        return (f"formatting {formatting!r} has no LLaMA-Factory converter (it would break LLaMA Board's loader), "
                "so it is skipped")
    if rows is None:
        return "its data file is not a JSON list of records"
    if not rows:
        return "its data file holds no rows yet; export again from easy-dataset"
    columns = entry.get("columns") or {}
    if formatting == "alpaca":
        wanted = {k: columns.get(k, d) for k, d in (("prompt", "instruction"), ("query", "input"),
                                                   ("response", "output"))} if not columns else \
            {k: v for k, v in columns.items() if v}
        for key, column in wanted.items():
            if any(not isinstance(r, dict) or column not in r for r in rows):
                return f"dataset_info.json maps {key} to column {column!r}, which rows of the data file lack"
        return ""
    messages = (columns or {}).get("messages", "conversations")
    tags = entry.get("tags") or {}
    role, content = tags.get("role_tag", "from"), tags.get("content_tag", "value")
    roles = {tags.get("user_tag", "human"), tags.get("assistant_tag", "gpt"), tags.get("system_tag", "system"),
             tags.get("observation_tag", "observation"), tags.get("function_tag", "function_call")}
    for r in rows:
        turns = r.get(messages) if isinstance(r, dict) else None
        if not isinstance(turns, list):
            return f"dataset_info.json maps messages to column {messages!r}, which rows of the data file lack"
        for turn in turns:
            if not isinstance(turn, dict) or role not in turn or content not in turn:
                return f"its messages lack the role/content keys {role!r}/{content!r} that dataset_info.json names"
            if turn[role] not in roles:
                return f"a message has role {turn[role]!r}, which none of the role tags in dataset_info.json names"
    return ""


def discover(local_db: Path, db_path: Path | None = None) -> list[DatasetExport]:
    """Every entry of every project's export under easy-dataset's local-db, newest first."""
    root = Path(local_db)
    if not root.is_dir():
        return []
    names = project_names(db_path) if db_path else {}
    found: list[DatasetExport] = []
    for info in sorted(root.glob("*/dataset_info.json")):
        project_id = info.parent.name
        try:
            entries = json.loads(info.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(entries, dict):
            continue
        for name, entry in entries.items():
            if not isinstance(entry, dict) or not entry.get("file_name"):
                continue
            path = (info.parent / str(entry["file_name"])).resolve()
            if not path.is_relative_to(info.parent.resolve()) or not path.is_file():
                problem, rows, digest, sample, updated = "its data file is missing", None, "", [], info.stat().st_mtime
            else:
                rows, digest, sample = FACTS.get(path)
                updated = path.stat().st_mtime
                problem = check_entry(entry, sample if rows is not None else None)
            found.append(DatasetExport(name=str(name), project_id=project_id, project=names.get(project_id, project_id),
                                       formatting=str(entry.get("formatting", "alpaca")), file=str(path), rows=rows,
                                       updated=updated, sha256=digest, entry=entry, problem=problem))
    found.sort(key=lambda d: d.updated, reverse=True)
    return found
