"""The only door to the Docker engine.

TuneDeck holds the Docker socket, which is root on the host. Every Docker call goes
through `DockerGateway`, which only touches containers labelled with the stack's compose
project and only runs `ToolCommand`s built by the pipeline (argv lists, never a shell
string made from user text).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass
from typing import Any

import docker
import requests
from docker.errors import APIError, DockerException, NotFound

from .docker_exec import WRAPPER, ExecHandle
from .log_chunks import LogChunks

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
log = logging.getLogger(__name__)
_CONNECTION_ERRORS = (DockerException, requests.exceptions.RequestException, ConnectionError, OSError)


class EngineUnavailable(Exception):
    """The Docker engine does not answer."""


class NotInProject(Exception):
    """A container outside the stack's compose project was asked for."""


class ServiceUnavailable(Exception):
    """A tool service has no running container."""


class ControlRefused(Exception):
    """A container the stack cannot lose on its own: the message says what to do instead."""


ROLE_LABEL = "tunedeck.role"  # `network`: the container whose network namespace every service shares


@dataclass(frozen=True)
class ToolCommand:
    """An argv to run in a compose service's container; built only by the pipelines' command builders
    (`app.export.commands`, `app.training.commands`, `app.storage.commands`, and for the `df` of Ollama's
    volume, `app.storage.ollama_disk`)."""

    service: str
    argv: tuple[str, ...]
    workdir: str | None = None
    env: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not self.argv or not all(isinstance(a, str) for a in self.argv):
            raise ValueError("a tool command is a non-empty list of strings")
        if any("\x00" in a for a in self.argv):
            raise ValueError("a tool argument cannot contain a NUL character")


def wrapped_argv(command: ToolCommand) -> list[str]:
    """The argv `exec`ed for a tool: the PID-reporting wrapper, then the tool's own argv as "$@"."""
    return ["sh", "-c", WRAPPER, "tunedeck-tool", *command.argv]


def docker_url() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def _is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, NotFound):
        return False
    if isinstance(exc, APIError):
        return False
    return isinstance(exc, _CONNECTION_ERRORS)


class DockerGateway:
    """Project-confined Docker access with lazy (re)connection."""

    def __init__(self, project: str, base_url: str | None = None, timeout: int = 15) -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", project):
            raise ValueError(f"invalid compose project name: {project!r}")
        self.project = project
        self.base_url = base_url or docker_url()
        self._timeout = timeout
        self._client: docker.DockerClient | None = None
        self._lock = threading.Lock()

    # -- connection -------------------------------------------------------------------
    def _api(self) -> docker.APIClient:
        with self._lock:
            if self._client is None:
                try:
                    self._client = docker.DockerClient(
                        base_url=self.base_url, version="auto", timeout=self._timeout, max_pool_size=32
                    )
                except _CONNECTION_ERRORS as exc:
                    raise EngineUnavailable(self.unreachable_message()) from exc
            return self._client.api

    def _reset(self) -> None:
        with self._lock:
            if self._client is not None:
                try:
                    self._client.close()
                except Exception as exc:  # noqa: BLE001 - a dead connection may fail to close
                    log.debug("closing the Docker client failed: %s", exc)
            self._client = None

    def unreachable_message(self) -> str:
        sock = self.base_url[len("unix://"):] if self.base_url.startswith("unix://") else ""
        if sock and os.path.exists(sock) and not os.access(sock, os.R_OK | os.W_OK):
            return (f"Docker engine at {self.base_url} refuses this user (uid {os.getuid()}): give the app the "
                    "socket's group (DOCKER_GID=$(stat -c %g /var/run/docker.sock) in compose/.env)")
        return f"Docker engine not reachable at {self.base_url}"

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(self._api(), *args, **kwargs)
        except EngineUnavailable:
            raise
        except Exception as exc:
            if _is_connection_error(exc):
                self._reset()
                raise EngineUnavailable(self.unreachable_message()) from exc
            raise

    def ping(self) -> bool:
        try:
            return bool(self._call(lambda api: api.ping()))
        except EngineUnavailable:
            return False

    # -- confinement ------------------------------------------------------------------
    def _project_filter(self, **extra: str) -> dict[str, Any]:
        labels = [f"{PROJECT_LABEL}={self.project}"] + [f"{k}={v}" for k, v in extra.items()]
        return {"label": labels}

    def _checked(self, container: str) -> dict:
        """Inspect a container and refuse it unless it carries the project label."""
        if not isinstance(container, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", container):
            raise NotInProject(f"{container!r} is not a container of project {self.project!r}")
        try:
            info = self._call(lambda api: api.inspect_container(container))
        except NotFound:
            raise NotInProject(f"{container!r} is not a container of project {self.project!r}") from None
        labels = (info.get("Config") or {}).get("Labels") or {}
        if labels.get(PROJECT_LABEL) != self.project:
            raise NotInProject(f"{container!r} is not a container of project {self.project!r}")
        return info

    # -- read -------------------------------------------------------------------------
    def list_containers(self) -> list[dict]:
        """Cheap listing (no per-container inspect) of the project's containers."""
        return self._call(lambda api: api.containers(all=True, filters=self._project_filter()))

    def inspect(self, container: str) -> dict:
        return self._checked(container)

    def service_container(self, service: str) -> dict | None:
        """The newest container of a compose service, running ones first."""
        rows = self._call(
            lambda api: api.containers(all=True, filters=self._project_filter(**{SERVICE_LABEL: service}))
        )
        if not rows:
            return None
        rows.sort(key=lambda r: (r.get("State") == "running", r.get("Created", 0)), reverse=True)
        return rows[0]

    def running_service_container(self, service: str) -> str:
        row = self.service_container(service)
        if row is None:
            raise ServiceUnavailable(f"The {service} service has no container in project {self.project!r}.")
        if row.get("State") != "running":
            raise ServiceUnavailable(f"The {service} container is {row.get('State')}, not running.")
        return row["Id"]

    def logs(self, container: str, *, tail: int | str = "all", since: int | float | None = None,
             follow: bool = True, timestamps: bool = True) -> LogChunks:
        """A cancellable log stream of byte chunks (call `.close()` from another thread to stop it)."""
        info = self._checked(container)
        params = {"stdout": 1, "stderr": 1, "follow": int(follow), "timestamps": int(timestamps),
                  "tail": tail if tail == "all" else int(tail)}
        if since is not None:
            params["since"] = f"{since:.9f}"

        def open_stream(api):
            # no read timeout: a quiet container may print nothing for hours, and the stream is closed from
            # another thread when its viewers leave (LogChunks.close); connecting still times out
            res = api._get(api._url("/containers/{0}/logs", container), params=params, stream=True,
                           timeout=(self._timeout, None))
            api._raise_for_status(res)
            return res

        res = self._call(open_stream)
        return LogChunks(res, tty=bool((info.get("Config") or {}).get("Tty")))

    def events(self):
        """Container events of the project; a blocking stream, close it from another thread."""
        return self._call(
            lambda api: api.events(decode=True, filters={"type": "container", **self._project_filter()})
        )

    # -- control ----------------------------------------------------------------------
    def start(self, container: str) -> None:
        self._checked(container)
        self._call(lambda api: api.start(container))

    def stop(self, container: str, timeout: int = 10) -> None:
        self._controllable(container)
        self._call(lambda api: api.stop(container, timeout=timeout))

    def restart(self, container: str, timeout: int = 10) -> None:
        self._controllable(container)
        self._call(lambda api: api.restart(container, timeout=timeout))

    def _controllable(self, container: str) -> None:
        info = self._checked(container)
        if ((info.get("Config") or {}).get("Labels") or {}).get(ROLE_LABEL) == "network":
            raise ControlRefused(f"{container} holds the network every service of the stack shares: stopping or "
                                 "restarting it alone would cut them all off; run `docker compose up -d` instead")

    # -- exec -------------------------------------------------------------------------
    def exec_tool(self, command: ToolCommand) -> "ExecHandle":
        """Start a pipeline command in its service's running container."""
        if not isinstance(command, ToolCommand):
            raise TypeError("only ToolCommand objects built by the pipeline can be executed")
        container = self.running_service_container(command.service)
        self._checked(container)
        argv = wrapped_argv(command)
        exec_id = self._call(
            lambda api: api.exec_create(
                container, argv, stdout=True, stderr=True, workdir=command.workdir,
                environment=dict(command.env) or None,
            )
        )["Id"]
        stream = self._call(lambda api: api.exec_start(exec_id, stream=True, demux=True))
        return ExecHandle(self, container, exec_id, stream)

    def run_tool(self, command: ToolCommand, timeout: float = 60.0) -> tuple[int | None, list[str]]:
        """A short pipeline command run to its end: (exit code, output lines); killed after `timeout` s."""
        handle = self.exec_tool(command)
        lines: list[str] = []
        timer = threading.Timer(timeout, handle.kill, kwargs={"grace": 1.0})
        timer.daemon = True
        timer.start()
        try:
            for _, line in handle.lines():
                lines.append(line)
        finally:
            timer.cancel()
        return handle.exit_code(), lines

    def kill_tool(self, container: str, pid: int) -> None:
        """Stop a tool left running by a previous app process (its PID was recorded at start)."""
        self._checked(container)
        self.signal_pid(container, pid, "KILL")

    def signal_pid(self, container: str, pid: int, signal: str) -> None:
        """Send `signal` to process `pid` inside a project container (`kill` run by exec)."""
        if signal not in ("TERM", "KILL", "INT"):
            raise ValueError(f"unsupported signal {signal!r}")
        argv = ["kill", f"-{signal}", str(int(pid))]
        exec_id = self._call(lambda api: api.exec_create(container, argv, stdout=False, stderr=False))["Id"]
        self._call(lambda api: api.exec_start(exec_id))

    def exec_exit_code(self, exec_id: str) -> int | None:
        return self._call(lambda api: api.exec_inspect(exec_id)).get("ExitCode")

    def exec_running(self, exec_id: str) -> bool:
        return bool(self._call(lambda api: api.exec_inspect(exec_id)).get("Running"))
