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


def _rootfs_tar(extra: dict[str, tuple[bytes, int]] | None = None) -> bytes:
    """busybox + links; `extra` adds files: {path in the image: (content, mode)}."""
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
        for name, (data, mode) in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def import_image(ref: str, changes: list[str], extra: dict[str, tuple[bytes, int]] | None = None) -> str:
    """`docker import` the busybox rootfs (plus `extra` files) with Dockerfile-style `changes`."""
    cmd = ["docker", "import"]
    for change in changes:
        cmd += ["--change", change]
    subprocess.run([*cmd, "-", ref], input=_rootfs_tar(extra), check=True, capture_output=True)
    return ref


def _have(client: docker.DockerClient, ref: str) -> bool:
    try:
        client.images.get(ref)
        return True
    except docker.errors.ImageNotFound:
        return False


def ensure_hosttools_image(client: docker.DockerClient) -> str:
    """Build (once per busybox version) and return the image reference."""
    digest = hashlib.sha256(BUSYBOX.read_bytes() + ",".join(APPLETS).encode()).hexdigest()[:12]
    ref = f"{HOSTTOOLS_IMAGE}:{digest}"
    if _have(client, ref):
        return ref
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


# -- a Python base image for `docker build` of the app, made without any registry ---------------
PYBASE_IMAGE = "tunedeck-test/pybase"
_SKIP_PACKAGES = ("playwright", "caddy", "docker_compose", "hypothesis", "pip", "_pytest", "pytest")


def _shared_libs(paths: list[str]) -> set[str]:
    """Every shared library (resolved path and the name it is linked as) that `paths` need."""
    libs: set[str] = set()
    for chunk_start in range(0, len(paths), 200):
        out = subprocess.run(["ldd", *paths[chunk_start:chunk_start + 200]], capture_output=True, text=True)
        for line in out.stdout.splitlines():
            parts = line.split()
            for p in parts:
                if p.startswith("/") and os.path.exists(p):
                    libs.add(p)
    return libs


def ensure_python_base_image(client: docker.DockerClient, site_packages: str) -> str:
    """Busybox + the host's Python (no stdlib tests, no system site-packages) + the app's
    dependencies under /opt/deps + exactly the shared libraries they link against."""
    import sys

    prefix = sys.base_prefix
    req = Path(__file__).resolve().parents[2] / "requirements.txt"
    digest = hashlib.sha256((prefix + site_packages).encode() + req.read_bytes() +
                            BUSYBOX.read_bytes()[:4096]).hexdigest()[:12]
    ref = f"{PYBASE_IMAGE}:{digest}"
    if _have(client, ref):
        return ref

    def skip_prefix(rel: str) -> bool:
        return rel.startswith(("lib/python3.11/test", "lib/python3.11/site-packages/")) or "__pycache__" in rel

    files: list[tuple[str, str]] = []
    for root, dirs, names in os.walk(prefix):
        for name in names:
            full = os.path.join(root, name)
            rel = os.path.relpath(full, prefix)
            if not skip_prefix(rel):
                files.append((full, full.lstrip("/")))
    for root, dirs, names in os.walk(site_packages):
        rel_root = os.path.relpath(root, site_packages)
        if rel_root.split(os.sep)[0].startswith(_SKIP_PACKAGES):
            continue
        for name in names:
            full = os.path.join(root, name)
            files.append((full, "opt/deps/" + os.path.relpath(full, site_packages)))
    elfs = [f for f, _ in files if f.endswith(".so") or ".so." in f or f.endswith("/bin/python3.11")]
    libs = _shared_libs(elfs) | {"/lib64/ld-linux-x86-64.so.2"}
    cmd = ["docker", "import",
           "--change", f"ENV PATH={prefix}/bin:/usr/local/bin:/usr/bin:/bin",
           "--change", "ENV PYTHONPATH=/opt/deps", "--change", 'CMD ["/bin/sh"]', "-", ref]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with tarfile.open(fileobj=proc.stdin, mode="w|") as tar:
        base = tarfile.open(fileobj=io.BytesIO(_rootfs_tar()))
        for member in base.getmembers():
            tar.addfile(member, base.extractfile(member) if member.isfile() else None)
        added: set[str] = set()
        for lib in sorted(libs):
            real = os.path.realpath(lib)
            if real.startswith((site_packages, prefix)):
                continue  # shipped with the package itself, found through its $ORIGIN rpath
            if real.lstrip("/") not in added:
                tar.add(real, arcname=real.lstrip("/"))
                added.add(real.lstrip("/"))
            # the name it is linked as, spelled without the rootfs's lib/lib64 symlinks
            name = lib.lstrip("/")
            if name.startswith("lib/"):
                name = "usr/" + name
            elif name.startswith("lib64/"):
                name = "usr/lib64/" + name[len("lib64/"):]
            if name not in added:
                info = tarfile.TarInfo(name)
                info.type = tarfile.SYMTYPE
                info.linkname = real
                tar.addfile(info)
                added.add(name)
        for full, arc in files:
            if arc not in added:
                tar.add(full, arcname=arc, recursive=False)
                added.add(arc)
    proc.stdin.close()
    err = proc.stderr.read()
    proc.stdout.read()
    proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"docker import failed: {err.decode()[-2000:]}")
    return ref
