"""Incremental reader of LLaMA-Factory's trainer_log.jsonl: only new bytes, torn lines kept for later."""

from __future__ import annotations

import json
import os
from pathlib import Path


class TrainerLogReader:
    """Reads appended records since the last call; copes with a half-written last line,
    an empty or missing file, invalid lines, NaN values and a file that was rewritten."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.offset = 0
        self._partial = b""
        self._ino: int | None = None
        self.records: list[dict] = []

    def read_new(self) -> list[dict]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return []
        if (self._ino is not None and st.st_ino != self._ino) or st.st_size < self.offset:
            self.offset, self._partial, self.records = 0, b"", []  # rewritten: start over
        self._ino = st.st_ino
        if st.st_size == self.offset:
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(st.st_size - self.offset)
        self.offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()  # b"" when the chunk ended with a newline
        new: list[dict] = []
        for raw in lines:
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            if isinstance(record, dict):
                new.append(record)
        self.records.extend(new)
        return new
