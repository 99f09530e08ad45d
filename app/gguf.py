"""Read a GGUF file's metadata (header only, pure Python): what llama.cpp and Ollama will do with it,
e.g. whether they add a BOS token themselves, without loading any weights."""

from __future__ import annotations

import struct
from pathlib import Path

from .safe_fs import SafeDir, trusted_parent

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
MAX_STRING = 1 << 26
SMALL_ARRAY = 64  # arrays longer than this (token lists) are skipped, their length kept


class NotGGUF(ValueError):
    pass


class _Reader:
    def __init__(self, f) -> None:
        self.f = f

    def read(self, fmt: str):
        size = struct.calcsize(fmt)
        data = self.f.read(size)
        if len(data) != size:
            raise NotGGUF("truncated GGUF header")
        return struct.unpack(fmt, data)[0]

    def string(self) -> str:
        n = self.read("<Q")
        if n > MAX_STRING:
            raise NotGGUF("corrupt GGUF string length")
        return self.f.read(n).decode("utf-8", "replace")

    def skip_string(self) -> None:
        n = self.read("<Q")
        if n > MAX_STRING:
            raise NotGGUF("corrupt GGUF string length")
        self.f.seek(n, 1)

    def value(self, vtype: int):
        if vtype in _SCALARS:
            return self.read(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            itype, count = self.read("<I"), self.read("<Q")
            if count <= SMALL_ARRAY:
                return [self.value(itype) for _ in range(count)]
            if itype in _SCALARS:
                self.f.seek(struct.calcsize(_SCALARS[itype]) * count, 1)
            elif itype == _STRING:
                for _ in range(count):
                    self.skip_string()
            else:
                raise NotGGUF(f"unsupported nested GGUF array of type {itype}")
            return {"array_length": count}
        raise NotGGUF(f"corrupt GGUF value type {vtype}")


def read_metadata(path: Path) -> dict:
    """Every metadata key of a GGUF file (long arrays as {"array_length": n}); raises NotGGUF."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise NotGGUF(f"{Path(path).name} is not a GGUF file")
        r = _Reader(f)
        version = r.read("<I")
        if version not in (2, 3):
            raise NotGGUF(f"unsupported GGUF version {version}")
        r.read("<Q")  # tensor count
        n_kv = r.read("<Q")
        meta: dict = {"GGUF.version": version}
        for _ in range(n_kv):
            key = r.string()
            meta[key] = r.value(r.read("<I"))
    return meta


def adds_bos(meta: dict) -> bool:
    """Whether llama.cpp prepends BOS when it tokenizes a prompt (its default is true for SPM/BPE
    vocabularies that declare no preference)."""
    value = meta.get("tokenizer.ggml.add_bos_token")
    if value is None:
        return meta.get("tokenizer.ggml.model") in ("llama",)
    return bool(value)


def set_bool(path: Path, key: str, value: bool, fs: SafeDir | None = None) -> bool:
    """Rewrite a boolean metadata value in place (one byte; the file keeps its size and layout).
    False when the file has no such boolean key (see `add_bool`). The file is opened through `fs` (default:
    its own folder), never through a link."""
    fs = fs or trusted_parent(path)
    with open(path, "r+b", opener=fs.opener) as f:
        if f.read(4) != b"GGUF":
            raise NotGGUF(f"{Path(path).name} is not a GGUF file")
        r = _Reader(f)
        if r.read("<I") not in (2, 3):
            raise NotGGUF("unsupported GGUF version")
        r.read("<Q")
        for _ in range(r.read("<Q")):
            name = r.string()
            vtype = r.read("<I")
            if name == key and vtype == 7:
                f.write(b"\x01" if value else b"\x00")
                return True
            r.value(vtype)
    return False


def token_pieces(path: Path, ids: set[int]) -> dict[int, str]:
    """The vocabulary's text of the given token ids (`tokenizer.ggml.tokens`), to name a token in a sentence."""
    out: dict[int, str] = {}
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise NotGGUF(f"{Path(path).name} is not a GGUF file")
        r = _Reader(f)
        r.read("<I")
        r.read("<Q")
        for _ in range(r.read("<Q")):
            name = r.string()
            vtype = r.read("<I")
            if name == "tokenizer.ggml.tokens" and vtype == _ARRAY:
                itype, count = r.read("<I"), r.read("<Q")
                if itype != _STRING:
                    break
                for i in range(count):
                    if i in ids:
                        out[i] = r.string()
                    else:
                        r.skip_string()
                break
            r.value(vtype)
    return out


def _skip_tensor_infos(r: _Reader, count: int) -> None:
    for _ in range(count):
        r.skip_string()
        dims = r.read("<I")
        r.f.seek(8 * dims + 4 + 8, 1)  # dims, type, offset


def add_bool(path: Path, key: str, value: bool, chunk: int = 16 << 20, fs: SafeDir | None = None) -> None:
    """Add a boolean metadata key by rewriting the file (new header, same tensor infos, tensor data copied
    after re-padding to the file's alignment): for a key the converter did not write. The new file is
    written beside it and renamed over it through `fs` (default: its own folder)."""
    path = Path(path)
    fs = fs or trusted_parent(path)
    with open(path, "rb", opener=fs.opener) as f:
        if f.read(4) != b"GGUF":
            raise NotGGUF(f"{path.name} is not a GGUF file")
        r = _Reader(f)
        version = r.read("<I")
        n_tensors, n_kv = r.read("<Q"), r.read("<Q")
        kv_start = f.tell()
        alignment = 32
        for _ in range(n_kv):
            name = r.string()
            vtype = r.read("<I")
            v = r.value(vtype)
            if name == "general.alignment" and isinstance(v, int):
                alignment = v
        kv_end = f.tell()
        _skip_tensor_infos(r, n_tensors)
        infos_end = f.tell()
        data_start = -(-infos_end // alignment) * alignment
        raw_key = key.encode()
        entry = struct.pack("<Q", len(raw_key)) + raw_key + struct.pack("<I", 7) + (b"\x01" if value else b"\x00")
        with fs.replacing(path) as out:
            out.write(b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv + 1))
            f.seek(kv_start)
            out.write(f.read(kv_end - kv_start))
            out.write(entry)
            out.write(f.read(infos_end - kv_end))
            out.write(b"\0" * (-out.tell() % alignment))
            f.seek(data_start)
            while block := f.read(chunk):
                out.write(block)
