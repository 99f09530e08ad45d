"""Incremental reader of LLaMA-Factory's trainer_log.jsonl: only new bytes, torn lines kept for later.

It keeps what the Runs view needs (the newest record, the last finite value of a few keys,
and the curve points) instead of every record, so a refresh of a 100,000-line log costs
only the appended bytes. orjson parses ~4x faster than json; lines it refuses (NaN written
by Python's json) fall back to json.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import orjson

SERIES = ("loss", "eval_loss", "lr")
LATEST = ("loss", "eval_loss", "throughput")


def _parse(raw: bytes) -> dict | None:
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:
            record = json.loads(raw)
        except ValueError:
            return None
    return record if isinstance(record, dict) else None


def _finite(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) else None


class TrainerLogReader:
    """Copes with a half-written last line, an empty or missing file, invalid lines, NaN
    values and a file that was rewritten (a new run in the same folder)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._reset()
        self._ino: int | None = None

    def _reset(self) -> None:
        self.offset = 0
        self._partial = b""
        self.count = 0
        self.last: dict | None = None
        self.latest: dict[str, float] = {}
        self.series: dict[str, tuple[list, list]] = {k: ([], []) for k in SERIES}

    def read_new(self) -> list[dict]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return []
        if (self._ino is not None and st.st_ino != self._ino) or st.st_size < self.offset:
            self._reset()  # rewritten: start over
        self._ino = st.st_ino
        if st.st_size == self.offset:
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(st.st_size - self.offset)
        self.offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()  # b"" when the chunk ended with a newline
        new = [r for r in map(_parse, lines) if r is not None] if lines else []
        for record in new:
            step = record.get("current_steps")
            for key in SERIES:
                value = _finite(record.get(key))
                if value is not None and isinstance(step, (int, float)):
                    steps, values = self.series[key]
                    steps.append(step)
                    values.append(value)
            for key in LATEST:
                value = _finite(record.get(key))
                if value is not None:
                    self.latest[key] = value
        if new:
            self.count += len(new)
            self.last = new[-1]
        return new

    @property
    def losses(self) -> dict[int, float]:
        """Training loss by step (the curve's points), e.g. to label a checkpoint with its loss."""
        steps, values = self.series["loss"]
        return {int(s): v for s, v in zip(steps, values)}
