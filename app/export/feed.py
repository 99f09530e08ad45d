"""What a viewer of an export receives: `(log, status)` updates of a job, paced.

Gradio sends each update as the difference from the previous one (an append to the log, the status keys
that changed) wrapped in an event message of its own. A tool that redraws its bar 20 times a second would
otherwise make a message per poll, mostly envelope; so an update goes out at once when the job's state
changes (stage, status, finished), with new log lines after `LINES_EVERY`, and for a moving bar alone
after `BAR_EVERY`. The log only grows at its end (the job trims it a quarter at a time), so it travels as
appends.
"""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator, Callable

from .jobs import ExportJob

POLL = 0.1          # s between looks at the job
LINES_EVERY = 0.5   # s: new log lines are sent together at most this often
BAR_EVERY = 1.0     # s: a bar that moves without new lines is sent at most this often


def due(now: float, last_sent: float, state_changed: bool, new_lines: bool, bar_moved: bool) -> bool:
    """Whether an update goes out now (pure)."""
    if state_changed:
        return True
    if new_lines:
        return now - last_sent >= LINES_EVERY
    return bar_moved and now - last_sent >= BAR_EVERY


async def follow(job: ExportJob, cancel: Callable[[str], object]) -> AsyncIterator[tuple[str, dict]]:
    """Stream the job to one viewer until it finishes; a viewer that leaves first cancels it (the job
    belongs to the request that started it)."""
    sent_lines, sent_state, sent_bar, last = -1, None, None, 0.0
    try:
        while True:
            finished = job.finished
            summary = job.summary()
            state = (summary["status"], summary["stage"], tuple(summary["stages"].values()), finished)
            bar = (summary["progress"], summary["activity"])  # a tool's bar moves without new log lines
            count = job.line_count()
            now = time.monotonic()
            if due(now, last, state != sent_state, count != sent_lines, bar != sent_bar):
                sent_lines, sent_state, sent_bar, last = count, state, bar, now
                yield job.log_text(), summary
            if finished:
                return
            await asyncio.sleep(POLL)
    finally:
        if not job.finished:
            cancel(job.id)
