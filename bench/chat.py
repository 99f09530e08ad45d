"""bench/chat: tokens per second a client receives through TuneDeck's /chat, divided by the tokens per
second from calling the Ollama stand-in's /api/chat directly; and the first token's extra latency.

The stand-in runs the tiny model's real GGUF with llama.cpp, its end-of-sequence token muted so
every answer runs to the token limit, at 1,100 to 2,200 tokens/s: far faster than any real model, so
/chat sends the tokens of each 25 ms together. The app runs in its own process (as users run it),
and the stand-in generates on one thread: on this 2-core box, two generation threads would compete
for the CPU with the app and the client, while a real Ollama generates on its GPU. Both sides
alternate five times; medians are compared.
Through gradio_client (`ratio`, `first_token_extra_ms`) and through Gradio's plain HTTP API
(`http_*`: POST /gradio_api/call/chat, then its event stream). The stand-in's own generation
rate (`generated_tok_s_*`, from eval_duration) shows how much of a gap is the CPU the app and
its client take from generation on this box; `delivered_per_generated` compares the two sides
with that removed. 4,000 tokens: a stream of about 2.5 s, so the client's 50 ms polling steps
at its two ends weigh little.
Targets: ratio >= 0.95, first-token extra latency < 100 ms.   Run: python bench/chat.py [TOKENS]
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _common import new_stack, report

from app.ollama import OllamaClient, file_digest
from gradio_client import Client
from tests.harness.appserver import app_process, settings_for
from tests.harness.toolbox import run_tools_script, start_ollama

TOKENS = int(sys.argv[1]) if len(sys.argv) > 1 else 4000
MESSAGES = [{"role": "user", "content": "Tell me a long story."}]
OPTIONS = {"num_predict": TOKENS, "temperature": 0, "seed": 1}


def direct(url: str) -> tuple[float, float, int]:
    """(tokens/s as received, seconds to the first token, tokens) calling the stand-in itself."""
    t0 = time.monotonic()
    first = None
    with httpx.stream("POST", url + "/api/chat", json={"model": "bench", "messages": MESSAGES, "options": OPTIONS,
                                                        "stream": True}, timeout=300) as resp:
        for line in resp.iter_lines():
            item = json.loads(line)
            if first is None and (item.get("message") or {}).get("content"):
                first = time.monotonic()
            if item.get("done"):
                count, generated = item["eval_count"], item["eval_count"] / item["eval_duration"] * 1e9
    return count / (time.monotonic() - first), first - t0, count, generated


def through_tunedeck(client: Client) -> tuple[float, float, int]:
    t0 = time.monotonic()
    first = None
    job = client.submit("bench", MESSAGES, OPTIONS, api_name="/chat")
    for update in job:
        if first is None and update["content"]:
            first = time.monotonic()
        if update["done"]:
            count, generated = update["stats"]["eval_tokens"], update["stats"]["tokens_per_s"]
    return count / (time.monotonic() - first), first - t0, count, generated


def through_http(url: str) -> tuple[float, float, int]:
    """The same through Gradio's documented HTTP API (POST /call, then its event stream): what
    TuneDeck adds without gradio_client, which looks for new messages every 50 ms."""
    t0 = time.monotonic()
    first = None
    with httpx.Client(base_url=url, timeout=300) as c:
        event = c.post("/gradio_api/call/chat", json={"data": ["bench", MESSAGES, OPTIONS]}).json()["event_id"]
        with c.stream("GET", f"/gradio_api/call/chat/{event}") as resp:
            for line in resp.iter_lines():
                if not line.startswith("data:") or line == "data: null":
                    continue
                update = json.loads(line[5:])[0]
                if first is None and update["content"]:
                    first = time.monotonic()
                if update["done"]:
                    count, generated = update["stats"]["eval_tokens"], update["stats"]["tokens_per_s"]
    return count / (time.monotonic() - first), first - t0, count, generated


def main() -> None:
    stack = new_stack()
    data = Path(tempfile.mkdtemp(prefix="td-bench-chat-"))
    try:
        gguf = make_gguf(data)
        ollama = start_ollama(stack, threads=1)
        oc = OllamaClient(ollama.url)
        digest = file_digest(gguf)
        oc.push_blob(gguf, digest)
        list(oc.create({"model": "bench", "files": {"model.gguf": digest},
                        "template": "{{ range .Messages }}{{ .Content }}{{ end }}",
                        "parameters": {"num_ctx": TOKENS + 64}}))
        settings = settings_for(tunedeck_project=stack.project, tunedeck_data_dir=str(data),
                                tunedeck_ollama_url=ollama.url)
        with app_process(settings) as (_proc, url):
            client = Client(url, verbose=False)
            direct(ollama.url), through_tunedeck(client), through_http(url)  # warm-up
            ours, theirs, plain = [], [], []
            for _ in range(5):
                theirs.append(direct(ollama.url))
                ours.append(through_tunedeck(client))
                plain.append(through_http(url))
            client.close()
        rate_d, rate_t = statistics.median(r[0] for r in theirs), statistics.median(r[0] for r in ours)
        first_d, first_t = statistics.median(r[1] for r in theirs), statistics.median(r[1] for r in ours)
        report("chat", tokens=ours[-1][2], direct_tok_s=round(rate_d), tunedeck_tok_s=round(rate_t),
               ratio=round(rate_t / rate_d, 3), first_token_direct_ms=round(first_d * 1000),
               first_token_tunedeck_ms=round(first_t * 1000),
               first_token_extra_ms=round((first_t - first_d) * 1000),
               http_ratio=round(statistics.median(r[0] for r in plain) / rate_d, 3),
               http_first_token_extra_ms=round((statistics.median(r[1] for r in plain) - first_d) * 1000),
               generated_tok_s_direct=round(statistics.median(r[3] for r in theirs)),
               generated_tok_s_tunedeck=round(statistics.median(r[3] for r in ours)),
               delivered_per_generated=round(statistics.median(r[0] / r[3] for r in ours)
                                             / statistics.median(r[0] / r[3] for r in theirs), 3))
    finally:
        stack.cleanup()
        shutil.rmtree(data, ignore_errors=True)


def make_gguf(data: Path) -> Path:
    """The tiny model, </s> muted, converted to f16 with the real converter (tools venv)."""
    import os
    import subprocess

    from tests.harness.toolbox import tiny_run, tools_python

    tiny_run(data, data)
    model = data / "models" / "tiny-llama"
    run_tools_script("mute_token.py", str(model), "2")
    out = data / "bench.gguf"
    app_dir = os.environ["TUNEDECK_LLAMACPP_APP"]
    subprocess.run([tools_python(), f"{app_dir}/convert_hf_to_gguf.py", str(model), "--outtype", "f16",
                    "--outfile", str(out)], check=True, capture_output=True)
    return out


if __name__ == "__main__":
    main()
