"""Writes under the data directory that never follow a symbolic link.

Every tool container mounts the data directory and runs user code there as root (`trust_remote_code`,
dataset scripts), so any name in it may be a link planted to make TuneDeck write somewhere else: a
`.partial` file, the `eval/` folder, `merge.yaml`, the history database. Every write, rename and removal
the app makes in the data directory goes through `SafeDir`:

- a folder is opened component by component from the data directory's root with
  `O_DIRECTORY | O_NOFOLLOW` (created with `mkdir` relative to its parent's descriptor when asked), so a
  folder with a symlinked part is refused in one sentence instead of being followed;
- a file is created with `O_CREAT | O_EXCL | O_NOFOLLOW` under a fresh name in its target folder (what
  `mkstemp` does) and renamed over its final name with both directory descriptors: a link sitting at the
  final name is replaced, never written through;
- a rename checks that what it moves is not a link, and that what arrived is what was checked;
- a removal unlinks a link itself, and removes a real folder with `shutil.rmtree(dir_fd=…)`, which
  deletes through descriptors and refuses a top folder that turned into a link.

The data directory's own path is trusted (it is the mount point, chosen by the administrator).
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import sqlite3
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator
from urllib.parse import quote

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # O_NONBLOCK: a planted FIFO never blocks an open
TEMP_SUFFIX = ".partial"  # temp files end like every half-written output: a restart removes them


class UnsafePath(Exception):
    """A name in the data directory TuneDeck will not write through; the message is one sentence."""


def link_refused(rel: str) -> UnsafePath:
    return UnsafePath(f"{rel} is a symbolic link; TuneDeck does not write through links in the data directory.")


def not_regular(rel: str) -> UnsafePath:
    return UnsafePath(f"{rel} is not a regular file; TuneDeck writes only regular files in the data directory.")


def _is_link(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


class SafeDir:
    """The data directory (or another trusted root): every path given to a method must lie under it."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(os.path.abspath(root))
        self.real = Path(os.path.realpath(root))

    # -- paths ----------------------------------------------------------------------------------
    def parts(self, path: str | os.PathLike) -> tuple[str, ...]:
        """The components of `path` below the root, read as text (never resolved)."""
        p = Path(path)
        for base in (self.root, self.real):
            try:
                rel = p.relative_to(base)
                break
            except ValueError:
                continue
        else:
            raise ValueError(f"{p} is not inside {self.root}")
        if ".." in rel.parts:
            raise ValueError(f"{p} has a '..' component")
        return rel.parts

    def rel(self, path: str | os.PathLike) -> str:
        return "/".join(self.parts(path)) or "."

    def contains(self, path: str | os.PathLike) -> bool:
        try:
            self.parts(path)
            return True
        except ValueError:
            return False

    # -- folders --------------------------------------------------------------------------------
    @contextmanager
    def folder(self, path: str | os.PathLike, create: bool = False) -> Iterator[int]:
        """A descriptor of folder `path`, opened from the root one component at a time without following a
        link (created when `create`); raises UnsafePath when a component is a link or not a folder."""
        names = self.parts(path)
        fd = os.open(self.real, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for i, name in enumerate(names):
                child = self._open_dir(fd, name, "/".join(names[: i + 1]), create)
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    def _open_dir(self, parent: int, name: str, rel: str, create: bool) -> int:
        for _ in range(2):
            try:
                return os.open(name, _DIR, dir_fd=parent)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(name, 0o755, dir_fd=parent)
                except FileExistsError:
                    pass  # made meanwhile: whatever is there now is checked by the next open
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK) and _is_link(parent, name):
                    raise link_refused(rel) from None
                if exc.errno == errno.ENOTDIR:
                    raise UnsafePath(f"{rel} is not a folder; TuneDeck expected one in the data directory.") from None
                raise
        return os.open(name, _DIR, dir_fd=parent)

    def mkdirs(self, path: str | os.PathLike) -> None:
        """`mkdir -p` that refuses a symlinked part."""
        with self.folder(path, create=True):
            pass

    def check_dir(self, path: str | os.PathLike) -> None:
        """Make sure `path` is a real folder (no symlinked part), creating it: right before a tool writes there."""
        self.mkdirs(path)

    # -- files ----------------------------------------------------------------------------------
    def open_fd(self, path: str | os.PathLike, flags: int, mode: int = 0o644) -> int:
        """os.open of a regular file under the root, never through a link (a link, a FIFO or a device at
        the name is refused). The caller closes the descriptor."""
        p = Path(path)
        create = bool(flags & os.O_CREAT)
        with self.folder(p.parent, create=create) as dir_fd:
            try:
                fd = os.open(p.name, flags | _FILE, mode, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.EEXIST, errno.EMLINK) and _is_link(dir_fd, p.name):
                    raise link_refused(self.rel(p)) from None
                if exc.errno == errno.ENXIO:  # a FIFO without a reader, a socket
                    raise not_regular(self.rel(p)) from None
                raise
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise not_regular(self.rel(p))
        os.set_blocking(fd, True)
        return fd

    def opener(self, path: str | os.PathLike, flags: int) -> int:
        """For `open(path, mode, opener=fs.opener)`: the same open, never through a link."""
        return self.open_fd(path, flags)

    @contextmanager
    def replacing(self, path: str | os.PathLike, mode: int = 0o644, text: bool = False,
                  encoding: str | None = "utf-8") -> Iterator[IO]:
        """A new file written in `path`'s folder and renamed over `path` when the block ends without an error
        (atomic; whatever sat at `path`, a link included, is replaced, never written through)."""
        p = Path(path)
        with self.folder(p.parent, create=True) as dir_fd:
            fd, tmp = _temp(dir_fd, p.name, mode)
            try:
                with os.fdopen(fd, "w" if text else "wb", encoding=encoding if text else None) as f:
                    yield f
                os.replace(tmp, p.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except BaseException:
                _unlink_quietly(dir_fd, tmp)
                raise

    def write_bytes(self, path: str | os.PathLike, data: bytes, mode: int = 0o644) -> None:
        with self.replacing(path, mode) as f:
            f.write(data)

    def write_text(self, path: str | os.PathLike, text: str, mode: int = 0o644, encoding: str = "utf-8") -> None:
        with self.replacing(path, mode, text=True, encoding=encoding) as f:
            f.write(text)

    def copy_in(self, src: str | os.PathLike, dst: str | os.PathLike) -> None:
        """Copy a file (read from anywhere) to `dst` under the root, as a new file renamed into place."""
        with open(src, "rb") as fin, self.replacing(dst) as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)

    def new_file(self, path: str | os.PathLike, mode: int = 0o644) -> None:
        """An empty file at `path`, created here (O_EXCL): nothing may sit at the name."""
        os.close(self.open_fd(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))

    def new_dir(self, path: str | os.PathLike) -> None:
        """An empty folder at `path`, created here: nothing may sit at the name."""
        p = Path(path)
        with self.folder(p.parent, create=True) as dir_fd:
            try:
                os.mkdir(p.name, 0o755, dir_fd=dir_fd)
            except FileExistsError:
                if _is_link(dir_fd, p.name):
                    raise link_refused(self.rel(p)) from None
                raise

    def link_in(self, src: str | os.PathLike, dst: str | os.PathLike) -> None:
        """Hard-link the file `src` (not a link itself) as `dst` under the root; a copy when linking fails."""
        p = Path(dst)
        with self.folder(p.parent, create=True) as dir_fd:
            try:
                os.link(src, p.name, dst_dir_fd=dir_fd, follow_symlinks=False)
                return
            except FileExistsError:
                if _is_link(dir_fd, p.name):
                    raise link_refused(self.rel(p)) from None
                raise
            except OSError:
                pass  # another file system, or no permission: copy
        self.copy_in(src, dst)

    # -- rename and remove ------------------------------------------------------------------------
    def lexists(self, path: str | os.PathLike) -> bool:
        """Whether anything (a link included) sits at `path`; a symlinked parent folder counts as nothing."""
        p = Path(path)
        try:
            with self.folder(p.parent) as dir_fd:
                os.stat(p.name, dir_fd=dir_fd, follow_symlinks=False)
                return True
        except (FileNotFoundError, NotADirectoryError, UnsafePath):
            return False

    def replace(self, src: str | os.PathLike, dst: str | os.PathLike) -> None:
        """Rename `src` over `dst` (a file, or a folder over nothing). `src` must not be a link: what arrives at
        `dst` is checked to be what was checked at `src`, or it is removed again and refused."""
        s, d = Path(src), Path(dst)
        with self.folder(s.parent) as src_fd, self.folder(d.parent, create=True) as dst_fd:
            before = os.stat(s.name, dir_fd=src_fd, follow_symlinks=False)
            if stat.S_ISLNK(before.st_mode):
                raise link_refused(self.rel(s))
            os.replace(s.name, d.name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
            after = os.stat(d.name, dir_fd=dst_fd, follow_symlinks=False)
            if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):  # swapped for a link meanwhile
                self._remove_at(dst_fd, d.name)
                raise link_refused(self.rel(s))

    def remove(self, path: str | os.PathLike) -> bool:
        """Remove a file, a link (the link, not its target) or a folder tree, never following a link.
        False when nothing was there (or its folder is gone)."""
        p = Path(path)
        try:
            with self.folder(p.parent) as dir_fd:
                return self._remove_at(dir_fd, p.name)
        except (FileNotFoundError, NotADirectoryError):
            return False

    @staticmethod
    def _remove_at(dir_fd: int, name: str) -> bool:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(name, dir_fd=dir_fd)  # by descriptors; refuses a top folder that became a link
        else:
            os.unlink(name, dir_fd=dir_fd)
        return True

    def remove_named(self, top: str | os.PathLike, suffix: str) -> list[str]:
        """Remove every entry ending with `suffix` anywhere below folder `top`, walking by descriptors
        without entering a link (a link is removed itself); returns their paths relative to `top`."""
        removed: list[str] = []
        try:
            with self.folder(top) as top_fd:
                for dirpath, dirnames, filenames, dir_fd in os.fwalk(".", dir_fd=top_fd, follow_symlinks=False):
                    for name in [n for n in (*dirnames, *filenames) if n.endswith(suffix)]:
                        try:
                            if self._remove_at(dir_fd, name):
                                removed.append(os.path.normpath(os.path.join(dirpath, name)))
                        except OSError:
                            continue  # removed meanwhile, or not ours to remove: the next start tries again
                        if name in dirnames:
                            dirnames.remove(name)
        except (FileNotFoundError, NotADirectoryError):
            pass
        return removed

    # -- SQLite -----------------------------------------------------------------------------------
    def sqlite(self, path: str | os.PathLike, timeout: float = 10) -> sqlite3.Connection:
        """A connection to the database file `path`, which must be a regular file here (created empty when
        absent). SQLite resolves links in a database name itself, so the file is checked first, opened
        without SQLite's create flag (a link swapped in meanwhile to a missing target makes nothing), and
        the name SQLite actually opened must be this one, or the connection is closed unused. SQLite opens
        its journal with O_NOFOLLOW."""
        p = Path(path)
        os.close(self.open_fd(p, os.O_RDWR | os.O_CREAT))
        expected = str(self.real.joinpath(*self.parts(p)))
        db = sqlite3.connect(f"file:{quote(expected)}?mode=rw", uri=True, timeout=timeout)
        try:
            opened = db.execute("PRAGMA database_list").fetchone()[2]
        except BaseException:
            db.close()
            raise
        if opened != expected:
            db.close()
            raise link_refused(self.rel(p))
        return db


def _temp(dir_fd: int, name: str, mode: int) -> tuple[int, str]:
    """mkstemp in the folder `dir_fd`: a fresh name, created exclusively, never through a link."""
    stem = name[:200]
    for _ in range(100):
        tmp = f".{stem}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                         dir_fd=dir_fd)
        except FileExistsError:
            continue
        os.fchmod(fd, mode)  # the exact mode, whatever the umask (the login file is 0600)
        return fd, tmp
    raise FileExistsError(errno.EEXIST, "no free temporary name", name)


def _unlink_quietly(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def trusted_parent(path: str | os.PathLike) -> SafeDir:
    """The file's own folder as the trusted root: only the file's name is guarded (for helpers whose caller
    gives no data directory, such as a GGUF edited in a folder of the caller's choosing)."""
    return SafeDir(Path(path).parent)

