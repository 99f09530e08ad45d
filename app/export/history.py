"""Persisted export history (SQLite in the data directory); survives restarts."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

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
"""
FINAL = ("succeeded", "failed", "cancelled", "interrupted")


class History:
    def __init__(self, db_path: Path) -> None:
        self.path = Path(db_path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        with self._connect() as db:
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10)
        db.row_factory = sqlite3.Row
        return db

    def add(self, job_id: str, run: str, request: dict) -> None:
        with self._lock, self._connect() as db:
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
        with self._lock, self._connect() as db:
            db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*fields.values(), job_id))

    def running(self) -> list[dict]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM jobs WHERE status = 'running'").fetchall()
        return [_decode(r) for r in rows]

    def mark_interrupted(self) -> int:
        """Jobs still `running` from a previous process: it died mid-export."""
        with self._lock, self._connect() as db:
            cur = db.execute(
                "UPDATE jobs SET status = 'interrupted', finished = ?, "
                "error = 'The app stopped while this export was running.' WHERE status = 'running'",
                (time.time(),),
            )
            return cur.rowcount

    def get(self, job_id: str) -> dict | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _decode(row) if row else None

    def recent(self, limit: int = 50) -> list[dict]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM jobs ORDER BY created DESC LIMIT ?", (limit,)).fetchall()
        return [_decode(r) for r in rows]

    def last_loaded_key(self, model: str) -> str | None:
        """Load key of the newest successful job that created Ollama model `model`."""
        for job in self.recent(200):
            if job["status"] == "succeeded":
                key = (job["result"].get("loaded") or {}).get(model)
                if key:
                    return key
        return None


def _decode(row: sqlite3.Row) -> dict:
    d = dict(row)
    for k in ("request", "stages", "result"):
        d[k] = json.loads(d[k] or "{}")
    return d
