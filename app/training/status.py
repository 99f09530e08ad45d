"""Derive a run's state from its files alone (no process to ask): pure functions."""

from __future__ import annotations

import math
import re

FRESH_S = 180.0  # a log written within this window counts as a live run
_ERROR = re.compile(r"Traceback \(most recent call last\)|\bError\b|CUDA out of memory|Killed", re.I)


def is_complete(last: dict | None, has_results: bool) -> bool:
    if has_results:
        return True
    if not last:
        return False
    cur, total = last.get("current_steps"), last.get("total_steps")
    if isinstance(cur, (int, float)) and isinstance(total, (int, float)) and total > 0 and cur >= total:
        return True
    pct = last.get("percentage")
    return isinstance(pct, (int, float)) and pct >= 100


def derive_status(*, last: dict | None, has_results: bool, log_age_s: float | None, running_log_tail: str) -> str:
    """running / finished / failed / stopped / starting, from the newest record and file ages."""
    if is_complete(last, has_results):
        return "finished"
    fresh = log_age_s is not None and log_age_s < FRESH_S
    if fresh:
        return "running" if last else "starting"
    if _ERROR.search(running_log_tail or ""):
        return "failed"
    return "stopped"


def finite(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None
