"""One SQLite file in the data directory (`tunedeck.db`): the export history and the training queue each keep
their tables there. A connection per call, committed on success and always closed; writes serialised by a lock.
Nothing on the way from the data dir to the file may be a link (a tool container could plant one)."""

from __future__ import annotations

import sqlite3
import threading
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Iterator

from .safe_fs import SafeDir


class SqliteStore:
    SCHEMA = ""  # the tables, created if missing

    def __init__(self, db_path: Path, root: Path | None = None) -> None:
        """`root`: the data directory the database lies in (default: its own folder)."""
        self.path = Path(db_path)
        self.fs = SafeDir(root if root is not None else self.path.parent)
        self.fs.mkdirs(self.path.parent)
        self._lock = threading.Lock()
        with self._db() as db:
            db.executescript(self.SCHEMA)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """A connection committed on success and always closed."""
        with closing(self.fs.sqlite(self.path, timeout=10)) as db:
            db.row_factory = sqlite3.Row
            with db:
                yield db
