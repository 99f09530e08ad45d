"""Free space on Ollama's volume, which the app cannot see: `df` run inside the ollama container.

Ollama keeps its models in a named volume mounted only into its own container, and its HTTP API says
nothing about disk. The one way in that TuneDeck already has is the gateway's confined `docker exec` of a
pipeline-built command: a fixed script (no user text) that finds the folder Ollama stores models in
(`$OLLAMA_MODELS`, else `$HOME/.ollama`, else its nearest existing parent) and runs `df -P -k` on it.
Every Ollama image is Ubuntu-based and has `sh` and `df`. When Ollama is not a running container of this
stack (a remote TUNEDECK_OLLAMA_URL, say), the free space is reported as unknown, with the reason.
"""

from __future__ import annotations

import logging
import re
import threading

from ..docker_gateway import DockerGateway, EngineUnavailable, ServiceUnavailable, ToolCommand
from .freespace import FreeSpace

log = logging.getLogger(__name__)
DIR_MARKER = "@@ollama-models "
# Constant text: no user input reaches it.
DF_SCRIPT = ('d="${OLLAMA_MODELS:-${HOME:-/root}/.ollama}"; '
             'while [ ! -e "$d" ]; do case "$d" in */?*) d="${d%/*}"; d="${d:-/}";; *) d=/;; esac; done; '
             f'echo "{DIR_MARKER}$d"; exec df -P -k "$d"')
_DF_LINE = re.compile(r"^(?P<fs>.*?)\s+(?P<blocks>\d+)\s+(?P<used>\d+)\s+(?P<avail>\d+)\s+(?P<cap>\d+%|-)\s+"
                      r"(?P<mount>/.*)$")
TIMEOUT_S = 15.0


def df_command(service: str) -> ToolCommand:
    return ToolCommand(service, ("sh", "-c", DF_SCRIPT))


def parse_df(lines: list[str]) -> tuple[str, int, int] | None:
    """(folder, free bytes, total bytes) from the script's output; None when it has no df line."""
    folder = next((ln[len(DIR_MARKER):].strip() for ln in lines if ln.startswith(DIR_MARKER)), "")
    for line in reversed(lines):
        m = _DF_LINE.match(line.strip())
        if m:
            return folder or m["mount"], int(m["avail"]) * 1024, int(m["blocks"]) * 1024
    return None


def ollama_free(gateway: DockerGateway, service: str, timeout: float = TIMEOUT_S) -> FreeSpace:
    """Measure it (a blocking Docker call: run it in a worker thread)."""
    try:
        handle = gateway.exec_tool(df_command(service))
    except (ServiceUnavailable, EngineUnavailable) as exc:
        return FreeSpace(service, None, None, f"{exc}")
    except Exception as exc:  # noqa: BLE001 - any refusal of the engine: said, never swallowed
        log.warning("could not run df in the %s container: %s", service, exc)
        return FreeSpace(service, None, None, f"docker exec failed: {exc}")
    lines: list[str] = []
    done = threading.Event()

    def read() -> None:
        try:
            lines.extend(line for _channel, line in handle.lines())
        finally:
            done.set()

    threading.Thread(target=read, name="ollama-df", daemon=True).start()
    if not done.wait(timeout):
        handle.kill(1.0)
        handle.close()
        return FreeSpace(service, None, None, f"df in the {service} container did not answer in {timeout:.0f} s")
    parsed = parse_df(lines)
    if parsed is None:
        tail = next((ln for ln in reversed(lines) if ln.strip()), "no output")
        return FreeSpace(service, None, None, f"df in the {service} container failed: {tail[:200]}")
    folder, free, total = parsed
    return FreeSpace(f"{service}:{folder}", free, total)
