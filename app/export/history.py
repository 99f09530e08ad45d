"""Persisted export history (SQLite in the data directory); survives restarts.

Listings never read a job's log (up to 20k lines): it is fetched only for the one job shown.
Every connection is closed after use; writes are serialised by a lock.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Iterator

from ..safe_fs import SafeDir

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    finished REAL,
    status TEXT NOT NULL,
    run TEXT NOT NULL,
    request TEXT NOT NULL,
    stages TEXT NOT NULL DEFAULT '{}',
    result TEXT NOT NULL DEFAULT '{}',
    error TEXT NOT NULL DEFAULT '',
    log TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs(created);
CREATE TABLE IF NOT EXISTS ollama_loads (
    model TEXT PRIMARY KEY,
    load_key TEXT NOT NULL,
    job_id TEXT NOT NULL,
    loaded REAL NOT NULL
);
"""
FINAL = ("succeeded", "failed", "cancelled", "interrupted")
SUMMARY_COLUMNS = ("id", "created", "finished", "status", "run", "request", "stages", "result", "error")
_JSON_COLUMNS = ("request", "stages", "result")


class History:
    def __init__(self, db_path: Path, root: Path | None = None) -> None:
        """`root`: the data directory the database lies in (default: its own folder); nothing on the way
        from there to the file may be a link (a tool container could plant one)."""
        self.path = Path(db_path)
        self.fs = SafeDir(root if root is not None else self.path.parent)
        self.fs.mkdirs(self.path.parent)
        self._lock = threading.Lock()
        with self._db() as db:
            db.executescript(_SCHEMA)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """A connection committed on success and always closed."""
        with closing(self.fs.sqlite(self.path, timeout=10)) as db:
            db.row_factory = sqlite3.Row
            with db:
                yield db

    def add(self, job_id: str, run: str, request: dict) -> None:
        with self._lock, self._db() as db:
            db.execute(
                "INSERT INTO jobs (id, created, status, run, request) VALUES (?, ?, 'running', ?, ?)",
                (job_id, time.time(), run, json.dumps(request)),
            )

    def update(self, job_id: str, *, status: str | None = None, stages: dict | None = None,
               result: dict | None = None, error: str | None = None, log: str | None = None) -> None:
        fields: dict[str, object] = {}
        if status is not None:
            fields["status"] = status
            if status in FINAL:
                fields["finished"] = time.time()
        if stages is not None:
            fields["stages"] = json.dumps(stages)
        if result is not None:
            fields["result"] = json.dumps(result)
        if error is not None:
            fields["error"] = error
        if log is not None:
            fields["log"] = log
        if not fields:
            return
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._lock, self._db() as db:
            db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*fields.values(), job_id))
            if status == "succeeded" and result is not None:
                for model, key in (result.get("loaded") or {}).items():
                    db.execute("INSERT OR REPLACE INTO ollama_loads (model, load_key, job_id, loaded) "
                               "VALUES (?, ?, ?, ?)", (model, key, job_id, time.time()))

    def _select(self, where: str = "", params: tuple = (), tail: str = "") -> list[dict]:
        cols = ", ".join(SUMMARY_COLUMNS)
        with self._db() as db:
            rows = db.execute(f"SELECT {cols} FROM jobs {where} {tail}", params).fetchall()
        return [_decode(r) for r in rows]

    def running(self) -> list[dict]:
        return self._select("WHERE status = 'running'")

    def mark_interrupted(self) -> int:
        """Jobs still `running` from a previous process: it died mid-export."""
        with self._lock, self._db() as db:
            cur = db.execute(
                "UPDATE jobs SET status = 'interrupted', finished = ?, "
                "error = 'The app stopped while this export was running.' WHERE status = 'running'",
                (time.time(),),
            )
            return cur.rowcount

    def get(self, job_id: str) -> dict | None:
        rows = self._select("WHERE id = ?", (job_id,))
        return rows[0] if rows else None

    def log_of(self, job_id: str) -> str | None:
        with self._db() as db:
            row = db.execute("SELECT log FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return row["log"] if row else None

    def recent(self, limit: int = 50) -> list[dict]:
        return self._select(tail="ORDER BY created DESC LIMIT ?", params=(int(limit),))

    def last_loaded_key(self, model: str) -> str | None:
        """Load key of the newest successful job that created Ollama model `model`."""
        with self._db() as db:
            row = db.execute("SELECT load_key FROM ollama_loads WHERE model = ?", (model,)).fetchone()
        return row["load_key"] if row else None


def _decode(row: sqlite3.Row) -> dict:
    d = dict(row)
    for k in _JSON_COLUMNS:
        if k in d:
            d[k] = json.loads(d[k] or "{}")
    return d
