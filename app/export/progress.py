"""A tool's own progress output, read as a fraction of its stage and an ETA (pure).

tqdm bars (`45%|████ | 450/1000 [00:03<00:04, …]`, redrawn with `\\r`) and llama.cpp's counters
(`[ 12/ 291] blk.0…` from llama-quantize, `[3/12]`-style chunk counts) are recognised; anything else
leaves the progress where it was.
"""

from __future__ import annotations

import re
from typing import NamedTuple

_TQDM = re.compile(r"(\d{1,3})%\|[^|]*\|\s*[^\[]*\[(?P<elapsed>[\d:]+)<(?P<eta>[\d:?]+)")
_TQDM_PCT = re.compile(r"(?<![\d.])(\d{1,3})%\|")
_COUNTER = re.compile(r"^\s*\[\s*(\d+)\s*/\s*(\d+)\s*\]")
_CHUNK = re.compile(r"\bchunk (\d+)/(\d+)\b")


_BAR = re.compile(r"(\d{1,3}%)\|[^|\n]*\|")


def without_bar(line: str) -> str:
    """A tqdm line without its drawn bar (`45%|████ | 450/1000` → `45% 450/1000`): the dashboard draws its own
    bar, and the glyphs would only make every update a few hundred bytes longer."""
    return _BAR.sub(r"\1", line)


class Reading(NamedTuple):
    fraction: float      # 0..1 of this tool's work
    eta: str | None      # as the tool printed it (mm:ss or h:mm:ss)


def read_progress(line: str) -> Reading | None:
    """The progress a line reports, if it reports any."""
    match = _TQDM.search(line)
    if match:
        eta = match.group("eta")
        return Reading(min(int(match.group(1)), 100) / 100, None if "?" in eta else eta)
    match = _TQDM_PCT.search(line)
    if match:
        return Reading(min(int(match.group(1)), 100) / 100, None)
    for pattern in (_COUNTER, _CHUNK):
        match = pattern.search(line)
        if match and int(match.group(2)) > 0:
            return Reading(min(int(match.group(1)) / int(match.group(2)), 1.0), None)
    return None
