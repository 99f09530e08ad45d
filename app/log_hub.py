"""One Docker log stream per container, shared by every viewer.

A daemon thread reads each stream into a ring buffer (Docker log streams have no timeout,
so nothing ever blocks a Gradio worker on them). Viewers keep a cursor and poll. A
stream re-attaches when its container restarts and ends with a message when it is
removed; it closes as soon as its last viewer leaves.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from itertools import islice
from typing import Iterable

from docker.errors import NotFound

from .docker_gateway import DockerGateway, EngineUnavailable, NotInProject
from .log_filter import LogLine, parse_stamp, split_stamp, strip_ansi
from .logging_setup import Throttle

log = logging.getLogger(__name__)
_throttle = Throttle(log)
RING = 50_000  # lines kept per container (~7 MB): a follower 0.1 s late still gets every line at 400k lines/s


class LogStream:
    def __init__(self, hub: "LogHub", container_id: str, service: str) -> None:
        self.hub = hub
        self.container_id = container_id
        self.service = service
        self.lines: deque[LogLine] = deque(maxlen=RING)
        self.seq = 0
        self.viewers = 0
        self.ended = False
        self._stream = None
        self._stop = threading.Event()
        self._last_ts = 0.0
        self.opened = 0  # Docker log connections opened (for the fan-out benchmark)
        self.thread = threading.Thread(target=self._run, name=f"logs-{service}", daemon=True)
        self.thread.start()

    def _append(self, stamp: str, text: str, note: bool = False) -> None:
        with self.hub.cond:
            self.seq += 1
            self.lines.append(LogLine(self.seq, stamp, self.service, text, note))
            self.hub.cond.notify_all()

    def _extend(self, raws: list[str], since: float | None) -> None:
        """Split a batch of raw lines and publish them under one lock acquisition."""
        parsed = []
        for raw in raws:
            if raw.endswith("\r"):
                raw = raw[:-1]
            stamp, text = split_stamp(raw)
            if not text.isprintable():
                text = strip_ansi(text)
            parsed.append((stamp, text))
        if since is not None:  # first batch after a re-attach: drop what was already shown
            parsed = [p for p in parsed if parse_stamp(p[0]) > since]
        if not parsed:
            return
        self._last_ts = max(self._last_ts, parse_stamp(parsed[-1][0]))
        with self.hub.cond:
            seq = self.seq
            service = self.service
            self.lines.extend(LogLine(seq + i, stamp, service, text, False)
                              for i, (stamp, text) in enumerate(parsed, 1))
            self.seq = seq + len(parsed)
            self.hub.cond.notify_all()

    def note(self, text: str) -> None:
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e9):09d}Z"
        self._append(stamp, f"── {text} ──", True)

    def _state(self) -> str | None:
        try:
            return (self.hub.gateway.inspect(self.container_id).get("State") or {}).get("Status")
        except (NotInProject, NotFound):
            return None

    def _run(self) -> None:
        gw = self.hub.gateway
        first = True
        while not self._stop.is_set():
            try:
                state = self._state()
                if state is None:
                    self.note(f"container of {self.service} removed; stream ended")
                    break
                if state != "running" and not first:
                    self._stop.wait(0.3)
                    continue
                since = None if first else self._last_ts
                self._stream = gw.logs(self.container_id, tail=RING if first else "all", since=since,
                                       follow=True, timestamps=True)
                self.opened += 1
                if not first:
                    self.note(f"{self.service} is back; following again")
                first = False
                buffer = ""
                for chunk in self._stream:
                    if self._stop.is_set():
                        break
                    buffer += chunk.decode("utf-8", "replace")
                    *complete, buffer = buffer.split("\n")
                    if complete:
                        self._extend(complete, since)
                if self._stop.is_set():
                    break
                if self._state() == "running":
                    continue
                self.note(f"{self.service} stopped; waiting for it to start again")
            except EngineUnavailable:
                if self._stop.is_set():
                    break
                self.note("Docker engine not reachable; retrying")
                self._stop.wait(1.0)
                first = first and not self.lines
            except Exception as exc:  # noqa: BLE001 - logged (throttled); the loop retries
                if self._stop.is_set():
                    break  # a closed socket while stopping
                _throttle.failure(f"logs-{self.service}", f"log stream of {self.service} failed, retrying: "
                                                         f"{type(exc).__name__}: {exc}", exc)
                self._stop.wait(0.3)
            finally:
                self._close_stream()
        self.ended = True
        with self.hub.cond:
            self.hub.cond.notify_all()

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.close()
            except Exception as exc:  # noqa: BLE001 - the stream may be broken already
                log.debug("closing the log stream of %s failed: %s", self.service, exc)

    def stop(self) -> None:
        self._stop.set()
        self._close_stream()

    def since(self, cursor: int) -> list[LogLine]:
        """Lines after `cursor`; a follower that fell more than RING lines behind is told so."""
        with self.hub.cond:
            if not self.lines or self.lines[-1].seq <= cursor:
                return []
            first = self.lines[0].seq
            start = max(0, cursor - first + 1)
            lines = list(islice(self.lines, start, None))
        if 0 < cursor < first - 1:
            skipped = first - 1 - cursor
            lines.insert(0, LogLine(first - 1, lines[0].stamp, self.service,
                                    f"── {skipped} lines skipped: this follower fell behind ──", True))
        return lines

    def tail(self, n: int) -> list[LogLine]:
        with self.hub.cond:
            return list(self.lines)[-n:] if n > 0 else []


class LogHub:
    """Shared log streams keyed by container id, with reference counting."""

    def __init__(self, gateway: DockerGateway) -> None:
        self.gateway = gateway
        self.cond = threading.Condition()
        self._streams: dict[str, LogStream] = {}
        self._lock = threading.Lock()
        self._reaper = threading.Thread(target=self._reap, name="logs-reaper", daemon=True)
        self._closed = threading.Event()
        self._reaper.start()

    def acquire(self, container_id: str, service: str) -> LogStream:
        with self._lock:
            stream = self._streams.get(container_id)
            if stream is None or stream.ended:
                stream = LogStream(self, container_id, service)
                self._streams[container_id] = stream
            stream.viewers += 1
            return stream

    def release(self, stream: LogStream) -> None:
        """Drop a viewer; the last one out closes the Docker connection at once."""
        with self._lock:
            stream.viewers -= 1
            if stream.viewers <= 0:
                stream.stop()
                if self._streams.get(stream.container_id) is stream:
                    del self._streams[stream.container_id]

    def open_streams(self) -> int:
        with self._lock:
            return sum(1 for s in self._streams.values() if s._stream is not None)

    def _reap(self) -> None:
        """Forget streams that ended on their own (container removed)."""
        while not self._closed.wait(1.0):
            with self._lock:
                for cid, s in list(self._streams.items()):
                    if s.ended:
                        del self._streams[cid]

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            for s in self._streams.values():
                s.stop()
            self._streams.clear()


class Follower:
    """One viewer's cursor over one or more shared streams (several: 'all services')."""

    def __init__(self, hub: LogHub, targets: Iterable[tuple[str, str]]) -> None:
        self.hub = hub
        self.streams = [hub.acquire(cid, service) for cid, service in targets]
        self.cursors = {id(s): 0 for s in self.streams}

    def initial(self, n: int) -> list[LogLine]:
        """The last `n` lines over all streams, merged by time; waits briefly for the tail to arrive."""
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and any(s.opened == 0 and not s.ended for s in self.streams):
            time.sleep(0.02)
        time.sleep(0.05)
        lines: list[LogLine] = []
        for s in self.streams:
            part = s.tail(RING)
            if part:
                self.cursors[id(s)] = part[-1].seq
            lines += part
        lines.sort(key=lambda l: l.ts)
        return lines[-n:]

    def poll(self) -> list[LogLine]:
        lines: list[LogLine] = []
        for s in self.streams:
            new = s.since(self.cursors[id(s)])
            if new:
                self.cursors[id(s)] = new[-1].seq
                lines += new
        if len(self.streams) > 1:
            lines.sort(key=lambda l: l.ts)
        return lines

    @property
    def ended(self) -> bool:
        return all(s.ended for s in self.streams)

    def close(self) -> None:
        for s in self.streams:
            self.hub.release(s)
        self.streams = []
