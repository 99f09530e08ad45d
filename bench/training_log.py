"""bench/training_log: load a 100,000-line trainer_log.jsonl into the Runs view (scan + curves),
divided by the bare minimum (read the file and json.loads every line) in the same run.
Targets: absolute load < 1 s; an appended line costs only its own bytes.
Run: python bench/training_log.py [LINES]
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import report

from app.training.tracker import RunTracker

LINES = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="td-bench-log-"))
    run = root / "saves" / "big" / "lora" / "run"
    run.mkdir(parents=True)
    (run / "training_args.yaml").write_text("stage: sft\nfinetuning_type: lora\nmodel_name_or_path: /m\n")
    log = run / "trainer_log.jsonl"
    with open(log, "w") as f:
        for i in range(1, LINES + 1):
            rec = {"current_steps": i, "total_steps": LINES, "loss": 3.0 / i, "lr": 1e-4, "epoch": i / LINES,
                   "percentage": round(100 * i / LINES, 2), "elapsed_time": "0:10:00", "remaining_time": "0:01:00"}
            if i % 500 == 0:
                rec["eval_loss"] = 2.0 / i
            f.write(json.dumps(rec) + "\n")

    def ours() -> float:
        t0 = time.perf_counter()
        tracker = RunTracker(root)
        tracker.scan()
        tracker.curves(["big/lora/run"])
        return time.perf_counter() - t0

    def bare() -> float:
        t0 = time.perf_counter()
        [json.loads(line) for line in log.read_bytes().splitlines()]
        return time.perf_counter() - t0

    t_ours = statistics.median(ours() for _ in range(3))
    t_bare = statistics.median(bare() for _ in range(3))

    tracker = RunTracker(root)
    tracker.scan()
    with open(log, "a") as f:
        f.write(json.dumps({"current_steps": LINES + 1, "total_steps": LINES + 1, "loss": 0.1}) + "\n")
    t0 = time.perf_counter()
    tracker.scan()
    t_append = time.perf_counter() - t0
    report("training_log", lines=LINES, load_s=round(t_ours, 3), bare_json_s=round(t_bare, 3),
           ratio=round(t_ours / t_bare, 2), rescan_after_one_line_ms=round(t_append * 1000, 2),
           points=tracker.points("big/lora/run"))


if __name__ == "__main__":
    main()
