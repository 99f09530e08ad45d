"""bench/progress_log: what one viewer of an export receives while a long tool redraws a progress bar.

A 3-minute tool redraws a tqdm bar 20 times a second and prints an ordinary line every half second (the
shape of llama.cpp's converter on a large model: one line per tensor, a "Writing" bar). It stands in for the
converter (TUNEDECK_CONVERT_SCRIPT; when it is done it runs the real one, so the export goes on), and runs
through TuneDeck's real path: the convert stage's ToolRunner, `docker exec` in the llama.cpp container, the
job log, the /export stream, one gradio_client viewer behind the project's Caddyfile (as deployed: Caddy is
the only way in, and compresses), with a byte-counting TCP proxy on each side of Caddy.

Reports ratio = bytes the viewer received / the size of the final log (goal <= 2), ratio_direct = the same
for what the app itself sent (uncompressed, before Caddy; Gradio's last message repeats every output in
full, so this one cannot go under about 2), and progress_values = the distinct progress values the viewer
saw during the convert stage (the bar moves with the tool's own progress).
Run: python bench/progress_log.py   (PROGRESS_LOG_SECONDS=20 for a quick run; default 180)
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

from _common import new_stack, report

from gradio_client import Client
from tests.harness.appserver import app_process, settings_for
from tests.harness.caddy import running_caddy
from tests.harness.sockproxy import pipe
from tests.harness.toolbox import start_llamacpp, start_llamafactory, start_ollama, tiny_run

SECONDS = float(os.environ.get("PROGRESS_LOG_SECONDS", "180"))
DUMP = os.environ.get("PROGRESS_LOG_DUMP", "")  # a file that receives every byte sent to the viewer
REDRAWS_PER_S = 20
LINE_EVERY = 10  # redraws: two ordinary lines a second
TOOL = '''"""A converter that takes {seconds:g} s: a tqdm bar redrawn {hz} times a second, a line per tensor."""
import os, sys, time
from tqdm import tqdm

steps = int({seconds} * {hz})
bar = tqdm(total=steps, desc="Writing", unit="tensor", mininterval=0, miniters=1, ncols=100, file=sys.stderr)
start = time.monotonic()
for i in range(steps):
    time.sleep(max(0.0, start + (i + 1) / {hz} - time.monotonic()))
    bar.update(1)
    if i % {every} == 0:
        print(f"INFO:hf-to-gguf:blk.{{i // {every}}}.ffn_down.weight, torch.float16 --> F16, shape = {{{{4096, 14336}}}}",
              flush=True)
bar.close()
os.execv(sys.executable, [sys.executable, "/app/convert_hf_to_gguf.py", *sys.argv[1:]])
'''


class CountingProxy:
    """A TCP forwarder in front of the app that counts the bytes sent to the client."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.sent = 0
        self._lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=pipe, args=(upstream, client, self._count), daemon=True).start()

    def _count(self, data: bytes) -> None:
        with self._lock:
            self.sent += len(data)
            if DUMP:
                with open(DUMP, "ab") as f:
                    f.write(data)

    def close(self) -> None:
        self.server.close()


def main() -> None:
    stack = new_stack()
    tmp = Path(tempfile.mkdtemp(prefix="td-progress-"))
    data = tmp / "data"
    data.mkdir()
    try:
        run = tiny_run(data, tmp)
        tool = data / "bench-tools" / "progress_converter.py"
        tool.parent.mkdir()
        tool.write_text(TOOL.format(seconds=SECONDS, hz=REDRAWS_PER_S, every=LINE_EVERY))
        start_llamafactory(stack, data)
        start_llamacpp(stack, data)
        ollama = start_ollama(stack)
        os.environ["TUNEDECK_CONVERT_SCRIPT"] = str(tool)  # app_process passes the environment on
        settings = settings_for(tunedeck_project=stack.project, tunedeck_data_dir=str(data),
                                tunedeck_ollama_url=ollama.url)
        with app_process(settings) as (_proc, url), ExitStack() as later:
            app_side = CountingProxy(int(url.rsplit(":", 1)[1]))
            caddy = later.enter_context(running_caddy({"TUNEDECK_UPSTREAM": f"127.0.0.1:{app_side.port}"}))
            viewer_side = CountingProxy(caddy.port)
            client = Client(f"http://127.0.0.1:{viewer_side.port}", verbose=False)
            before = viewer_side.sent, app_side.sent
            job = client.submit(run, "", "", "f16", [], "progress-bench", "", True, False, False, 0.05,
                                api_name="/export")
            updates, convert_values, log, status = 0, set(), "", {}
            t0 = time.monotonic()
            for log, status in job:
                updates += 1
                if status.get("stage") == "convert" and status.get("status") == "running":
                    convert_values.add(status["progress"])
            elapsed = time.monotonic() - t0
            time.sleep(0.5)
            sent, direct = viewer_side.sent - before[0], app_side.sent - before[1]
            client.close()
            for proxy in (viewer_side, app_side):
                proxy.close()
        final = len(log.encode())
        report("progress_log", tool_s=round(SECONDS), status=status.get("status"), updates=updates,
               bytes_sent=sent, bytes_sent_direct=direct, final_log_bytes=final, log_lines=log.count("\n") + 1,
               progress_values=len(convert_values), export_s=round(elapsed, 1),
               convert_s=(status.get("stage_seconds") or {}).get("convert"),
               ratio_direct=round(direct / max(final, 1), 3), ratio=round(sent / max(final, 1), 3))
    finally:
        stack.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
