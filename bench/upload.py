"""bench/upload: the app's RSS growth while uploading a 1 GiB GGUF-sized blob to the Ollama
stand-in through TuneDeck's Ollama client (streamed from disk). Target < 64 MiB.
Run: python bench/upload.py [MiB]
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import new_stack, report, rss_mib

from app.ollama import OllamaClient, file_digest
from tests.harness.toolbox import start_ollama

MIB = int(sys.argv[1]) if len(sys.argv) > 1 else 1024


def main() -> None:
    stack = new_stack()
    tmp = Path(tempfile.mkdtemp(prefix="td-upload-"))
    blob = tmp / "model.gguf"
    with open(blob, "wb") as f:
        chunk = os.urandom(1 << 20)
        for _ in range(MIB):
            f.write(chunk)
    try:
        ollama = start_ollama(stack)
        client = OllamaClient(ollama.url)
        digest = file_digest(blob)
        base = rss_mib()
        peak = [base]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], rss_mib())
                time.sleep(0.02)

        t = threading.Thread(target=sample)
        t.start()
        t0 = time.monotonic()
        client.push_blob(blob, digest)
        elapsed = time.monotonic() - t0
        done.set()
        t.join()
        assert client.has_blob(digest)
        report("upload", size_mib=MIB, seconds=round(elapsed, 2), mib_per_s=round(MIB / elapsed),
               rss_before_mib=round(base), rss_peak_mib=round(peak[0]), rss_growth_mib=round(peak[0] - base, 1))
    finally:
        stack.cleanup()
        blob.unlink()
        tmp.rmdir()


if __name__ == "__main__":
    main()
