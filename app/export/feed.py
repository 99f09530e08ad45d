"""What a viewer of an export receives: `(log, status)` updates of a job, paced.

Gradio sends each update as the difference from the previous one (an append to the log, the status keys
that changed), each wrapped in an event message of its own (about 300 bytes). A tool that redraws its bar
20 times a second, or prints a line at a time, would make a message per poll, mostly envelope; so an update
goes out at once when the job's state changes (stage, status, finished), and otherwise, with whatever new
lines and bar position there are, at most once every `EVERY` seconds. The log only grows at its end (the
job trims it a quarter at a time), so it travels as appends.
"""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator, Callable

from .jobs import ExportJob

POLL = 0.1    # s between looks at the job
EVERY = 1.0   # s: new log lines and a moving bar are sent together at most this often


def due(now: float, last_sent: float, state_changed: bool, changed: bool) -> bool:
    """Whether an update goes out now (pure)."""
    return state_changed or (changed and now - last_sent >= EVERY)


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
            if due(now, last, state != sent_state, count != sent_lines or bar != sent_bar):
                sent_lines, sent_state, sent_bar, last = count, state, bar, now
                yield job.log_text(), summary
            if finished:
                return
            await asyncio.sleep(POLL)
    finally:
        if not job.finished:
            cancel(job.id)
