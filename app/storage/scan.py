"""One pass over the data directory: bytes per folder, without following any link.

Sizes need one `lstat` per file, and in Python each costs about twice what it costs `du` (measured: the
Python engine below against `du -sb`, bench/storage.py). So the sizes come from GNU `du -S -b -0` (one line
per folder: the bytes directly inside it), run as a child process, while Python lists by name only
(`os.scandir`, no `stat`) the folders whose names the classification reads: the data dir itself, `saves/`
(run markers, checkpoints) and `exports/` (`.gguf`, `.partial`), counting their files and links. Elsewhere
(base models, datasets, the HF cache) only du's sums are kept. Where `du` is not GNU's, a Python walk
with one lstat per entry takes the sizes, and counts every file.

No link is ever followed: a symbolic link is counted as the link itself (a few bytes, as `du` counts it),
never as what it points to, and listed where Python lists names. A file with several hard links is counted
once, in the first folder the walk meets it (as `du` does); what deleting a folder really frees is measured
apart (`measure`), counting such a file only when every one of its links is inside.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..runs import RUN_MARKERS

# Names the classification looks at (runs, checkpoints, export folders); everything else is only summed.
NOTED_NAMES = frozenset((*RUN_MARKERS, "trainer_state.json", "train_results.json", "all_results.json"))
NOTED_SUFFIXES = (".gguf", ".partial")
NOTED_TOPS = frozenset(("saves", "exports"))  # where runs and export files are; elsewhere only sums matter
PROGRESS_EVERY = 5000  # files between two progress reports
MAX_LINKS = 200        # links listed by name (all are counted)
_DIR, _REG, _LNK, _FMT = 0o040000, 0o100000, 0o120000, 0o170000


class ScanCancelled(Exception):
    pass


@dataclass(frozen=True)
class Noted:
    """A `.gguf` or `.partial` entry: a file (with its size and link count) or a folder."""

    rel: str
    size: int
    nlink: int
    folder: bool


@dataclass
class Tree:
    """Sums per folder. Folder 0 is the root; a folder's parent always has a smaller index."""

    root: Path
    dirs: list[str] = field(default_factory=list)       # path relative to the root ("" for the root)
    parent: list[int] = field(default_factory=list)
    own: list[int] = field(default_factory=list)        # bytes held only here: single-link files, links, the inode
    files: list[int] = field(default_factory=list)      # regular files directly inside
    names: dict[int, set[str]] = field(default_factory=dict)  # NOTED_NAMES present, by folder
    noted: list[Noted] = field(default_factory=list)
    shared: dict[tuple[int, int], list] = field(default_factory=dict)  # (dev, ino) → [size, nlink, links seen]
    links: list[tuple[str, str]] = field(default_factory=list)        # (path, target), never followed
    link_count: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    engine: str = "python"
    _cum: list[int] | None = None
    _cum_files: list[int] | None = None
    _index: dict[str, int] | None = None
    _children: dict[int, list[int]] | None = None

    # -- sums ------------------------------------------------------------------------------
    def _sums(self) -> None:
        cum, cum_files = list(self.own), list(self.files)
        for i in range(len(self.dirs) - 1, 0, -1):
            p = self.parent[i]
            cum[p] += cum[i]
            cum_files[p] += cum_files[i]
        self._cum, self._cum_files = cum, cum_files

    def index(self, rel: str) -> int | None:
        if self._index is None or len(self._index) != len(self.dirs):
            self._index = {d: i for i, d in enumerate(self.dirs)}
        return self._index.get(rel)

    def add_dir(self, rel: str, parent: int, own: int = 0) -> int:
        self.dirs.append(rel)
        self.parent.append(parent)
        self.own.append(own)
        self.files.append(0)
        if self._index is not None:
            self._index[rel] = len(self.dirs) - 1
        self._children = self._cum = self._cum_files = None
        return len(self.dirs) - 1

    def counted(self, rel: str) -> bool:
        """Whether the files under `rel` were counted (with du, only where names are listed)."""
        return self.engine == "python" or rel.split("/", 1)[0] in NOTED_TOPS

    def size(self, rel: str) -> tuple[int, int]:
        """(bytes, files) of a folder: what `du -sb` gives for it within this walk (a hard-linked file
        counts in the first folder the walk met it in)."""
        i = self.index(rel)
        if i is None:
            return 0, 0
        if self._cum is None:
            self._sums()
        return self._cum[i], self._cum_files[i]

    @property
    def frees(self) -> int:
        """What deleting the whole tree gives back: a hard-linked file counts only when all its links are
        inside (known with the sizes engine only)."""
        return self.total - sum(size for size, nlink, seen in self.shared.values() if seen < nlink)

    @property
    def total(self) -> int:
        """What `du -sb` of the root says."""
        if self._cum is None:
            self._sums()
        return self._cum[0] if self._cum else 0

    @property
    def file_count(self) -> int:
        if self._cum_files is None:
            self._sums()
        return self._cum_files[0] if self._cum_files else 0

    def children(self, rel: str) -> list[str]:
        i = self.index(rel)
        if i is None:
            return []
        if self._children is None:
            self._children = {}
            for j in range(1, len(self.dirs)):
                self._children.setdefault(self.parent[j], []).append(j)
        return [self.dirs[j] for j in self._children.get(i, [])]



# -- the walk --------------------------------------------------------------------------------
def _start(tree: Tree, inode_size: int) -> None:
    tree.dirs.append("")
    tree.parent.append(-1)
    tree.own.append(inode_size)
    tree.files.append(0)


def _link(tree: Tree, rel: str, path: str) -> None:
    tree.link_count += 1
    if len(tree.links) < MAX_LINKS:
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        tree.links.append((rel, target))


def _walk_names(tree: Tree, should_stop: Callable[[], bool] | None) -> None:
    """The data dir's own entries and, recursively, NOTED_TOPS: folders, files counted, noted names, links,
    from the folder listings alone (no stat). Other folders are listed, not entered (du sums them)."""
    dirs, files, names, noted = tree.dirs, tree.files, tree.names, tree.noted
    _start(tree, 0)
    stack = [(str(tree.root), 0)]
    while stack:
        path, idx = stack.pop()
        if should_stop is not None and should_stop():
            raise ScanCancelled()
        rel = dirs[idx]
        nfiles = 0
        try:
            it = os.scandir(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            tree.errors.append(f"{rel or '.'}: {exc.strerror or exc}")
            continue
        with it:
            for entry in it:
                try:
                    if entry.is_file(follow_symlinks=False):
                        nfiles += 1
                        name = entry.name
                        if name in NOTED_NAMES:
                            names.setdefault(idx, set()).add(name)
                        elif name.endswith(NOTED_SUFFIXES):
                            noted.append(Noted(f"{rel}/{name}" if rel else name, -1, 1, False))
                    elif entry.is_dir(follow_symlinks=False):
                        name = entry.name
                        crel = f"{rel}/{name}" if rel else name
                        child = tree.add_dir(crel, idx)
                        if idx or name in NOTED_TOPS:
                            stack.append((entry.path, child))
                        if name.endswith(".partial"):
                            noted.append(Noted(crel, 0, 1, True))
                    elif entry.is_symlink():
                        _link(tree, f"{rel}/{entry.name}" if rel else entry.name, entry.path)
                except OSError as exc:  # a type the listing did not give, and the entry vanished
                    if not isinstance(exc, FileNotFoundError):
                        tree.errors.append(f"{rel}/{entry.name}: {exc.strerror or exc}")
        files[idx] = nfiles


def _walk_sizes(tree: Tree, progress: Callable[[int, int], None] | None,
                should_stop: Callable[[], bool] | None) -> None:
    """The same walk with one lstat per entry: the bytes too (the engine where du is not GNU's)."""
    dirs, parent, own, files, names, noted, shared = (tree.dirs, tree.parent, tree.own, tree.files, tree.names,
                                                      tree.noted, tree.shared)
    _start(tree, os.lstat(tree.root).st_size)
    stack = [(str(tree.root), 0)]
    seen_files = seen_bytes = last = 0
    while stack:
        path, idx = stack.pop()
        if should_stop is not None and should_stop():
            raise ScanCancelled()
        rel = dirs[idx]
        here = nfiles = 0
        try:
            it = os.scandir(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            tree.errors.append(f"{rel or '.'}: {exc.strerror or exc}")
            continue
        with it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:  # deleted while we looked
                    continue
                except OSError as exc:
                    tree.errors.append(f"{rel}/{entry.name}: {exc.strerror or exc}")
                    continue
                kind = st.st_mode & _FMT
                if kind == _REG:
                    size = st.st_size
                    nfiles += 1
                    seen_bytes += size
                    if st.st_nlink > 1:  # counted where first met, like du
                        slot = shared.get((st.st_dev, st.st_ino))
                        if slot is None:
                            shared[(st.st_dev, st.st_ino)] = [size, st.st_nlink, 1]
                            here += size
                        else:
                            slot[2] += 1
                    else:
                        here += size
                    name = entry.name
                    if name in NOTED_NAMES:
                        names.setdefault(idx, set()).add(name)
                    elif name.endswith(NOTED_SUFFIXES):
                        noted.append(Noted(f"{rel}/{name}" if rel else name, size, st.st_nlink, False))
                elif kind == _DIR:
                    name = entry.name
                    crel = f"{rel}/{name}" if rel else name
                    stack.append((entry.path, len(dirs)))
                    dirs.append(crel)
                    parent.append(idx)
                    own.append(st.st_size)
                    files.append(0)
                    if name.endswith(".partial"):
                        noted.append(Noted(crel, 0, 1, True))
                else:  # a link (its own bytes, as du counts them), a socket, a fifo
                    here += st.st_size
                    if kind == _LNK:
                        _link(tree, f"{rel}/{entry.name}" if rel else entry.name, entry.path)
        own[idx] += here
        files[idx] = nfiles
        seen_files += nfiles
        if progress is not None and seen_files - last >= PROGRESS_EVERY:
            last = seen_files
            progress(seen_files, seen_bytes)


class _Du:
    """GNU `du -S -b -0 ROOT` in a child process, read by a thread: the bytes directly inside each folder
    (its own inode, its files, its links), every hard-linked file once."""

    def __init__(self, root: Path, progress: Callable[[int, int], None] | None) -> None:
        self.root = os.fsencode(root)
        self.own: dict[bytes, int] = {}
        self.errors: list[str] = []
        self._progress = progress
        self._err = tempfile.TemporaryFile()  # not a pipe: a flood of errors must never block du
        self._proc = subprocess.Popen(["du", "-S", "-b", "-0", "--", self.root], stdout=subprocess.PIPE,
                                      stderr=self._err, stdin=subprocess.DEVNULL)
        self._thread = threading.Thread(target=self._read, name="storage-du", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        buf, total, folders, last = b"", 0, 0, 0
        read = self._proc.stdout.read1
        while chunk := read(1 << 16):
            buf += chunk
            *lines, buf = buf.split(b"\0")
            for line in lines:
                size, _, path = line.partition(b"\t")
                n = int(size)
                self.own[path] = n
                total += n
                folders += 1
            if self._progress is not None and folders - last >= 200:
                last = folders
                self._progress(folders, total)

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._thread.join(5)
        self._err.close()

    def wait(self, should_stop: Callable[[], bool] | None = None) -> None:
        """Until du has finished; ScanCancelled (du killed) as soon as `should_stop()` says so."""
        while True:
            try:
                self._proc.wait(0.1)
                break
            except subprocess.TimeoutExpired:
                if should_stop is not None and should_stop():
                    self.stop()
                    raise ScanCancelled() from None
        self._thread.join()
        self._err.seek(0)
        lines = self._err.read(1 << 20).decode("utf-8", "replace").splitlines()
        self._err.close()
        for line in lines[:200]:
            if line.strip():  # "du: cannot read directory '…': Permission denied"
                self.errors.append(line.removeprefix("du: ").strip())
        if self._proc.returncode not in (0, 1):  # 1: some folder could not be read (said above)
            self.errors.append(f"du exited with code {self._proc.returncode}: the sizes are incomplete")

    def sizes(self, tree: Tree) -> None:
        """Put du's bytes on the listed folders, and add the folders only du saw (below the ones Python
        does not enter), parents first."""
        prefix = self.root + b"/"
        unlisted = []
        for path, n in self.own.items():
            if path == self.root:
                tree.own[0] = n
                continue
            if not path.startswith(prefix):
                continue
            rel = os.fsdecode(path[len(prefix):])
            i = tree.index(rel)
            if i is not None:
                tree.own[i] = n
            else:
                unlisted.append((rel, n))
        unlisted.sort()  # a parent's path sorts before its children's
        for rel, n in unlisted:
            parent = tree.index(rel.rpartition("/")[0])
            if parent is not None:  # else made after the listing, inside a folder made after it: next scan
                tree.add_dir(rel, parent, n)


_GNU_DU: bool | None = None


def gnu_du() -> bool:
    """Whether `du` is GNU's (it has -S, -b and -0); asked once."""
    global _GNU_DU
    if _GNU_DU is None:
        try:
            out = subprocess.run(["du", "--version"], capture_output=True, text=True, timeout=10).stdout
            _GNU_DU = "GNU coreutils" in out
        except (OSError, subprocess.SubprocessError):
            _GNU_DU = False
    return _GNU_DU


def scan_tree(root: Path, on_progress: Callable[[int, int], None] | None = None,
              should_stop: Callable[[], bool] | None = None, engine: str = "auto", resolved: bool = False) -> Tree:
    """Walk `root` (resolved first) without following links. `on_progress(count, bytes)` is called every
    few thousand files (engine "python") or few hundred folders ("du"); `should_stop()` is asked once per
    folder (then ScanCancelled). engine: "du", "python" or "auto" (du when it is GNU's)."""
    started = time.perf_counter()
    tree = Tree(Path(root) if resolved else Path(root).resolve())
    use_du = engine == "du" or (engine == "auto" and gnu_du())
    tree.engine = "du" if use_du else "python"
    if not use_du:
        _walk_sizes(tree, on_progress, should_stop)
    else:
        du = _Du(tree.root, on_progress)
        try:
            _walk_names(tree, should_stop)
            du.wait(should_stop)
        except BaseException:
            du.stop()
            raise
        du.sizes(tree)
        tree.errors.extend(du.errors)
        noted = []
        for item in tree.noted:
            if item.folder:
                noted.append(item)
                continue
            try:
                st = os.lstat(tree.root / item.rel)
            except OSError:
                continue
            noted.append(Noted(item.rel, st.st_size, st.st_nlink, False))
        tree.noted[:] = noted
    tree.seconds = time.perf_counter() - started
    if on_progress is not None:
        on_progress(tree.file_count, tree.total)
    return tree


def measure(path: Path) -> tuple[int, int, int]:
    """(bytes, frees, files) of one folder or file (a path without links: from a scan), exactly: a
    hard-linked file frees its bytes only when every one of its links is inside. A link is itself."""
    st = os.lstat(path)
    if (st.st_mode & _FMT) != _DIR:
        return st.st_size, st.st_size if st.st_nlink <= 1 else 0, 1
    tree = scan_tree(path, engine="python", resolved=True)
    return tree.total, tree.frees, tree.file_count
