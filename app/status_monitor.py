"""A cached, event-driven snapshot of the stack's containers.

One background thread per app follows Docker events of the project and refreshes the
snapshot; every viewer reads the cache. No per-tick inspect of every container.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from .docker_gateway import SERVICE_LABEL, DockerGateway, EngineUnavailable
from .logging_setup import Throttle

log = logging.getLogger(__name__)
FAILURES_BEFORE_BANNER = 3  # consecutive monitor failures before the page says so
COLUMNS = ["service", "container", "state", "health", "uptime", "restarts", "image", "ports"]
_REINSPECT_ACTIONS = {
    "create", "start", "restart", "die", "stop", "kill", "pause", "unpause", "oom", "rename", "update",
    "destroy", "health_status",
}


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    name: str
    service: str
    state: str
    health: str
    started_at: float | None
    restarts: int
    image: str
    ports: str


@dataclass(frozen=True)
class Snapshot:
    engine_ok: bool
    message: str
    containers: tuple[ContainerInfo, ...]
    expected: tuple[str, ...]
    version: int
    taken_at: float = field(default_factory=time.time)
    error: str = ""  # the monitor keeps failing although the engine answers

    @property
    def banner(self) -> str:
        if not self.engine_ok:
            return f"⚠️ {self.message}"
        return f"⚠️ engine error: {self.error}" if self.error else ""

    def missing(self) -> list[str]:
        present = {c.service for c in self.containers}
        return [s for s in self.expected if s not in present]

    def by_service(self, service: str) -> ContainerInfo | None:
        rows = [c for c in self.containers if c.service == service]
        rows.sort(key=lambda c: c.state == "running", reverse=True)
        return rows[0] if rows else None

    def summary(self) -> str:
        if not self.engine_ok:
            return f"⚠️ {self.message}. Retrying every second; the page recovers by itself."
        running = sum(c.state == "running" for c in self.containers)
        unhealthy = sum(c.health == "unhealthy" for c in self.containers)
        state = f"engine error: {self.error}" if self.error else "engine reachable"
        return (
            f"{running} running · {unhealthy} unhealthy · {len(self.missing())} missing · "
            f"{len(self.containers)} containers · {state}"
        )


def _parse_time(value: str | None) -> float | None:
    if not value or value.startswith("0001-"):
        return None
    value = value.rstrip("Z")
    main, _, frac = value.partition(".")
    dt = datetime.strptime(main, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    return dt.timestamp() + (float("0." + frac[:6]) if frac else 0.0)


def format_ports(ports: list[dict] | None) -> str:
    """`0.0.0.0:8080->80/tcp` style, published ports only, de-duplicated (IPv4/IPv6)."""
    seen: list[str] = []
    for p in ports or []:
        if p.get("PublicPort"):
            text = f"{p['PublicPort']}->{p['PrivatePort']}/{p.get('Type', 'tcp')}"
            if text not in seen:
                seen.append(text)
    return ", ".join(seen)


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def container_info(row: dict, inspect: dict | None) -> ContainerInfo:
    """Merge a cheap listing row with (optional) inspect data into one record."""
    labels = row.get("Labels") or {}
    state = (inspect or {}).get("State") or {}
    health = (state.get("Health") or {}).get("Status") or "none"
    return ContainerInfo(
        id=row["Id"],
        name=(row.get("Names") or ["/?"])[0].lstrip("/"),
        service=labels.get(SERVICE_LABEL, "?"),
        state=row.get("State") or state.get("Status") or "?",
        health=health,
        started_at=_parse_time(state.get("StartedAt")) if row.get("State") == "running" else None,
        restarts=int((inspect or {}).get("RestartCount") or 0),
        image=row.get("Image", ""),
        ports=format_ports(row.get("Ports")),
    )


class StatusMonitor:
    """Keeps `snapshot()` current from Docker events; survives engine restarts."""

    def __init__(self, gateway: DockerGateway, expected: tuple[str, ...], retry_s: float = 1.0) -> None:
        self.gateway = gateway
        self.expected = expected
        self.retry_s = retry_s
        self._inspect: dict[str, dict] = {}
        self._snapshot = Snapshot(False, "Connecting to the Docker engine", (), expected, 0)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._events_stream = None
        self._thread: threading.Thread | None = None
        self._throttle = Throttle(log)
        self._failures = 0

    # -- public -----------------------------------------------------------------------
    def start(self) -> "StatusMonitor":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tunedeck-status", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._close_events()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def snapshot(self) -> Snapshot:
        with self._lock:
            return self._snapshot

    def refresh(self, changed_id: str | None = None) -> Snapshot:
        """Re-list the containers; re-inspect only new ones and `changed_id`."""
        rows = self.gateway.list_containers()
        ids = {r["Id"] for r in rows}
        for cid in list(self._inspect):
            if cid not in ids:
                del self._inspect[cid]
        for row in rows:
            cid = row["Id"]
            if cid not in self._inspect or cid == changed_id:
                try:
                    self._inspect[cid] = self.gateway.inspect(cid)
                except EngineUnavailable:
                    raise
                except Exception as exc:  # noqa: BLE001 - removed between list and inspect: shown without details
                    log.debug("inspect of %s failed: %s", cid[:12], exc)
                    self._inspect.pop(cid, None)
        infos = tuple(
            sorted((container_info(r, self._inspect.get(r["Id"])) for r in rows), key=lambda c: (c.service, c.name))
        )
        self._failures = 0
        self._throttle.recovered("monitor", "status monitor recovered")
        return self._publish(True, "engine reachable", infos)

    # -- internals --------------------------------------------------------------------
    def _publish(self, ok: bool, message: str, containers: tuple[ContainerInfo, ...], error: str = "") -> Snapshot:
        with self._lock:
            old = self._snapshot
            if (ok, message, containers, error) == (old.engine_ok, old.message, old.containers, old.error):
                return old
            self._snapshot = Snapshot(ok, message, containers, self.expected, old.version + 1, error=error)
            return self._snapshot

    def _close_events(self) -> None:
        stream, self._events_stream = self._events_stream, None
        if stream is not None:
            try:
                stream.close()
            except Exception as exc:  # noqa: BLE001 - closing a stream the engine already dropped
                log.debug("closing the events stream failed: %s", exc)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._events_stream = self.gateway.events()
                self.refresh()
                for event in self._events_stream:
                    if self._stop.is_set():
                        break
                    action = str(event.get("Action") or event.get("status") or "")
                    if action.startswith("exec_"):
                        continue
                    base = action.split(":")[0].strip()
                    cid = event.get("id") or (event.get("Actor") or {}).get("ID")
                    self.refresh(cid if base in _REINSPECT_ACTIONS else None)
                # The stream ended: the engine went away (or we are closing).
                if not self._stop.is_set():
                    self._publish(False, self.gateway.unreachable_message(), ())
            except EngineUnavailable as exc:
                self._throttle.failure("engine", f"Docker engine unavailable: {exc}")
                self._publish(False, str(exc), ())
            except Exception as exc:  # noqa: BLE001 - logged (throttled) and shown; the loop retries
                self._failures += 1
                self._throttle.failure("monitor", f"status monitor failed ({self._failures} in a row): "
                                                  f"{type(exc).__name__}: {exc}", exc)
                if self.gateway.ping():
                    error = f"{type(exc).__name__}: {exc}" if self._failures >= FAILURES_BEFORE_BANNER else ""
                    self._publish(True, "engine reachable", self.snapshot().containers, error)
                else:
                    self._publish(False, f"{self.gateway.unreachable_message()} ({type(exc).__name__})", ())
            finally:
                self._close_events()
            self._stop.wait(self.retry_s)
