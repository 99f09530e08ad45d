"""Pure functions, no Docker: log parsing, status formatting, URLs, run discovery, planning, auth."""

from __future__ import annotations

import asyncio
import json
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from app.auth import AuthConfigError, make_checker, parse_credentials
from app.chat import Answer, coalesce
from app.export.checks import adapter_mismatch, quantized_base_problem
from app.export.plan import build_request, make_plan, partial
from app.export.validation import InvalidInput
from app.log_filter import BadFilter, LogLine, make_matcher, parse_stamp, render_line, split_stamp, strip_ansi
from app.runs import base_model_of, datasets_of, discover_run_dirs, discover_runs, last_loss
from app.status_monitor import Snapshot, container_info, format_duration, format_ports
from app.ui.tool_tabs import ToolTab, frame_html, request_origin, resolve_url


def test_log_stamp_and_ansi():
    stamp, text = split_stamp("2026-11-28T18:00:00.123456789Z hello world")
    assert stamp.startswith("2026-11-28T18:00:00.12") and text == "hello world"
    assert parse_stamp(stamp) == pytest.approx(1795888800.123456789)
    assert split_stamp("no stamp here") == ("", "no stamp here")
    assert strip_ansi("\x1b[1;31mred\x1b[0m \x1b]0;title\x07ok\x08") == "red ok"
    line = LogLine(1, stamp, "ollama", "hi")
    assert render_line(line, timestamps=True, with_service=True) == "2026-11-28T18:00:00.123Z         ollama | hi"
    assert render_line(line, timestamps=False, with_service=False) == "hi"


def test_a_pathological_regex_is_refused_within_its_budget():
    import time

    from app.log_filter import SlowFilter

    matcher = make_matcher("(a|aa)+$", True)
    started = time.monotonic()
    with pytest.raises(SlowFilter, match=r"^The filter is too slow: '\(a\|aa\)\+\$' took over 50 ms on one log "
                                         r"line; simplify the regular expression\.$"):
        matcher("a" * 100_000 + "b")
    assert time.monotonic() - started < 1.0  # not the minutes the stdlib re would take
    assert make_matcher("(a|aa)+$", True)("aaaa")  # the same pattern on a line it handles


def test_filters():
    assert make_matcher("ERR", False)("an err here")
    assert not make_matcher("ERR", False)("fine")
    assert make_matcher(r"step \d+", True)("step 12")
    with pytest.raises(BadFilter, match="Invalid regular expression"):
        make_matcher("(", True)


def test_status_formatting():
    assert format_duration(59) == "59s" and format_duration(61) == "1m 1s" and format_duration(7200) == "2h 0m"
    assert format_duration(90000) == "1d 1h"
    ports = [{"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"},
             {"IP": "::", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"}, {"PrivatePort": 9000}]
    assert format_ports(ports) == "8080->80/tcp"
    row = {"Id": "abc", "Names": ["/p-ollama-1"], "State": "running", "Image": "ollama/ollama:0.13.0",
           "Labels": {"com.docker.compose.service": "ollama"}}
    info = container_info(row, {"State": {"Health": {"Status": "unhealthy"}, "StartedAt": "2026-11-28T18:00:00.5Z"},
                                "RestartCount": 3})
    assert (info.service, info.health, info.restarts, info.name) == ("ollama", "unhealthy", 3, "p-ollama-1")
    snap = Snapshot(True, "ok", (info,), ("ollama", "caddy"), 1)
    assert snap.missing() == ["caddy"] and "1 unhealthy · 1 missing" in snap.summary()
    down = Snapshot(False, "Docker engine not reachable at unix:///x.sock", (), ("ollama",), 2)
    assert "not reachable" in down.summary()


def test_iframe_urls_follow_the_browser_address():
    origin = request_origin({"Host": "gpu-box:8080"})
    assert origin == {"scheme": "http", "host": "gpu-box:8080", "hostname": "gpu-box"}
    proxied = request_origin({"host": "app:7860", "X-Forwarded-Host": "tune.example.com", "X-Forwarded-Proto": "https"})
    assert resolve_url("{scheme}://{hostname}:1717/", proxied) == "https://tune.example.com:1717/"
    assert request_origin({"host": "[::1]:8080"})["hostname"] == "[::1]"
    tool = ToolTab("dataset", "Dataset", "easy-dataset", "")
    snap = Snapshot(True, "ok", (), ("easy-dataset",), 1)
    html = frame_html(tool, 'http://x/"><script>', snap)
    assert "<script>" not in html and "has no container" in html


def test_credentials(tmp_path):
    assert parse_credentials("a:b, c:d:e") == {"a": "b", "c": "d:e"}
    f = tmp_path / "creds"
    f.write_text("# users\nalice:pw1\nbob:pw2\n")
    assert parse_credentials(str(f)) == {"alice": "pw1", "bob": "pw2"}
    with pytest.raises(AuthConfigError):
        parse_credentials("nocolon")
    check = make_checker({"alice": "pw1"})
    assert check("alice", "pw1") and not check("alice", "x") and not check("eve", "pw1")


def _run(data: Path, name: str, loss: float, base: str) -> Path:
    run = data / "saves" / name
    run.mkdir(parents=True)
    (run / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base}))
    header = json.dumps({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight":
                         {"dtype": "F32", "shape": [8, 256], "data_offsets": [0, 0]}}).encode()
    (run / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    (run / "trainer_log.jsonl").write_text(json.dumps({"loss": loss}) + "\n" + '{"loss": NaN}\n{"torn":')
    return run


def test_run_discovery_and_plan(tmp_path):
    data = tmp_path
    (data / "models" / "base").mkdir(parents=True)
    (data / "models" / "base" / "config.json").write_text(json.dumps({"hidden_size": 256, "vocab_size": 1000}))
    _run(data, "m/lora/old", 1.5, str(data / "models" / "base"))
    new = _run(data, "m/lora/new", 0.5, str(data / "models" / "base"))
    (new / "checkpoint-10").mkdir()
    (new / "checkpoint-10" / "adapter_config.json").write_text("{}")
    runs = discover_runs(data)
    assert {r.name for r in runs} == {"m/lora/old", "m/lora/new"}  # checkpoints are not runs
    assert last_loss(new / "trainer_log.jsonl") == 0.5

    req = build_request(data, run="m/lora/new", template="default", quant_types=["Q4_K_M", "Q8_0"], ollama_name="m")
    plan = make_plan(data, req)
    assert [t.name for t in plan.targets] == ["m:q4_k_m", "m:q8_0"]
    assert plan.workdir.parent == (data / "exports").resolve()
    assert partial(plan.gguf).name.endswith(".gguf.partial")
    same = make_plan(data, build_request(data, run="m/lora/new", template="default", ollama_name="other"))
    assert same.keys["merge"] == plan.keys["merge"]  # only real inputs decide reuse
    other = make_plan(data, build_request(data, run="m/lora/new", template="chatml", ollama_name="m"))
    assert other.keys["merge"] != plan.keys["merge"]
    with pytest.raises(InvalidInput, match="outside"):
        build_request(data, run="m/lora/new", base_model="/etc", template="default")


def test_preflight_checks_are_one_sentence(tmp_path):
    run = _run(tmp_path, "r", 1.0, "/b")
    assert adapter_mismatch(run, {"hidden_size": 256}) is None
    assert "hidden size 256, the base has 512" in adapter_mismatch(run, {"hidden_size": 512})
    msg = quantized_base_problem({"quantization_config": {"quant_method": "bitsandbytes", "load_in_8bit": True}})
    assert "quantized (bitsandbytes 8-bit)" in msg and msg.count(".") == 1
    assert quantized_base_problem({}) is None


def test_one_definition_of_a_run_for_both_tabs(tmp_path):
    """The Runs tab lists every run; the Export tab exactly those of them holding a LoRA adapter."""
    from app.training.tracker import RunTracker

    saves = tmp_path / "saves"
    _run(tmp_path, "m/lora/done", 0.5, "/b")
    training = saves / "m" / "lora" / "training"
    training.mkdir(parents=True)
    (training / "trainer_log.jsonl").write_text(json.dumps({"current_steps": 1, "total_steps": 9}) + "\n")
    half = saves / "m" / "lora" / "config-only"
    half.mkdir(parents=True)
    (half / "adapter_config.json").write_text("{}")  # weights not written yet
    assert {p.name for p in discover_run_dirs(saves)} == {"done", "training", "config-only"}
    tracked = {r.name: r for r in RunTracker(tmp_path).scan()}
    exportable = {r.name for r in discover_runs(tmp_path)}
    assert exportable == {name for name, r in tracked.items() if r.exportable} == {"m/lora/done"}


def test_base_model_and_dataset_fallbacks(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "README.md").write_text("---\nlibrary_name: peft\nbase_model: /data/models/tiny\n---\n\n"
                                   "This model is a fine-tuned version of [/data/models/tiny](/data/models/tiny) "
                                   "on the stop_qa and more_qa datasets.\n")
    assert base_model_of(run) == "/data/models/tiny"  # the model card, as a CLI run leaves it
    assert datasets_of(run) == (["stop_qa", "more_qa"], "")
    (run / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/data/models/other"}))
    assert base_model_of(run) == "/data/models/other"
    (run / "training_args.yaml").write_text("model_name_or_path: /data/models/board\ndataset: a,b\n"
                                            "dataset_dir: /data/data\n")
    assert base_model_of(run) == "/data/models/board"
    assert datasets_of(run) == (["a", "b"], "/data/data")


def test_job_summary_is_a_copy(tmp_path):
    from app.export.jobs import ExportJob

    job = ExportJob("j1", None, ("preflight", "merge"))
    job.update_result("artifacts", a={"bytes": 1})
    summary = job.summary()
    job.update_result("artifacts", b={"bytes": 2})
    summary["result"]["artifacts"]["a"]["bytes"] = 99
    assert set(summary["result"]["artifacts"]) == {"a"}
    assert job.result()["artifacts"]["a"]["bytes"] == 1


def test_control_characters_are_refused_in_names_and_paths(tmp_path):
    for value in ("/data/ad\x85x", "run\nname", "a\x1bb", "x\u009fy"):
        with pytest.raises(InvalidInput, match="control characters"):
            build_request(tmp_path, run=value)
    from app.export.validation import validate_ollama_name, validate_system_prompt

    with pytest.raises(InvalidInput, match="control characters"):
        validate_ollama_name("name\x85")
    assert validate_system_prompt("line one\nline two\x85") == "line one\nline two\x85"  # prose may


def test_follow_tokens_are_pruned():
    from app.ui.services_tab import FollowTokens

    tokens = FollowTokens()
    for i in range(100):
        t = tokens.new(f"session-{i}")
        assert tokens.current(f"session-{i}", t)
        tokens.done(f"session-{i}", t)
    first = tokens.new("s")
    second = tokens.new("s")  # a newer follow in the same session
    tokens.done("s", first)   # the old one ending must not drop the newer one
    assert tokens.current("s", second) and len(tokens) == 1
    tokens.done("s", second)
    assert len(tokens) == 0


def test_log_downloads_share_one_bounded_folder(tmp_path):
    from app.ui.services_tab import save_download

    paths = [save_download(f"log {i}", tmp_path, keep=5) for i in range(12)]
    assert all(p.parent == tmp_path for p in paths)
    kept = sorted(tmp_path.iterdir())
    assert len(kept) == 5 and paths[-1] in kept and paths[-1].read_text() == "log 11\n"


# -- chat streaming: tokens grouped only when they come faster than the interval ------------------
async def _answers(pieces: int, gap_s: float, closed: list):
    answer = Answer("m")
    try:
        for i in range(pieces):
            await asyncio.sleep(gap_s)
            answer.text += f"t{i} "
            answer.done = i == pieces - 1
            yield answer
    finally:
        closed.append(True)


def _collect(pieces: int, gap_s: float, interval_s: float, take: int | None = None):
    async def run():
        closed, seen = [], []
        stream = coalesce(_answers(pieces, gap_s, closed), interval_s)
        async for answer in stream:
            seen.append(answer)
            if take and len(seen) == take:
                break
        await stream.aclose()
        await asyncio.sleep(0.05)
        return seen, closed
    with ThreadPoolExecutor(1) as pool:  # a loop of its own: browser tests leave one running in this thread
        return pool.submit(asyncio.run, run()).result(30)


def test_coalesce_groups_fast_tokens_and_keeps_the_whole_answer():
    seen, _ = _collect(200, 0.0005, 0.025)
    assert seen[-1].done and seen[-1].text == "".join(f"t{i} " for i in range(200))
    assert len(seen) < 60, len(seen)  # ~0.1 s+ of tokens in 25 ms groups, not 200 updates
    assert seen[0].text == "t0 " and all(a.text.startswith(b.text) for a, b in zip(seen[1:], seen))  # snapshots


def test_coalesce_passes_slow_tokens_one_by_one_and_closing_cancels_the_source():
    seen, _ = _collect(6, 0.04, 0.01)
    assert [a.text.count("t") for a in seen] == [1, 2, 3, 4, 5, 6]
    seen, closed = _collect(1000, 0.01, 0.01, take=2)
    assert len(seen) == 2 and closed == [True]  # the request to Ollama would be closed too
