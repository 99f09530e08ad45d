"""Fast reader of a Docker log response: de-chunks HTTP and demultiplexes stdout/stderr frames in bulk.

Docker sends every log line as its own HTTP chunk and stream frame; docker-py (and
http.client) then pay two small reads per line, which caps a follower near 15k lines/s.
Reading whatever the socket holds (up to 256 KiB) and splitting chunks and frames from
that buffer keeps up with `docker logs -f`.

The fast path reads the socket file under urllib3's response (`response.raw._fp.fp`), a
private attribute of urllib3/http.client. `socket_file()` is the one place that touches it;
when it is missing (a dependency changed), the reader logs a warning and falls back to
requests' public `iter_content`, slower but correct. A unit test fails if the fast path is gone.
"""

from __future__ import annotations

import logging
import socket
from typing import Iterator

log = logging.getLogger(__name__)
READ_SIZE = 1 << 18
FRAME_HEADER = 8  # stream type (1), padding (3), big-endian length (4)


class FastPathUnavailable(RuntimeError):
    """The private attributes the fast path needs are gone."""


def socket_file(response):
    """The buffered socket file under a streamed requests/urllib3 response (private attributes)."""
    try:
        fp = response.raw._fp.fp
    except AttributeError as exc:
        raise FastPathUnavailable(f"response.raw._fp.fp is missing ({exc})") from None
    if fp is None or not hasattr(fp, "read1"):
        raise FastPathUnavailable("response.raw._fp.fp has no read1()")
    return fp


def dechunk(buf: bytes) -> tuple[list[bytes], bytes, bool]:
    """Complete HTTP/1.1 chunks at the start of `buf` → (their payloads, the unread rest, ended)."""
    out, pos = [], 0
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return out, buf[pos:], False
        size = int(buf[pos:eol].split(b";")[0].strip() or b"0", 16)
        if size == 0:
            return out, b"", True
        end = eol + 2 + size
        if end + 2 > len(buf):
            return out, buf[pos:], False
        out.append(buf[eol + 2:end])
        pos = end + 2


def demux(buf: bytes) -> tuple[bytes, bytes]:
    """Complete stdout/stderr frames at the start of `buf` → (their payloads joined, the unread rest)."""
    parts, pos, size = [], 0, len(buf)
    while size - pos >= FRAME_HEADER:
        length = int.from_bytes(buf[pos + 4:pos + 8], "big")
        if size - pos - FRAME_HEADER < length:
            break
        parts.append(buf[pos + FRAME_HEADER:pos + FRAME_HEADER + length])
        pos += FRAME_HEADER + length
    return b"".join(parts), buf[pos:]


class LogChunks:
    """Iterate a Docker log response as byte chunks of log text (frames removed); `close()` from
    another thread unblocks a reader at once."""

    def __init__(self, response, tty: bool) -> None:
        self._res = response
        self._tty = tty

    def _raw_pieces(self) -> Iterator[bytes]:
        """Bytes of the response body, HTTP chunking removed."""
        chunked = self._res.headers.get("Transfer-Encoding", "").lower() == "chunked"
        try:
            reader = socket_file(self._res) if chunked else self._res.raw
            read1 = reader.read1
        except (FastPathUnavailable, AttributeError) as exc:
            log.warning("fast Docker log reader unavailable (%s); using the slower standard reader", exc)
            yield from self._res.iter_content(chunk_size=None)
            return
        raw = b""
        while True:
            data = read1(READ_SIZE)
            if not data:
                return
            if not chunked:
                yield data
                continue
            pieces, raw, ended = dechunk(raw + data)
            if pieces:
                yield b"".join(pieces)
            if ended:
                return

    def __iter__(self) -> Iterator[bytes]:
        frames = b""
        for data in self._raw_pieces():
            if self._tty:
                if data:
                    yield data
                continue
            payload, frames = demux(frames + data)
            if payload:
                yield payload

    def close(self) -> None:
        """Shut the socket down (wakes a blocked read in another thread), then close the response."""
        try:
            sock = socket_file(self._res).raw._sock
            sock.shutdown(socket.SHUT_RDWR)
        except (FastPathUnavailable, AttributeError, OSError) as exc:
            log.debug("log stream socket shutdown skipped: %s", exc)
        try:
            self._res.close()
        except Exception as exc:  # noqa: BLE001 - a half-closed response may fail to close again
            log.debug("closing a log response failed: %s", exc)
