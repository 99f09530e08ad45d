"""bench/storage: the Storage report of a generated data dir of 100,000 files (scan, kinds, rules, the exact
bytes of what is safe to delete) divided by `du -sb` of the same tree, in the same run. Goal: ratio <= 1.5.

The tree is shaped like a busy data dir: runs with checkpoints and TensorBoard events, export folders
(merged weights, GGUFs, evaluation files) half of which the history knows, an HF cache with blobs and
snapshot links, and easy-dataset projects holding most of the files. Also printed: the same report with
the pure-Python engine (one lstat per entry from Python, no du), for comparison.
Timings: 7 interleaved repeats of each; `ratio` compares the fastest of each, `median_ratio` the medians.
Run: python bench/storage.py [FILES]
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import report

from app.export.history import History
from app.storage.report import build
from app.storage.scan import gnu_du

FILES = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
REPEATS = 7


def write(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.write(b"x" * size)


def generate(root: Path, files: int) -> tuple[int, History]:
    """The tree; returns the number of regular files written and the history (knows half the exports)."""
    history = History(root / "tunedeck.db")
    count = 1  # the history database
    for r in range(20):  # runs: 10 checkpoints of 8 files each, a log, TensorBoard events
        run = root / "saves" / f"model-{r % 4}" / "lora" / f"run-{r}"
        (run / "runs").mkdir(parents=True)
        with open(run / "trainer_log.jsonl", "w") as f:
            for step in range(10, 1010, 10):
                f.write(json.dumps({"current_steps": step, "total_steps": 1000, "loss": 2.0 / step}) + "\n")
        for name, size in (("adapter_config.json", 600), ("adapter_model.safetensors", 200_000),
                           ("train_results.json", 300), ("trainer_state.json", 4000)):
            write(run / name, size)
        for e in range(5):
            write(run / "runs" / f"events.out.tfevents.{e}", 3000)
        count += 10
        for step in range(100, 1100, 100):
            ckpt = run / f"checkpoint-{step}"
            ckpt.mkdir()
            for name, size in (("adapter_config.json", 600), ("adapter_model.safetensors", 200_000),
                               ("optimizer.pt", 400_000), ("scheduler.pt", 1000), ("rng_state.pth", 14_000),
                               ("trainer_state.json", 4000), ("training_args.bin", 5000), ("README.md", 500)):
                write(ckpt / name, size)
            count += 8
    for e in range(10):  # export folders: merged (6 files), two GGUFs, evaluation files
        folder = root / "exports" / f"run-{e}-{e:010d}"
        (folder / "merged").mkdir(parents=True)
        (folder / "eval" / ".results").mkdir(parents=True)
        for name, size in (("config.json", 700), ("model.safetensors", 2_000_000), ("tokenizer.json", 50_000),
                           ("tokenizer_config.json", 3000), ("generation_config.json", 200), ("Modelfile", 500)):
            write(folder / "merged" / name, size)
        for name, size in ((f"run-{e}-f16.gguf", 1_000_000), (f"run-{e}-Q4_K_M.gguf", 300_000),
                           ("merge.yaml", 300), ("eval/eval.txt", 5000), ("eval/ref.kld", 500_000),
                           ("eval/.results/a.json", 200)):
            write(folder / name, size)
        count += 12
        if e % 2 == 0:
            job = f"job{e:04d}"
            history.add(job, f"model-0/lora/run-{e}", {"run": f"model-0/lora/run-{e}"})
            history.update(job, status="succeeded", result={"workdir": str(folder), "fidelity": {
                "verdict": "ok", "gguf": {"file": f"run-{e}-f16.gguf"}}})
    for m in range(30):  # HF cache: blobs and the snapshot links pointing at them
        repo = root / "hf-cache" / "hub" / f"models--org--model-{m}"
        (repo / "blobs").mkdir(parents=True)
        (repo / "snapshots" / "abc").mkdir(parents=True)
        for b in range(10):
            write(repo / "blobs" / f"{m:04d}{b:060d}", 20_000)
            os.symlink(f"../../blobs/{m:04d}{b:060d}", repo / "snapshots" / "abc" / f"file-{b}")
        count += 10
    left, project = files - count, 0
    while left > 0:  # easy-dataset projects: most of the files
        folder = root / "easy-dataset" / "local-db" / f"project-{project}" / "chunks"
        folder.mkdir(parents=True)
        for i in range(min(1000, left)):
            write(folder / f"chunk-{i}.json", 200 + (i % 7) * 100)
        left -= 1000
        project += 1
    return files, history


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="td-bench-storage-")) / "data"
    root.mkdir()
    try:
        written, history = generate(root, FILES)
        engine = "du" if gnu_du() else "python"

        def ours(which: str = engine) -> tuple[float, object]:
            t0 = time.perf_counter()
            result = build(root, history, engine=which)
            return time.perf_counter() - t0, result

        def du() -> tuple[float, int]:
            t0 = time.perf_counter()
            out = subprocess.run(["du", "-sb", str(root)], capture_output=True, text=True, check=True).stdout
            return time.perf_counter() - t0, int(out.split()[0])

        ours(), du(), ours("python")  # warm the page cache and the interpreter
        t_ours, t_du, t_py = [], [], []
        for _ in range(REPEATS):  # interleaved, so load on the machine hits both alike
            t, result = ours()
            t_ours.append(t)
            t, total = du()
            t_du.append(t)
            t_py.append(ours("python")[0])
        python = ours("python")[1]
        assert result.tree.total == total == python.tree.total, (result.tree.total, total, python.tree.total)
        assert python.tree.file_count == written, (python.tree.file_count, written)
        assert sorted(result.tree.dirs) == sorted(python.tree.dirs)  # the same folders, listed or from du
        # the fastest of each (what the code costs, least disturbed by the machine's other work), and medians
        b_ours, b_du, b_py = (min(x) for x in (t_ours, t_du, t_py))
        m_ours, m_du = statistics.median(t_ours), statistics.median(t_du)
        report("storage", files=written, engine=engine, report_s=round(b_ours, 3), du_s=round(b_du, 3),
               ratio=round(b_ours / b_du, 2), median_ratio=round(m_ours / m_du, 2), python_engine_s=round(b_py, 3),
               python_ratio=round(b_py / b_du, 2), safe_mib=round(result.safe_bytes() / 2**20, 1),
               total_mib=round(total / 2**20, 1))
    finally:
        shutil.rmtree(root.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
