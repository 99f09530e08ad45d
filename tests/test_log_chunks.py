"""The fast Docker log reader on raw bytes: HTTP chunks and stream frames split anywhere, both
channels, TTY streams, truncated input; and the private attributes its fast path relies on."""

from __future__ import annotations

import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from app.log_chunks import FastPathUnavailable, LogChunks, dechunk, demux, socket_file


def frame(channel: int, payload: bytes) -> bytes:
    return bytes([channel, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload


def chunk(payload: bytes) -> bytes:
    return f"{len(payload):x}\r\n".encode() + payload + b"\r\n"


def feed_dechunk(data: bytes, cuts: list[int]) -> tuple[bytes, bool]:
    out, rest, ended = [], b"", False
    prev = 0
    for cut in [*cuts, len(data)]:
        pieces, rest, ended = dechunk(rest + data[prev:cut])
        out += pieces
        prev = cut
    return b"".join(out), ended


def feed_demux(data: bytes, cuts: list[int]) -> bytes:
    out, rest, prev = [], b"", 0
    for cut in [*cuts, len(data)]:
        payload, rest = demux(rest + data[prev:cut])
        out.append(payload)
        prev = cut
    assert rest == b"", "a complete stream left bytes behind"
    return b"".join(out)


LINES = [f"2026-11-28T18:00:{i % 60:02d}.000000000Z line {i} {'x' * (i % 37)}\n".encode() for i in range(300)]


def test_frames_split_at_every_position_and_both_channels_are_kept():
    stream = b"".join(frame(1 if i % 3 else 2, line) for i, line in enumerate(LINES[:20]))
    expected = b"".join(LINES[:20])
    for cut in range(len(stream) + 1):  # one read boundary anywhere, including inside a header
        assert feed_demux(stream, [cut]) == expected
    rng = random.Random(7)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(stream)), 12))
        assert feed_demux(stream, cuts) == expected


def test_chunk_boundaries_inside_frames_and_chunk_extensions():
    frames = b"".join(frame(1, line) for line in LINES)
    # Docker's chunks do not align with frames: cut the frame stream into chunks of odd sizes
    rng = random.Random(3)
    body, pos = b"", 0
    while pos < len(frames):
        size = rng.randint(1, 900)
        piece = frames[pos:pos + size]
        body += (f"{len(piece):x};ext=1\r\n".encode() + piece + b"\r\n") if size % 5 == 0 else chunk(piece)
        pos += size
    body += b"0\r\n\r\n"
    for cuts in ([], [1], [2, 3, 4], sorted(rng.sample(range(1, len(body)), 40))):
        data, ended = feed_dechunk(body, cuts)
        assert ended and data == frames
        assert feed_demux(data, sorted(rng.sample(range(1, len(data)), 25))) == b"".join(LINES)


def test_truncated_input_yields_only_complete_parts():
    stream = frame(1, b"complete\n") + frame(2, b"cut short")[:11]
    payload, rest = demux(stream)
    assert payload == b"complete\n" and rest == frame(2, b"cut short")[:11]  # kept for the next read
    pieces, rest, ended = dechunk(chunk(b"abc") + b"10\r\nonly-part")
    assert pieces == [b"abc"] and rest == b"10\r\nonly-part" and not ended
    pieces, rest, ended = dechunk(b"5")  # not even a full size line yet
    assert pieces == [] and rest == b"5" and not ended


# -- against a real HTTP stream ----------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    body: list[bytes] = []
    chunked = True
    gap = 0.0

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.docker.raw-stream")
        if self.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(sum(len(b) for b in self.body)))
        self.end_headers()
        for piece in self.body:
            self.wfile.write(chunk(piece) if self.chunked else piece)
            self.wfile.flush()
            if self.gap:
                time.sleep(self.gap)
        if self.chunked:
            self.wfile.write(b"0\r\n\r\n")


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/logs"
    srv.shutdown()


def _read(url: str, tty: bool) -> bytes:
    res = requests.get(url, stream=True, timeout=10)
    return b"".join(LogChunks(res, tty=tty))


def test_multiplexed_stream_over_http(server):
    _Handler.chunked, _Handler.gap = True, 0.0
    _Handler.body = [frame(1 + i % 2, line) for i, line in enumerate(LINES)]
    assert _read(server, tty=False) == b"".join(LINES)


def test_tty_stream_one_byte_per_chunk(server):
    _Handler.chunked, _Handler.gap = True, 0.0
    text = b"".join(LINES[:30])
    _Handler.body = [text[i:i + 1] for i in range(len(text))]  # what Docker sends for a TTY container
    assert _read(server, tty=True) == text


def test_not_chunked_response(server):
    _Handler.chunked, _Handler.gap = False, 0.0
    _Handler.body = [frame(1, line) for line in LINES[:50]]
    assert _read(server, tty=False) == b"".join(LINES[:50])


def test_fast_path_attributes_exist_and_close_unblocks_a_reader(server):
    """Fails loudly if urllib3/requests drop the private attributes the fast path reads."""
    _Handler.chunked, _Handler.gap = True, 5.0
    _Handler.body = [frame(1, b"first\n"), frame(1, b"second, much later\n")]
    res = requests.get(server, stream=True, timeout=30)
    fp = socket_file(res)  # raises FastPathUnavailable if the attribute chain is gone
    assert hasattr(fp, "read1") and isinstance(fp.raw._sock, socket.socket)
    reader = LogChunks(res, tty=False)
    got: list[bytes] = []
    t = threading.Thread(target=lambda: got.extend(reader), daemon=True)
    t.start()
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    assert got == [b"first\n"]
    t0 = time.monotonic()
    reader.close()
    t.join(3)
    assert not t.is_alive() and time.monotonic() - t0 < 3, "close() did not unblock the reader"


def test_missing_private_attributes_fall_back_to_the_public_reader(server, caplog):
    _Handler.chunked, _Handler.gap = True, 0.0
    _Handler.body = [frame(1, line) for line in LINES[:40]]
    res = requests.get(server, stream=True, timeout=10)

    class Hidden:  # urllib3 response without `_fp`
        def __init__(self, raw):
            self._raw = raw

        def __getattr__(self, name):
            if name == "_fp":
                raise AttributeError(name)
            return getattr(self._raw, name)

    res.raw = Hidden(res.raw)
    with pytest.raises(FastPathUnavailable):
        socket_file(res)
    assert b"".join(LogChunks(res, tty=False)) == b"".join(LINES[:40])
    assert "fast Docker log reader unavailable" in caplog.text
