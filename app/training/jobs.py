"""The training queue's persistent jobs: one SQLite table beside the export history (`tunedeck.db`).

Everything the scheduler knows lives in a row, so the queue, its order and the running jobs' handles
survive a restart and a SIGKILL of the app: a new process re-attaches to the trainers that still run.
Every connection is closed after use; writes are serialised by a lock.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from dataclasses import dataclass

from ..sqlite_store import SqliteStore

_SCHEMA = """
CREATE TABLE IF NOT EXISTS train_jobs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    state TEXT NOT NULL,
    name TEXT NOT NULL,
    backend TEXT NOT NULL,
    request TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 1,
    resume_from TEXT NOT NULL DEFAULT '',
    gpus TEXT NOT NULL DEFAULT '[]',
    handle TEXT NOT NULL DEFAULT '{}',
    cancel INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    export_job TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS train_jobs_state ON train_jobs(state);
"""
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
FINAL = (SUCCEEDED, FAILED, CANCELLED)
ACTIVE = (QUEUED, RUNNING)


@dataclass(frozen=True)
class TrainJob:
    id: str
    seq: int
    priority: int
    created: float
    started: float | None
    finished: float | None
    state: str
    name: str          # the run: output_dir relative to saves/
    backend: str       # "local" (this host's llamafactory container) or "ray"
    request: dict      # config (LLaMA-Factory's arguments), gpus, cpus, export settings, source
    attempt: int
    resume_from: str   # checkpoint folder this attempt resumes from ("" = from the start)
    gpus: tuple        # GPUs given to the running attempt
    handle: dict       # how to find the trainer again: {container, exec_id, pid} or {submission_id}
    cancel: bool       # a cancel was asked for; the trainer is being stopped
    error: str
    export_job: str    # the export started when it finished ("export when done")

    @property
    def output_dir(self) -> str:
        return str(self.request["config"]["output_dir"])

    def as_dict(self) -> dict:
        return {"id": self.id, "state": self.state, "run": self.name, "backend": self.backend,
                "priority": self.priority, "attempt": self.attempt, "resume_from": self.resume_from,
                "gpus_requested": self.request.get("gpus", "all"), "gpus": list(self.gpus),
                "cpus": self.request.get("cpus"), "created": self.created, "started": self.started,
                "finished": self.finished, "error": self.error, "export": self.request.get("export") or {},
                "export_job": self.export_job, "output_dir": self.output_dir, "source": self.request.get("source", ""),
                "cancelling": self.cancel and self.state == RUNNING}


def _job(row: sqlite3.Row) -> TrainJob:
    d = dict(row)
    return TrainJob(id=d["id"], seq=d["seq"], priority=d["priority"], created=d["created"], started=d["started"],
                    finished=d["finished"], state=d["state"], name=d["name"], backend=d["backend"],
                    request=json.loads(d["request"]), attempt=d["attempt"], resume_from=d["resume_from"],
                    gpus=tuple(json.loads(d["gpus"] or "[]")), handle=json.loads(d["handle"] or "{}"),
                    cancel=bool(d["cancel"]), error=d["error"], export_job=d["export_job"])


class JobStore(SqliteStore):
    SCHEMA = _SCHEMA

    def add(self, name: str, backend: str, request: dict, priority: int = 0) -> TrainJob:
        job_id = uuid.uuid4().hex[:12]
        with self._lock, self._db() as db:
            seq = (db.execute("SELECT COALESCE(MAX(seq), 0) FROM train_jobs").fetchone()[0] or 0) + 1
            db.execute("INSERT INTO train_jobs (id, seq, priority, created, state, name, backend, request) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (job_id, seq, int(priority), time.time(), QUEUED, name, backend, json.dumps(request)))
        return self.get(job_id)

    def get(self, job_id: str) -> TrainJob | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM train_jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def list(self, states: tuple[str, ...] | None = None, limit: int = 200) -> list[TrainJob]:
        """Active jobs in queue order (running first), then finished ones, newest first."""
        where, params = "", ()
        if states:
            where = f"WHERE state IN ({', '.join('?' * len(states))})"
            params = tuple(states)
        order = ("ORDER BY CASE state WHEN 'running' THEN 0 WHEN 'queued' THEN 1 ELSE 2 END, "
                 "CASE WHEN state IN ('running', 'queued') THEN -priority ELSE 0 END, "
                 "CASE WHEN state IN ('running', 'queued') THEN seq ELSE -COALESCE(finished, created) END")
        with self._db() as db:
            rows = db.execute(f"SELECT * FROM train_jobs {where} {order} LIMIT ?", (*params, int(limit))).fetchall()
        return [_job(r) for r in rows]

    def queued(self) -> list[TrainJob]:
        """Waiting jobs in the order they start: higher priority first, then queue order."""
        return self.list((QUEUED,))

    def running(self) -> list[TrainJob]:
        return self.list((RUNNING,))

    def update(self, job_id: str, **fields) -> None:
        allowed = {"state", "started", "finished", "gpus", "handle", "cancel", "error", "export_job", "attempt",
                   "resume_from", "seq", "priority", "request"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"unknown job fields {sorted(unknown)}")
        if fields.get("state") in FINAL and "finished" not in fields:
            fields["finished"] = time.time()
        for key in ("gpus", "handle", "request"):
            if key in fields and not isinstance(fields[key], str):
                fields[key] = json.dumps(list(fields[key]) if key == "gpus" else fields[key])
        if "cancel" in fields:
            fields["cancel"] = int(bool(fields["cancel"]))
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._lock, self._db() as db:
            db.execute(f"UPDATE train_jobs SET {sets} WHERE id = ?", (*fields.values(), job_id))

    def transition(self, job_id: str, expected: tuple[str, ...], **fields) -> bool:
        """Update only while the job is in one of `expected` states (two threads never both start or end it)."""
        with self._lock, self._db() as db:
            row = db.execute("SELECT state FROM train_jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row["state"] not in expected:
                return False
        self.update(job_id, **fields)
        return True

    def requeue(self, job_id: str, **fields) -> None:
        """Back into the queue, at its end (a resumed or retried job waits its turn like a new one)."""
        with self._lock, self._db() as db:
            seq = (db.execute("SELECT COALESCE(MAX(seq), 0) FROM train_jobs").fetchone()[0] or 0) + 1
        self.update(job_id, state=QUEUED, seq=seq, started=None, finished=None, handle={}, gpus=[], cancel=False,
                    error="", export_job="", **fields)

    def move(self, job_id: str, delta: int) -> bool:
        """Swap a queued job with its neighbour in start order (`delta` -1: earlier, +1: later). The moved job
        takes the neighbour's priority (so the swap holds); the neighbour keeps its own."""
        queue = self.queued()
        ids = [j.id for j in queue]
        if job_id not in ids:
            return False
        i = ids.index(job_id)
        j = i + (1 if delta > 0 else -1)
        if not 0 <= j < len(queue):
            return False
        a, b = queue[i], queue[j]
        ids[i], ids[j] = ids[j], ids[i]
        base = min(q.seq for q in queue)
        with self._lock, self._db() as db:  # the queue renumbered in its new order
            for k, jid in enumerate(ids):
                db.execute("UPDATE train_jobs SET seq = ? WHERE id = ?", (base + k, jid))
            db.execute("UPDATE train_jobs SET priority = ? WHERE id = ?", (b.priority, a.id))
        return True

    def active_outputs(self) -> dict[str, str]:
        """output_dir → job id of every queued or running job (two jobs never write one run)."""
        return {j.output_dir: j.id for j in self.list(ACTIVE)}
