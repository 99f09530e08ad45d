"""Images built locally with `docker import` (no registry is reachable).

`tunedeck-test/hosttools` holds busybox and `lib -> usr/lib` links: run it with the
host's /usr, Python and venvs mounted read-only and it runs the host's tools for real.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
from pathlib import Path

import docker

BUSYBOX = Path("/bin/busybox")
HOSTTOOLS_IMAGE = "tunedeck-test/hosttools"
APPLETS = [
    "sh", "ash", "echo", "cat", "sleep", "ls", "kill", "ps", "env", "true", "false", "test", "[",
    "printf", "seq", "date", "wc", "head", "tail", "grep", "sed", "mkdir", "rm", "cp", "mv", "id",
    "nc", "wget", "setsid", "pkill", "pgrep", "yes", "uname", "hostname", "touch", "chmod", "ln",
]


def _rootfs_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "tmp", "etc", "proc", "sys", "dev", "root", "var", "usr", "srv"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        tar.add(str(BUSYBOX), arcname="bin/busybox")
        for applet in APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type = tarfile.SYMTYPE
            info.linkname = "busybox"
            tar.addfile(info)
        for link, target in (("lib", "usr/lib"), ("lib64", "usr/lib64"), ("sbin", "bin")):
            info = tarfile.TarInfo(link)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
        for name, text in (("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"), ("etc/group", "root:x:0:\n"),
                           ("etc/hosts", "127.0.0.1 localhost\n")):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def ensure_hosttools_image(client: docker.DockerClient) -> str:
    """Build (once per busybox version) and return the image reference."""
    digest = hashlib.sha256(BUSYBOX.read_bytes() + ",".join(APPLETS).encode()).hexdigest()[:12]
    ref = f"{HOSTTOOLS_IMAGE}:{digest}"
    try:
        client.images.get(ref)
        return ref
    except docker.errors.ImageNotFound:
        pass
    subprocess.run(
        ["docker", "import", "--change", "CMD [\"/bin/sh\"]", "--change", "ENV PATH=/usr/local/bin:/usr/bin:/bin",
         "-", ref],
        input=_rootfs_tar(), check=True, capture_output=True,
    )
    return ref


def host_mounts(*extra_ro: str | os.PathLike) -> dict[str, dict]:
    """Read-only mounts that make the host's Python and tools run inside a container."""
    import sys

    paths = {"/usr", sys.base_prefix, os.environ.get("TUNEDECK_CACHE", "/var/cache/tunedeck"), "/etc/ssl"}
    paths.update(str(p) for p in extra_ro)
    return {p: {"bind": p, "mode": "ro"} for p in sorted(paths) if os.path.exists(p)}
