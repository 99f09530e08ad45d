"""A tool's progress output: redrawn bars update in place and move the stage's share of the bar (no Docker)."""

from __future__ import annotations

from app.docker_exec import ExecHandle
from app.export.jobs import ExportJob
from app.export.progress import read_progress, without_bar


class _Stream:
    def __init__(self, chunks):
        self.chunks = chunks

    def __iter__(self):
        return iter(self.chunks)

    def close(self):
        pass


def test_redraws_come_as_progress_and_lines_stay_lines_even_split_across_chunks():
    chunks = [(b"@@tunedeck-pid 42\nloading\n", None), (b" 10%|#  | 1/10 [00:01<00:09]\r 20%|## | 2/10 [00:02<00", None),
              (b":08]\r", None), (b"\n", b"warn\r\n"), (b"done\n[ 1/ 4] blk.0\n", None), (b"tail\r", None)]
    handle = ExecHandle(None, "c", "e", _Stream(chunks))
    pids = []
    out = list(handle.lines(on_pid=pids.append))
    assert pids == [42] and handle.pid == 42
    # a redraw ended by \r is progress; one ended by \r\n (split across chunks here) is a line
    assert out == [("stdout", "loading"), ("progress", " 10%|#  | 1/10 [00:01<00:09]"),
                   ("stdout", " 20%|## | 2/10 [00:02<00:08]"), ("stderr", "warn"),
                   ("stdout", "done"), ("stdout", "[ 1/ 4] blk.0"), ("stdout", "tail")]


def test_readings_of_tqdm_and_llama_cpp_counters():
    assert read_progress("Writing: 45%|████      | 450M/1.00G [00:03<00:04, 120MB/s]") == (0.45, "00:04")
    assert read_progress("[  12/ 291]   blk.0.attn_k.weight - [  256,   256], type = f16") == (12 / 291, None)
    assert read_progress("chunk 3/12: top-1 agreement so far 189/189") == (0.25, None)
    assert read_progress("INFO:hf-to-gguf:blk.0.attn_q.weight, torch.float32 --> F16") is None
    assert read_progress("50% of the users") is None
    assert without_bar("Writing:  45%|████▌     | 450/1000 [00:03<00:04]") == "Writing:  45% 450/1000 [00:03<00:04]"
    assert without_bar("[  12/ 291] blk.0 | a | b") == "[  12/ 291] blk.0 | a | b"


def test_the_bar_moves_within_the_stage_and_never_back():
    job = ExportJob("j", None, ("a", "b"))
    job.enter_stage("convert", 0.25, 0.35)
    job.tool_progress(0.5, "[convert] 50%|", "00:04")
    assert abs(job.progress - 0.30) < 1e-9 and job.activity == "[convert] 50%| · ETA 00:04"
    job.tool_progress(0.2, "[convert] second tool 20%|")
    assert abs(job.progress - 0.30) < 1e-9  # a second tool starting over does not move it back
    job.tool_progress(1.0, "x")
    assert abs(job.progress - 0.35) < 1e-9  # at most the next stage's start
    job.enter_stage("quantize", 0.35, 0.42)
    assert job.activity == ""


def test_past_its_cap_the_log_is_trimmed_a_quarter_at_a_time_so_viewers_get_appends():
    from app.export.jobs import MAX_LOG_LINES

    job = ExportJob("j", None, ("a",))
    for i in range(MAX_LOG_LINES):
        job.emit(f"line {i}", "convert")
    before = job.log_text()
    job.emit("one more", "convert")
    trimmed = job.log_text()
    assert not trimmed.startswith(before)  # one front change, once
    assert trimmed.splitlines()[0] == f"[log] … {MAX_LOG_LINES // 4 + 1} earlier lines are not kept"
    assert len(trimmed.splitlines()) == MAX_LOG_LINES - MAX_LOG_LINES // 4 + 1
    for i in range(MAX_LOG_LINES // 4 - 1):  # then only appends until the cap is reached again
        job.emit(f"more {i}", "convert")
        now = job.log_text()
        assert now.startswith(trimmed)
        trimmed = now
    assert job.line_count() == MAX_LOG_LINES + MAX_LOG_LINES // 4  # every line counted, kept or not


def test_a_viewer_gets_state_changes_at_once_and_lines_and_the_bar_once_a_second():
    from app.export.feed import EVERY, due

    assert due(10.0, 9.99, state_changed=True, changed=False)
    assert not due(10.0, 10.0 - EVERY / 2, state_changed=False, changed=True)
    assert due(10.0, 10.0 - EVERY, state_changed=False, changed=True)
    assert not due(99.0, 0.0, state_changed=False, changed=False)  # nothing new: nothing sent
