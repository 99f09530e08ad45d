"""Register datasets in LLaMA-Factory's `dataset_info.json` so LLaMA Board's dataset dropdown lists them.

The file belongs to the user as much as to TuneDeck: registering edits only the one entry it
writes (replaced in place when it exists, appended otherwise) and leaves every other byte of
the file as it was. The new file is written beside the old one and renamed over it.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..safe_fs import SafeDir, UnsafePath
from .easydataset import DatasetExport

INFO = "dataset_info.json"


class RegistryError(ValueError):
    """The registration cannot be done; the message is one sentence for the user."""


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def members(text: str) -> list[tuple[str, int, int, int]]:
    """(key, member start, value start, value end) of each member of a top-level JSON object."""
    dec = json.JSONDecoder()
    i = _skip_ws(text, 0)
    if i >= len(text) or text[i] != "{":
        raise RegistryError(f"{INFO} is not a JSON object.")
    i = _skip_ws(text, i + 1)
    out = []
    if i < len(text) and text[i] == "}":
        return out
    while True:
        start = i
        try:
            key, i = dec.raw_decode(text, i)
        except ValueError:
            raise RegistryError(f"{INFO} is not valid JSON (near character {i}).") from None
        i = _skip_ws(text, i)
        if not isinstance(key, str) or i >= len(text) or text[i] != ":":
            raise RegistryError(f"{INFO} is not valid JSON (near character {i}).")
        vstart = _skip_ws(text, i + 1)
        try:
            _value, vend = dec.raw_decode(text, vstart)
        except ValueError:
            raise RegistryError(f"{INFO} is not valid JSON (near character {vstart}).") from None
        out.append((key, start, vstart, vend))
        i = _skip_ws(text, vend)
        if i < len(text) and text[i] == ",":
            i = _skip_ws(text, i + 1)
            continue
        if i < len(text) and text[i] == "}":
            if text[_skip_ws(text, i + 1):].strip():
                raise RegistryError(f"{INFO} has text after its closing brace.")
            return out
        raise RegistryError(f"{INFO} is not valid JSON (near character {i}).")


def upsert(text: str, name: str, entry: dict) -> str:
    """`text` with member `name` set to `entry`; every other member keeps its exact bytes."""
    if not text.strip():
        return json.dumps({name: entry}, indent=2, ensure_ascii=False) + "\n"
    found = members(text)
    indent = "  "
    if found:
        line_start = text.rfind("\n", 0, found[0][1]) + 1
        indent = text[line_start:found[0][1]] if text[line_start:found[0][1]].strip() == "" else "  "
    value = json.dumps(entry, indent=len(indent.expandtabs()) or 2, ensure_ascii=False).replace("\n", "\n" + indent)
    same = [m for m in found if m[0] == name]
    if same:
        _key, _start, vstart, vend = same[-1]  # json.loads keeps the last of duplicate keys
        return text[:vstart] + value + text[vend:]
    close = text.rstrip().rfind("}")
    member = f"{indent}{json.dumps(name, ensure_ascii=False)}: {value}"
    if found:
        last_end = found[-1][3]
        return text[:last_end] + ",\n" + member + text[last_end:]
    return text[:close].rstrip() + "\n" + member + "\n" + text[close:]


@contextmanager
def _locked(fs: SafeDir, folder: Path) -> Iterator[None]:
    """An exclusive lock on the folder itself (opened without following a link, created when missing):
    registrations never interleave, and no lock file is left."""
    with fs.folder(folder, create=True) as fd:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


def atomic_write(fs: SafeDir, path: Path, text: str) -> None:
    """A new file beside `path` (its mode kept), synced, then renamed over it: never written through a link."""
    try:
        st = os.stat(path, follow_symlinks=False)
        mode = st.st_mode & 0o777 if stat.S_ISREG(st.st_mode) else 0o644
    except OSError:
        mode = 0o644
    with fs.replacing(path, mode, text=True) as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def entry_for(export: DatasetExport) -> dict:
    """easy-dataset's entry with the data file's absolute path (valid in every container of the stack)."""
    entry = {k: v for k, v in export.entry.items() if k != "file_name"}
    return {"file_name": export.file, **entry}


def registered(data_dir: Path) -> dict:
    path = Path(data_dir) / INFO
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def register(data_dir: Path, export: DatasetExport, root: Path | None = None) -> str:
    """Merge `export` into `<data_dir>/dataset_info.json`; returns what happened in one sentence.
    `root`: the data directory `data_dir` lies in (no link is followed from there); default `data_dir`."""
    if export.problem:
        raise RegistryError(f"{export.name} cannot be registered: {export.problem}.")
    folder = Path(data_dir)
    if root is None:
        folder.mkdir(parents=True, exist_ok=True)  # the folder itself is the trusted root
    fs = SafeDir(root if root is not None else folder)
    path = folder / INFO
    try:
        with _locked(fs, folder):
            text = path.read_text(encoding="utf-8") if path.exists() else ""
            existed = any(m[0] == export.name for m in members(text)) if text.strip() else False
            new = upsert(text, export.name, entry_for(export))
            json.loads(new)  # never write a file LLaMA Board could not read
            if new != text:
                atomic_write(fs, path, new)
    except UnsafePath as exc:
        raise RegistryError(str(exc)) from None
    verb = "already registered, unchanged" if new == text else "updated" if existed else "registered"
    return f"{export.name} {verb} in {path} ({export.rows} rows): pick it in LLaMA Board's Dataset list."
