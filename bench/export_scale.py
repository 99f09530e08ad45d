"""bench/export_scale: one export on three sizes of one family with a real vocabulary (the zoo's Llama 2
tokenizer, 32,000 tokens; about 20M, 70M and 500M parameters, random weights, a random non-zero LoRA),
through TuneDeck's API and by hand, in the same run.

Per size it reports: seconds per stage; the peak memory of each tool container (cgroup, sampled every
0.2 s); `ratio=` the core stages (merge, convert, quantize, load; less the checks' own time) over the same
tools run by hand (goal <= 1.05); `full_ratio=` the whole export with every check over the core stages by
hand (goal <= 1.25). Finally a least-squares fit of each side's seconds against parameters, projected to 7B.
Run: python bench/export_scale.py [--sizes 20m,70m,500m]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from _common import new_stack, report

from gradio_client import Client
from tests.harness.appserver import running_app, settings_for
from tests.harness.toolbox import run_tools_script, start_llamacpp, start_llamafactory, start_ollama
from tests.harness.zoo import zoo_dir

SIZES = {  # name: (hidden, intermediate, layers)
    "20m": (256, 512, 2),
    "70m": (512, 1536, 12),
    "500m": (1280, 3456, 24),
}
CORE = ("merge", "convert", "quantize", "load")


class PeakMemory:
    """Peak memory use of some containers, from a sampling thread (`docker stats` costs seconds a call)."""

    def __init__(self, containers: dict) -> None:
        self.containers, self.peak = containers, {name: 0 for name in containers}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _usage(self, container) -> int:
        cid = container.id
        for path in (f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/memory.current",
                     f"/sys/fs/cgroup/docker/{cid}/memory.current",
                     f"/sys/fs/cgroup/memory/docker/{cid}/memory.usage_in_bytes"):
            try:
                return int(Path(path).read_text())
            except OSError:
                continue
        return 0

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for name, c in self.containers.items():
                self.peak[name] = max(self.peak[name], self._usage(c))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def by_hand(data: Path, lf, cpp, run: str, base: Path, tag: str) -> float:
    """merge, convert, quantize and the upload + create in Ollama, as a user would type them."""
    out = data / "by-hand" / tag
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t0 = time.monotonic()
    (out / "merge.yaml").write_text(
        f"model_name_or_path: {base}\nadapter_name_or_path: {data}/saves/{run}\ntemplate: llama2\n"
        f"finetuning_type: lora\ntrust_remote_code: true\nexport_dir: {out}/merged\nexport_size: 5\n"
        "export_device: cpu\nexport_legacy_format: false\n")
    steps = ((lf, ["llamafactory-cli", "export", str(out / "merge.yaml")]),
             (cpp, ["sh", "-c", f"cp -n {base}/tokenizer.model {out}/merged/ 2>/dev/null; python3 "
                               f"/app/convert_hf_to_gguf.py {out}/merged --outtype f16 --outfile {out}/m-f16.gguf"]),
             (cpp, ["/app/llama-quantize", str(out / "m-f16.gguf"), str(out / "m-Q4_K_M.gguf"), "Q4_K_M"]))
    for container, argv in steps:
        subprocess.run(["docker", "exec", container.id, *argv], check=True, capture_output=True)
    return time.monotonic() - t0


def upload_by_hand(ollama_url: str, gguf: Path, tag: str) -> float:
    import httpx

    from app.ollama import file_digest

    t0 = time.monotonic()
    digest = file_digest(gguf)
    with httpx.Client(base_url=ollama_url, timeout=900) as c:
        with open(gguf, "rb") as f:
            c.post(f"/api/blobs/{digest}", content=f).raise_for_status()
        body = {"model": f"byhand-{tag}", "files": {"model.gguf": digest}, "stream": True}
        with c.stream("POST", "/api/create", json=body) as r:
            lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines[-1]["status"] == "success", lines
    return time.monotonic() - t0


def through_tunedeck(url: str, data: Path, run: str, tag: str) -> dict:
    shutil.rmtree(data / "exports", ignore_errors=True)  # nothing reused: every stage runs
    client = Client(url, verbose=False)
    t0 = time.monotonic()
    status = None
    for _log, status in client.submit(run, "", "llama2", "f16", ["Q4_K_M"], f"scale-{tag}", "", True, False, False,
                                      api_name="/export"):
        pass
    whole = time.monotonic() - t0
    client.close()
    assert status and status["status"] == "succeeded", (status or {}).get("error")
    stages = status["stage_seconds"]
    checks = status["result"].get("check_seconds", {})
    core = sum(stages.get(s, 0) for s in CORE) - checks.get("prompt_check", 0) - checks.get("staging", 0)
    return {"whole": whole, "core": core, "stages": stages}


def fit(points: list[tuple[float, float]], at: float) -> float:
    """Least squares y = a + b·x, evaluated at x."""
    n = len(points)
    mx, my = sum(p[0] for p in points) / n, sum(p[1] for p in points) / n
    b = sum((x - mx) * (y - my) for x, y in points) / max(sum((x - mx) ** 2 for x, _ in points), 1e-12)
    return my + b * (at - mx)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default=",".join(SIZES))
    args = parser.parse_args()
    stack = new_stack()
    data = Path(tempfile.mkdtemp(prefix="td-bench-scale-")) / "data"
    data.mkdir(parents=True)
    vocab = zoo_dir() / "models" / "llama2"
    rows = []
    try:
        lf, cpp = start_llamafactory(stack, data), start_llamacpp(stack, data)
        ollama = start_ollama(stack)
        settings = settings_for(tunedeck_project=stack.project, tunedeck_data_dir=str(data),
                                tunedeck_ollama_url=ollama.url)
        with running_app(settings) as app:
            for size in args.sizes.split(","):
                hidden, inter, layers = SIZES[size]
                made = run_tools_script("make_scaled_run.py", str(data), size, str(vocab), str(hidden), str(inter),
                                        str(layers))
                run, base = made["run"], Path(made["base"])
                with PeakMemory({"llamafactory": lf, "llamacpp": cpp, "ollama": ollama.container}) as mem:
                    ours = through_tunedeck(app.url, data, run, size)
                hand = by_hand(data, lf, cpp, run, base, size)
                hand += upload_by_hand(ollama.url, data / "by-hand" / size / "m-Q4_K_M.gguf", size)
                row = {"size": size, "params": made["params"], "by_hand_s": round(hand, 1),
                       "core_s": round(ours["core"], 1), "whole_s": round(ours["whole"], 1),
                       "ratio": round(ours["core"] / hand, 3), "full_ratio": round(ours["whole"] / hand, 3),
                       "stages": {k: round(v, 1) for k, v in ours["stages"].items()},
                       "peak_mib": {k: round(v / 2**20) for k, v in mem.peak.items()}}
                rows.append(row)
                report("export_scale", **{k: (json.dumps(v, separators=(",", ":")) if isinstance(v, dict) else v)
                                          for k, v in row.items()})
                shutil.rmtree(data / "by-hand", ignore_errors=True)
        if len(rows) >= 2:
            seven = 7e9
            report("export_scale", projection_7b_by_hand_s=round(fit([(r["params"], r["by_hand_s"]) for r in rows],
                                                                     seven)),
                   projection_7b_whole_s=round(fit([(r["params"], r["whole_s"]) for r in rows], seven)),
                   note="linear in parameters, fitted on this 2-core machine")
    finally:
        stack.cleanup()
        shutil.rmtree(data.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
