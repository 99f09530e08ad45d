"""Training monitor: incremental trainer_log.jsonl reading, status derivation, live curves in the browser."""

from __future__ import annotations

import json
import math
import os
import threading
import time
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
from playwright.sync_api import expect

from app.training.status import derive_status
from app.training.tracker import RunTracker, decimate
from app.training.trainer_log import TrainerLogReader


def record(step: int, total: int, loss: float = None, **extra) -> dict:
    r = {"current_steps": step, "total_steps": total, "loss": 3.0 / step if loss is None else loss,
         "lr": 1e-4 * (1 - step / total), "epoch": step / total, "percentage": round(100 * step / total, 2),
         "elapsed_time": str(timedelta(seconds=step)), "remaining_time": str(timedelta(seconds=total - step))}
    r.update(extra)
    return r


class Trainer:
    """A test 'trainer' writing LLaMA-Factory's files over time, one step per `period` seconds."""

    def __init__(self, run: Path, total: int = 20, period: float = 0.5, fail_at: int | None = None) -> None:
        self.run, self.total, self.period, self.fail_at = run, total, period, fail_at
        run.mkdir(parents=True, exist_ok=True)
        (run / "training_args.yaml").write_text("model_name_or_path: /models/base\nstage: sft\n"
                                                "finetuning_type: lora\ntemplate: default\n")
        (run / "running_log.txt").write_text("starting\n")
        self.step = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def write_step(self) -> None:
        self.step += 1
        extra = {"eval_loss": 2.5 / self.step} if self.step % 5 == 0 else {}
        with open(self.run / "trainer_log.jsonl", "a") as f:
            f.write(json.dumps(record(self.step, self.total, **extra)) + "\n")

    def _loop(self) -> None:
        while not self._stop.is_set() and self.step < self.total:
            if self.fail_at and self.step >= self.fail_at:
                with open(self.run / "running_log.txt", "a") as f:
                    f.write("Traceback (most recent call last):\n  RuntimeError: CUDA out of memory\n")
                return
            self.write_step()
            self._stop.wait(self.period)
        if self.step >= self.total:
            (self.run / "train_results.json").write_text(json.dumps({"train_loss": 0.5}))

    def start(self) -> "Trainer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(5)


# -- incremental reader --------------------------------------------------------------------------
def test_reader_handles_torn_lines_empty_file_and_nan(tmp_path):
    log = tmp_path / "trainer_log.jsonl"
    reader = TrainerLogReader(log)
    assert reader.read_new() == []            # no file yet
    log.write_text("")
    assert reader.read_new() == []            # empty file
    line1 = json.dumps(record(1, 10)) + "\n"
    line2 = json.dumps(record(2, 10, loss=float("nan")))
    with open(log, "w") as f:
        f.write(line1 + line2[:17])           # the second line is half-written
    assert [r["current_steps"] for r in reader.read_new()] == [1]
    offset = reader.offset
    with open(log, "a") as f:
        f.write(line2[17:] + "\n" + "{not json}\n")
    new = reader.read_new()
    assert [r["current_steps"] for r in new] == [2] and math.isnan(new[0]["loss"])
    assert reader.offset > offset and reader.count == 2
    assert reader.series["loss"] == ([1], [3.0])  # the NaN loss is not a point
    assert reader.read_new() == []            # nothing new, nothing re-read

    log.write_text(json.dumps(record(1, 5)) + "\n")  # a new run rewrote the file
    assert [r["current_steps"] for r in reader.read_new()] == [1]
    assert reader.count == 1 and reader.last["total_steps"] == 5


def test_reader_reads_only_new_bytes(tmp_path):
    log = tmp_path / "trainer_log.jsonl"
    with open(log, "w") as f:
        for i in range(1, 1001):
            f.write(json.dumps(record(i, 2000)) + "\n")
    reader = TrainerLogReader(log)
    assert len(reader.read_new()) == 1000
    size = log.stat().st_size
    with open(log, "a") as f:
        f.write(json.dumps(record(1001, 2000)) + "\n")
    new = reader.read_new()
    assert len(new) == 1 and reader.offset - size == len(json.dumps(record(1001, 2000))) + 1


@pytest.mark.parametrize("last,results,age,tail,expected", [
    (record(10, 10), False, 999, "", "finished"),
    (record(3, 10), True, 999, "", "finished"),
    (record(3, 10), False, 5, "", "running"),
    (None, False, 5, "", "starting"),
    (record(3, 10), False, 999, "Traceback (most recent call last):\nRuntimeError: boom", "failed"),
    (record(3, 10), False, 999, "saving checkpoint", "stopped"),
    ({"current_steps": 3, "total_steps": 0}, False, 999, "", "stopped"),
])
def test_status_derivation(last, results, age, tail, expected):
    assert derive_status(last=last, has_results=results, log_age_s=age, running_log_tail=tail) == expected


def test_decimate_keeps_ends_and_bounds_points():
    df = pd.DataFrame({"step": range(100_000), "value": range(100_000)})
    small = decimate(df, 1000)
    assert len(small) <= 1001 and small.iloc[0]["step"] == 0 and small.iloc[-1]["step"] == 99_999


# -- the tracker on real files written over time ---------------------------------------------------
def test_tracker_follows_runs_through_their_states(tmp_path):
    saves = tmp_path / "saves"
    live = Trainer(saves / "base" / "lora" / "live", total=200, period=0.1).start()
    done = Trainer(saves / "base" / "lora" / "done", total=3, period=0.01).start()
    broken = Trainer(saves / "base" / "lora" / "broken", total=50, period=0.01, fail_at=4).start()
    (saves / "base" / "lora" / "empty").mkdir(parents=True)
    (saves / "base" / "lora" / "empty" / "training_args.yaml").write_text("stage: sft\n")
    tracker = RunTracker(tmp_path)
    try:
        time.sleep(0.6)
        done.thread.join(5)
        broken.thread.join(5)
        old = time.time() - 3600
        for name in ("broken",):
            for f in (saves / "base" / "lora" / name).iterdir():
                os.utime(f, (old, old))
        runs = {r.name: r for r in tracker.scan()}
        assert runs["base/lora/live"].status == "running"
        assert 0 < runs["base/lora/live"].progress < 100
        assert runs["base/lora/done"].status == "finished" and runs["base/lora/done"].progress == 100
        assert runs["base/lora/broken"].status == "failed"
        assert runs["base/lora/empty"].status == "starting"
        assert runs["base/lora/live"].stage == "sft/lora"
        before = tracker.points("base/lora/live")
        time.sleep(0.5)
        tracker.scan()
        assert tracker.points("base/lora/live") > before
        loss, lr = tracker.curves(["base/lora/live", "base/lora/done"])
        assert set(loss["series"]) >= {"base/lora/live · loss", "base/lora/done · loss"}
        assert (lr["value"] >= 0).all()
    finally:
        live.stop()


def test_eval_loss_and_nan_do_not_break_curves(tmp_path):
    run = tmp_path / "saves" / "m" / "lora" / "r"
    t = Trainer(run, total=10)
    for _ in range(10):
        t.write_step()
    with open(run / "trainer_log.jsonl", "a") as f:
        f.write(json.dumps(record(11, 12, loss=float("nan"))) + "\n")
    tracker = RunTracker(tmp_path)
    runs = tracker.scan()
    assert runs[0].last_loss == pytest.approx(3.0 / 10)
    loss, _ = tracker.curves(["m/lora/r"])
    assert set(loss["series"]) == {"m/lora/r · loss", "m/lora/r · eval_loss"}
    assert loss["value"].notna().all() and len(loss[loss.series.str.endswith("eval_loss")]) == 2


@pytest.mark.browser
def test_browser_sees_new_points_and_exports_a_finished_run(app_server, data_dir, page, screenshots):
    finished = Trainer(data_dir / "saves" / "tiny" / "lora" / "finished", total=5)
    for _ in range(5):
        finished.write_step()
    (finished.run / "train_results.json").write_text("{}")
    (finished.run / "adapter_config.json").write_text('{"base_model_name_or_path": "/models/base"}')
    (finished.run / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    old = time.time() - 600
    for f in finished.run.iterdir():
        os.utime(f, (old, old))
    run_dir = data_dir / "saves" / "tiny" / "lora" / "live"
    trainer = Trainer(run_dir, total=400, period=1.0)
    for _ in range(3):
        trainer.write_step()
    page.goto(app_server.url)
    page.get_by_role("tab", name="Runs").click()
    table = page.locator("#runs-table")
    expect(table).to_contain_text("tiny/lora/live")
    expect(table).to_contain_text("3/400")
    line = page.locator('#runs-loss path[aria-label*="tiny/lora/live · loss"]').first
    expect(line).to_have_attribute("d", __import__("re").compile(r"^M[^L]*L[^L]*L[^L]*$"))  # 3 points
    before = line.get_attribute("d")
    trainer.start()
    try:
        expect(table).to_contain_text(__import__("re").compile(r"[5-9]/400"), timeout=10_000)
        expect(line).not_to_have_attribute("d", before)
        assert line.get_attribute("d").count("L") > before.count("L"), "no new point on the loss chart"
        # "Export this run" takes the run chosen last: one still training is refused, never swapped for another
        import gradio as gr

        from app.ui import runs_tab

        with gr.Blocks():
            runs = runs_tab.build(app_server.runtime)
        with pytest.raises(gr.Error, match=r"Only finished runs can be exported: tiny/lora/live \(the run chosen "
                                           r"last\) is running\."):
            runs["export_target"](["tiny/lora/finished", "tiny/lora/live"])
        assert runs["export_target"](["tiny/lora/live", "tiny/lora/finished"])[0]["value"] == "tiny/lora/finished"
    finally:
        trainer.stop()
    page.screenshot(path=str(screenshots / "runs-tab.png"))

    page.locator("#runs-select input").click()
    page.locator("#runs-select input").fill("tiny/lora/finished")
    page.get_by_role("option", name="tiny/lora/finished", exact=True).click()
    page.locator("#runs-export").click()
    expect(page.get_by_role("tab", name="Export")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#export-base textarea, #export-base input").first).to_have_value("/models/base")
