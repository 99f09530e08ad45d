"""Storage without Docker: the rules as pure functions, the scan against `du -sb`, links, and the checkpoint
rule on real run folders from real trainings (the zoo's llama2 runs, saved every 150 steps)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from app.config import Settings
from app.docker_gateway import DockerGateway
from app.export.engine import ExportManager
from app.export.history import History
from app.export.validation import InvalidInput
from app.ollama import OllamaClient
from app.storage import delete, rules
from app.storage.context import RunningExport
from app.storage.freespace import GIB, FreeSpace, banner
from app.storage.ollama_disk import parse_df
from app.storage.report import build
from app.storage.scan import measure, scan_tree
from app.storage.service import StorageService


def du(path: Path) -> int:
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout.split()[0])


# -- pure rules ------------------------------------------------------------------------------------
def test_checkpoint_rule_keeps_the_last_and_the_best():
    steps = [100, 200, 300, 400]
    train = {50: 2.0, 100: 1.5, 200: 0.9, 300: 1.1, 400: 1.0}
    v = rules.checkpoint_verdicts(steps, train, {})
    assert [s for s in steps if v[s].safe] == [100, 300]
    assert v[400].reason == "the last checkpoint: training resumes from it"
    assert v[200].reason == "the best checkpoint (lowest train loss, 0.9)"
    assert v[100].reason == ("neither the last nor the best checkpoint (best: lowest train loss, 0.9); checkpoint-400 "
                             "(last) and checkpoint-200 (best) stay, with the run's final weights")
    # eval loss, when logged, ranks instead of train loss (the last value at or before each step)
    v = rules.checkpoint_verdicts(steps, train, {100: 0.5, 250: 0.7, 400: 0.8})
    assert [s for s in steps if not v[s].safe] == [100, 400] and "lowest eval loss, 0.5" in v[100].reason
    # the trainer's own best_model_checkpoint wins; a checkpoint another run builds on is kept
    v = rules.checkpoint_verdicts(steps, train, {100: 0.5}, trainer_best=300, kept_for={100: "run x was trained on it"})
    assert [s for s in steps if v[s].safe] == [200] and v[100].reason == "run x was trained on it"
    assert "the trainer's best_model_checkpoint" in v[300].reason
    # no final weights: the last checkpoint is the run's model; a tie goes to the later step
    v = rules.checkpoint_verdicts([150, 300], {150: 0.2, 300: 0.2}, {}, has_final=False)
    assert v[150].safe and not v[300].safe and "no final weights" in v[300].reason
    assert rules.checkpoint_verdicts([7], {}, {})[7].safe is False


def test_merged_rule_needs_a_passed_fidelity_and_its_gguf():
    ok = {"job": "j2", "status": "succeeded", "verdict": "ok", "gguf": "m-f16.gguf", "gguf_present": True}
    assert rules.merged_verdict([ok]) == rules.Verdict(True, "its GGUF m-f16.gguf passed fidelity (export job j2); "
                                                             "a re-export merges again")
    assert not rules.merged_verdict([{**ok, "gguf_present": False}]).safe
    warned = rules.merged_verdict([{**ok, "job": "j3", "verdict": "warning"}])
    assert not warned.safe and "did not pass fidelity (export job j3)" in warned.reason
    assert rules.merged_verdict([{**ok, "status": "failed"}]).reason == "no export from it passed fidelity yet"
    assert rules.merged_verdict([]).safe is False


def test_a_running_export_claims_its_folder_run_and_base(tmp_path):
    exports = tmp_path / "exports"
    running = RunningExport("j9", "merge", exports / "r-abc", (tmp_path / "saves/r", tmp_path / "models/base"))
    assert running.conflict(exports / "r-abc/merged", exports) == \
        "the running export (job j9, merge) uses this export folder"
    assert running.conflict(tmp_path / "saves/r/checkpoint-5", exports) == "the running export (job j9, merge) reads r"
    assert running.conflict(tmp_path / "saves", exports) is not None  # a folder holding what it uses
    assert running.conflict(exports / "other-1", exports) is None
    assert running.conflict(tmp_path / "saves/r2", exports) is None
    planning = RunningExport("j9", "preflight", None, ())
    assert "being planned" in planning.conflict(exports / "other-1", exports)


def test_banner_and_df_parsing():
    data = FreeSpace("/srv/td", 5 * GIB, 100 * GIB)
    assert banner({"data_dir": data}, 20, 3 * GIB) == (
        "⚠️ Low disk: 5.0 GiB free on the data directory (/srv/td), under 20 GiB. The Storage tab lists 3.0 GiB "
        "that is safe to delete.")
    assert banner({"data_dir": data}, 4, 3 * GIB) == "" and banner({"data_dir": data}, 0, None) == ""
    assert banner({"ollama": FreeSpace("ollama:/root/.ollama", None, None, "no container")}, 20) == ""
    ollama = FreeSpace("ollama:/root/.ollama", GIB, 9 * GIB)
    assert banner({"ollama": ollama}, 2) == (
        "⚠️ Low disk: 1.0 GiB free on Ollama's volume (ollama:/root/.ollama), under 2 GiB. Delete Ollama models "
        "you no longer serve in the Storage tab.")
    out = ["@@ollama-models /root/.ollama", "Filesystem     1024-blocks      Used Available Capacity Mounted on",
           "/dev/sdb 1 2 3 4 5  x", "my disk with spaces   263112772  26112772 230000000      11% /mnt/a b"]
    assert parse_df(out) == ("/root/.ollama", 230000000 * 1024, 263112772 * 1024)
    assert parse_df(["df: /x: No such file or directory"]) is None


# -- the scan --------------------------------------------------------------------------------------
@pytest.fixture
def outside(tmp_path) -> Path:
    """A folder outside the data dir with 3 MiB in it, which links inside the data dir point at."""
    out = tmp_path / "outside"
    out.mkdir()
    (out / "big.bin").write_bytes(b"o" * (3 << 20))
    return out


@pytest.mark.parametrize("engine", ["du", "python"])
def test_the_scan_agrees_with_du_and_never_follows_a_link(tmp_path, outside, engine):
    data = tmp_path / "data"
    (data / "saves/m/run/checkpoint-5").mkdir(parents=True)
    (data / "saves/m/run/adapter_config.json").write_text("{}")
    (data / "saves/m/run/checkpoint-5/w.bin").write_bytes(b"w" * 70_000)
    (data / "exports/stray").mkdir(parents=True)
    (data / "exports/stray/x.gguf").write_bytes(b"g" * 5000)
    os.symlink(outside, data / "exports/stray/to-outside")          # a folder outside
    os.symlink(outside / "big.bin", data / "saves/m/big.bin")        # a file outside
    os.link(data / "exports/stray/x.gguf", data / "saves/m/hard.gguf")  # one file, two names
    (data / "odd\nname").write_bytes(b"n" * 10)
    (data / "odd\ndir").mkdir()
    (data / "odd\ndir" / "f").write_bytes(b"f" * 20)
    tree = scan_tree(data, engine=engine)
    assert tree.total == du(data) < 3 << 20  # what du -sb says, without what the links point to
    assert sorted(tree.links) == [("exports/stray/to-outside", str(outside)),
                                  ("saves/m/big.bin", str(outside / "big.bin"))]
    # w.bin, adapter_config.json, x.gguf, hard.gguf, "odd\nname", and "odd\ndir"/f where files are counted
    # everywhere (with du, Python lists names only in the data dir itself, saves/ and exports/)
    counted = engine == "python"
    assert tree.file_count == 5 + counted and tree.counted("odd\ndir") is counted
    assert tree.size("odd\ndir") == (du(data / "odd\ndir"), int(counted))
    assert tree.size("saves/m/run/checkpoint-5") == (du(data / "saves/m/run/checkpoint-5"), 1)
    # deleting the stray folder alone would not free the hard-linked GGUF: its other name stays
    size, frees, files = measure(data / "exports/stray")
    assert (size, files) == (du(data / "exports/stray"), 1) and frees == size - 5000


def test_a_link_out_of_the_data_dir_is_neither_counted_nor_deleted(tmp_path, outside):
    data = tmp_path / "data"
    orphan = data / "exports" / "stray-1"
    orphan.mkdir(parents=True)
    (orphan / "model.gguf").write_bytes(b"g" * 4096)
    os.symlink(outside, orphan / "to-outside")
    os.symlink(outside / "big.bin", data / "exports" / "big.bin")
    (data / "saves").mkdir()
    os.symlink(outside, data / "saves" / "elsewhere")
    history = History(data / "tunedeck.db")
    report = build(data, history)
    assert report.tree.total == du(data) and sum(i.bytes for i in report.items) == report.tree.total
    assert report.tree.total < 3 << 20, "the 3 MiB the links point to are not counted"
    item = report.item("exports/stray-1")
    assert item.kind == "orphan" and item.safe and item.frees == du(orphan)
    for name, sentence in (("exports/big.bin", "is outside the data directory"),
                           ("saves/elsewhere/big.bin", "is outside the data directory"),
                           ("exports/stray-1/to-outside", "is outside the data directory")):
        with pytest.raises(InvalidInput, match=sentence):
            delete.choose(report, [name])
    os.symlink(orphan, data / "exports" / "inside-link")
    with pytest.raises(InvalidInput, match="is a link or goes through one"):
        delete.choose(build(data, history), ["exports/inside-link"])
    with pytest.raises(delete.Refused, match="without following a link"):
        delete.remove(data, "saves/elsewhere/big.bin")
    outcome = delete.execute(report, [item], True, history, None)
    assert outcome.deleted == ["exports/stray-1"] and outcome.bytes == item.frees
    assert not orphan.exists()
    assert (outside / "big.bin").stat().st_size == 3 << 20 and sorted(os.listdir(outside)) == ["big.bin"]
    assert os.path.islink(data / "exports" / "big.bin")  # links are never items: left alone


# -- real runs from real trainings ------------------------------------------------------------------
@pytest.fixture(scope="module")
def zoo_data(tmp_path_factory) -> Path:
    from tests.harness.zoo import install

    data = tmp_path_factory.mktemp("storage-zoo") / "data"
    install(data, ("llama2",))
    return data


def storage_for(data: Path) -> StorageService:
    settings = Settings.from_env({"TUNEDECK_DATA_DIR": str(data), "TUNEDECK_PROJECT": "tdstoragerules",
                                  "TUNEDECK_OLLAMA_URL": "http://127.0.0.1:9"})
    gateway = DockerGateway(settings.project, base_url="unix:///nonexistent/docker.sock")
    ollama = OllamaClient(settings.ollama_url, timeout=2)
    manager = ExportManager(settings, gateway, ollama)
    return StorageService(settings, gateway, ollama, lambda: manager)


def train_losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "trainer_log.jsonl").read_text().splitlines() if line.strip()]
    return {r["current_steps"]: r["loss"] for r in records if "loss" in r}


def test_checkpoints_of_real_runs(zoo_data):
    """llama2/lora/default and llama2/full/full were trained 300 steps with save_steps 150: checkpoint-300 is the
    last (and, the loss having fallen, the best), checkpoint-150 is safe; a run trained on top of checkpoint-150
    keeps it; a run still training keeps all of its checkpoints."""
    saves = zoo_data / "saves" / "llama2"
    for kind, run in (("lora", "default"), ("full", "full")):
        steps = sorted(int(p.name.split("-")[1]) for p in (saves / kind / run).glob("checkpoint-*"))
        assert steps == [150, 300], (run, steps)
        losses = train_losses(saves / kind / run)
        assert rules.at(losses, 300) < rules.at(losses, 150), "the zoo's runs learn: the last is the best"
    # a run still training: a copy of `default` whose log stops at step 200 of 300, written just now
    live = saves / "lora" / "live"
    shutil.copytree(saves / "lora" / "default", live)
    for name in ("train_results.json", "all_results.json", "trainer_state.json"):
        (live / name).unlink(missing_ok=True)
    lines = [line for line in (live / "trainer_log.jsonl").read_text().splitlines()
             if json.loads(line)["current_steps"] <= 200]
    (live / "trainer_log.jsonl").write_text("\n".join(lines) + "\n")
    # a run trained on top of default's checkpoint-150 (LLaMA Board's adapter_name_or_path)
    onto = saves / "lora" / "onto"
    shutil.copytree(saves / "lora" / "board", onto)
    args = (onto / "training_args.yaml").read_text()
    (onto / "training_args.yaml").write_text(args + f"adapter_name_or_path: {saves / 'lora/full-copy/checkpoint-150'}\n"
                                                    "create_new_adapter: true\n")
    shutil.copytree(saves / "full" / "full", saves / "lora" / "full-copy")

    service = storage_for(zoo_data)
    report = service.report(with_ollama=False)
    assert report.tree.total == du(zoo_data) and sum(i.bytes for i in report.items) == report.tree.total
    verdicts = {i.name.removeprefix("saves/llama2/"): i for i in report.items if i.kind == "checkpoint"}
    assert {n: v.safe for n, v in verdicts.items()} == {
        "lora/default/checkpoint-150": True, "lora/default/checkpoint-300": False,
        "full/full/checkpoint-150": True, "full/full/checkpoint-300": False,
        "lora/live/checkpoint-150": False, "lora/live/checkpoint-300": False,
        "lora/full-copy/checkpoint-150": False, "lora/full-copy/checkpoint-300": False}
    assert verdicts["lora/default/checkpoint-300"].reason == "the last checkpoint: training resumes from it"
    assert verdicts["lora/live/checkpoint-150"].reason.startswith("the run is still training (its log was written ")
    assert verdicts["lora/full-copy/checkpoint-150"].reason == "run llama2/lora/onto was trained on top of it"
    for name in ("lora/default/checkpoint-150", "full/full/checkpoint-150"):
        folder = saves / name
        assert verdicts[name].bytes == du(folder) == verdicts[name].frees
        assert "checkpoint-300 (last) stay" in verdicts[name].reason
    assert report.trainings == {"saves/llama2/lora/live": "running"}

    with pytest.raises(InvalidInput, match="checkpoint-150 cannot be deleted: the run is still training"):
        service.delete(["saves/llama2/lora/live/checkpoint-150"], True)
    with pytest.raises(InvalidInput, match="checkpoint-300 cannot be deleted: the last checkpoint"):
        service.delete(["saves/llama2/lora/default/checkpoint-150", "saves/llama2/lora/default/checkpoint-300"], True)
    assert (saves / "lora/default/checkpoint-150").is_dir(), "one refusal: nothing is deleted"
    expected = du(saves / "lora/default/checkpoint-150")
    asked = service.delete(["saves/llama2/lora/default/checkpoint-150"], False)
    assert asked["bytes"] == expected and not asked["deleted"]
    assert f"freeing {rules.format_bytes(expected)} ({expected:,} bytes) needs confirmation" in asked["message"]
    assert (saves / "lora/default/checkpoint-150").is_dir()
    done = service.delete(["saves/llama2/lora/default/checkpoint-150"], True)
    assert done["deleted"] == ["saves/llama2/lora/default/checkpoint-150"] and done["bytes"] == expected
    assert not (saves / "lora/default/checkpoint-150").exists() and (saves / "lora/default/checkpoint-300").is_dir()
    from app.runs import find_run

    assert [c["step"] for c in find_run(zoo_data, "llama2/lora/default").checkpoints] == [300]
    after = service.report(with_ollama=False)
    assert after.tree.total == report.tree.total - expected
    assert after.item("saves/llama2/lora/default/checkpoint-300").safe is False  # still the last


def test_a_scan_stops_when_asked(tmp_path):
    """The Storage tab's page went away: the scan stops (ScanCancelled, no report), du included."""
    from app.storage.scan import ScanCancelled, _Du

    data = tmp_path / "data"
    for i in range(50):
        (data / "saves" / f"d{i}").mkdir(parents=True)
    calls = []

    def stop_after(n: int):
        calls.clear()
        return lambda: calls.append(1) or len(calls) > n

    for engine in ("du", "python"):
        with pytest.raises(ScanCancelled):
            scan_tree(data, should_stop=stop_after(3), engine=engine)
        assert len(calls) == 4
    # du itself is stopped too (here: one that would run for a minute)
    du = _Du(data, None)
    du._proc.kill()
    du._proc.wait()
    du._proc = subprocess.Popen(["sleep", "60"])
    started = time.monotonic()
    with pytest.raises(ScanCancelled):
        du.wait(stop_after(2))
    assert time.monotonic() - started < 5 and du._proc.poll() is not None
