"""A tool's progress output: redrawn bars update in place and move the stage's share of the bar (no Docker)."""

from __future__ import annotations

from app.docker_exec import ExecHandle
from app.export.jobs import ExportJob
from app.export.progress import read_progress


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
