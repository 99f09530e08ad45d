"""`python -m app.data_init`: run once as root before the app starts (compose's `data-init` service), so the
app itself never needs root: its unprivileged user (`tunedeck` in the image) gets the data directory, the
folders it writes (`exports/`, `training/`, LLaMA-Factory's dataset folder, `saves/` itself) and its own files
there.

Nothing is followed on the way: every change is made relative to a folder descriptor opened without
following a link, with `chown(..., follow_symlinks=False)`, so a link planted in the data directory by
code in a tool container has its own owner changed, never its target's. `exports/` is walked by
descriptors (`os.fwalk`), because earlier versions wrote it as root. Everything else (runs, datasets,
caches) keeps its owner: the app only reads it.
"""

from __future__ import annotations

import os
import pwd
import sys
from pathlib import Path

from .config import ConfigError, Settings
from .safe_fs import SafeDir, UnsafePath

APP_USER = "tunedeck"
APP_FILES = ("tunedeck.db", "tunedeck.db-journal", "tunedeck-login")


def _chown_at(dir_fd: int, name: str, uid: int, gid: int) -> bool:
    try:
        os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False


def prepare(data_dir: Path, dataset_dir: Path, uid: int, gid: int) -> list[str]:
    """Give `uid:gid` what the app writes in `data_dir`; returns what was changed (relative paths)."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chown(data_dir, uid, gid)  # the mount point itself: the administrator's path, trusted
    fs = SafeDir(data_dir)
    changed = ["."]
    with fs.folder(data_dir) as root_fd:
        changed += [name for name in APP_FILES if _chown_at(root_fd, name, uid, gid)]
    # exports/ and training/ (the queue's job files) are the app's; saves/ only as a folder, so the queue can
    # create a new run folder and write its training_args.yaml (the runs inside keep their writers' owner)
    folders = [data_dir / "exports", data_dir / "training", data_dir / "saves"] \
        + ([Path(dataset_dir)] if fs.contains(dataset_dir) else [])
    for folder in folders:
        fs.mkdirs(folder)
        with fs.folder(folder.parent) as parent_fd:
            _chown_at(parent_fd, folder.name, uid, gid)
        changed.append(fs.rel(folder))
    for mine in ("exports", "training"):
        with fs.folder(data_dir / mine) as folder_fd:
            for _path, dirnames, filenames, dir_fd in os.fwalk(".", dir_fd=folder_fd, follow_symlinks=False):
                for name in (*dirnames, *filenames):
                    _chown_at(dir_fd, name, uid, gid)
    return changed


def main() -> int:
    try:
        settings = Settings.from_env()
        user = pwd.getpwnam(APP_USER)
        prepare(settings.data_dir, settings.llamafactory_data, user.pw_uid, user.pw_gid)
    except (ConfigError, KeyError, OSError, UnsafePath) as exc:
        print(f"tunedeck data-init: the data directory could not be prepared for the app's user: {exc}",
              file=sys.stderr)
        return 1
    print(f"tunedeck data-init: {settings.data_dir} is writable by {APP_USER} ({user.pw_uid}:{user.pw_gid})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
