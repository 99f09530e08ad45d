"""The training queue's pure parts: GPU requests and allocation, nvidia-smi parsing, submission checks,
and the persistent job store (order, priority, moves, requeue) — no Docker."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml

from app.config import Settings
from app.export.validation import InvalidInput
from app.training.commands import ray_entrypoint, ray_env, train_command, train_env
from app.training.gpus import (
    GpuRequest,
    allocate,
    check_request,
    parse_gpu_request,
    parse_gpus,
    parse_processes,
)
from app.training.jobs import CANCELLED, QUEUED, RUNNING, JobStore
from app.training.request import build_train_request, resume_config, retry_config, train_again_yaml, validate_export

# What nvidia-smi 550 prints for the queue's query on a two-GPU host (one GPU name holds a comma).
SMI_GPUS = """0, GPU-5b1c7a9e-0d2f-4f4e-9c1a-2b3c4d5e6f70, NVIDIA H100 80GB HBM3, 1234, 81559, 37, 41
1, GPU-9e8d7c6b-5a49-4382-a716-0f1e2d3c4b5a, NVIDIA RTX A6000, Ada, 0, 49140, [N/A], 30
"""
SMI_APPS = """GPU-5b1c7a9e-0d2f-4f4e-9c1a-2b3c4d5e6f70, 4242, /usr/bin/python3, 1200
"""


def test_gpu_requests_parse_and_refuse_in_one_sentence():
    assert parse_gpu_request("") == GpuRequest("all")
    assert parse_gpu_request(" ALL ") == GpuRequest("all")
    assert parse_gpu_request("2") == GpuRequest("count", count=2)
    assert parse_gpu_request("3, 1") == GpuRequest("ids", count=2, ids=(1, 3))
    for bad in ("two", "1,,2", "-1", "0,0"):
        with pytest.raises(InvalidInput):
            parse_gpu_request(bad)
    with pytest.raises(InvalidInput, match="only 2"):
        check_request(GpuRequest("count", count=3), [0, 1])
    with pytest.raises(InvalidInput, match="GPU 5 does not exist"):
        check_request(parse_gpu_request("1,5"), [0, 1])
    with pytest.raises(InvalidInput, match="none"):
        check_request(GpuRequest("count", count=1), [])


def test_two_running_jobs_never_share_a_gpu():
    inv = [0, 1, 2, 3]
    assert allocate(GpuRequest("count", count=2), inv, set(), 0) == (0, 1)
    assert allocate(GpuRequest("count", count=2), inv, {0, 1}, 1) == (2, 3)
    assert allocate(GpuRequest("count", count=3), inv, {0, 1}, 1) is None   # waits
    assert allocate(parse_gpu_request("1,2"), inv, {1}, 1) is None          # GPU 1 is taken
    assert allocate(parse_gpu_request("2,3"), inv, {1}, 1) == (2, 3)
    assert allocate(GpuRequest("all"), inv, set(), 0) == (0, 1, 2, 3)
    assert allocate(GpuRequest("all"), inv, {3}, 1) is None                 # all means all
    # a CPU job has the machine: it runs alone, and nothing starts beside it
    assert allocate(GpuRequest("all"), [], set(), 0) == ()
    assert allocate(GpuRequest("all"), [], set(), 1) is None
    assert allocate(GpuRequest("count", count=0), inv, {0}, 1) is None
    assert allocate(GpuRequest("count", count=1), inv, set(), 1) is None


def test_nvidia_smi_output_is_read_field_by_field():
    gpus = parse_gpus(SMI_GPUS + "\nNo devices were found\n")
    assert [(g.index, g.name, g.memory_used_mib, g.memory_total_mib, g.utilization_pct, g.temperature_c)
            for g in gpus] == [(0, "NVIDIA H100 80GB HBM3", 1234.0, 81559.0, 37.0, 41.0),
                               (1, "NVIDIA RTX A6000, Ada", 0.0, 49140.0, None, 30.0)]
    assert parse_processes(SMI_APPS) == [{"gpu_uuid": "GPU-5b1c7a9e-0d2f-4f4e-9c1a-2b3c4d5e6f70", "pid": 4242,
                                          "process": "/usr/bin/python3", "memory_mib": 1200.0}]


def test_commands_give_each_job_its_gpus_and_torchrun_for_several():
    settings = Settings.from_env({"TUNEDECK_DATA_DIR": "/srv/td"})
    env = dict(train_env((2, 3)))
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3" and env["FORCE_TORCHRUN"] == "1" and env["NPROC_PER_NODE"] == "2"
    assert dict(train_env(()))["CUDA_VISIBLE_DEVICES"] == "" and "FORCE_TORCHRUN" not in dict(train_env((0,)))
    cmd = train_command(settings, Path("/srv/td/training/j/config-1.yaml"), Path("/srv/td/training/j/train.log"),
                        Path("/srv/td/saves/m/lora/r"), (1,))
    assert cmd.service == "llamafactory" and cmd.argv[-3:] == ("llamafactory-cli", "train",
                                                                "/srv/td/training/j/config-1.yaml")
    assert cmd.argv[4:7] == ("/srv/td/training/j/train.log", "/srv/td/saves/m/lora/r",
                             "/srv/td/training/j/config-1.yaml") and cmd.workdir == "/srv/td"
    entry = ray_entrypoint(settings, Path("/srv/td/training/j k/c.yaml"), Path("/srv/td/saves/r"))
    assert shlex.split(entry)[-3:] == ["llamafactory-cli", "train", "/srv/td/training/j k/c.yaml"]
    assert shlex.split(entry)[3:5] == ["tunedeck-train", "/srv/td/saves/r"]
    assert ray_env(2, False)["NPROC_PER_NODE"] == "2" and ray_env(4, True)["USE_RAY"] == "1"


@pytest.fixture
def data(tmp_path) -> Path:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dataset_info.json").write_text(json.dumps({"stop_qa": {"file_name": "q.json"},
                                                                    "other": {"file_name": "o.json"}}))
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    (tmp_path / "saves").mkdir()
    return tmp_path


def config(**extra) -> str:
    base = {"model_name_or_path": "models/tiny", "stage": "sft", "finetuning_type": "lora", "dataset": "stop_qa",
            "template": "llama2", "output_dir": "saves/tiny/lora/run1", "max_steps": 10}
    base.update(extra)
    return yaml.safe_dump({k: v for k, v in base.items() if v is not None})


def build(data: Path, text: str, **kw):
    return build_train_request(data, data / "data", text, **kw)


def test_a_valid_submission_gets_absolute_paths_and_its_run_name(data):
    req = build(data, config(), gpus="1", priority=5,
                export={"quant_types": ["Q8_0"], "ollama_name": "bot"})
    assert req.name == "tiny/lora/run1"
    assert req.config["output_dir"] == str(data.resolve() / "saves/tiny/lora/run1")
    assert req.config["dataset_dir"] == str((data / "data").resolve()) and req.config["do_train"] is True
    assert req.gpus == GpuRequest("count", count=1) and req.priority == 5
    assert req.export["quant_types"] == ["Q8_0"] and req.export["ollama_name"] == "bot"


@pytest.mark.parametrize("text, message", [
    ("", "Paste or upload"),
    ("model_name_or_path: [unclosed", "not valid YAML at line 1"),
    ("- a\n- b\n", "must be a YAML mapping"),
    (config(dataset="missing"), "Dataset 'missing' is not in"),
    (config(dataset=None), "names no dataset"),
    (config(output_dir=None), "has no `output_dir`"),
    (config(output_dir="/etc/evil"), "outside the data directory"),
    (config(output_dir="data/run"), "must be a folder inside"),
    (config(output_dir="saves"), "must be a folder inside"),
    (config(model_name_or_path="models/nope"), "Model 'models/nope' does not exist"),
    (config(model_name_or_path=None), "names no model"),
    (config(do_train=False), "does not train"),
    (config(dataset_dir="/tmp"), "outside the data directory"),
])
def test_bad_submissions_get_one_sentence(data, text, message):
    with pytest.raises(InvalidInput, match=message):
        build(data, text)


def test_output_dir_must_be_new_and_not_taken(data):
    (data / "saves" / "tiny" / "lora" / "run1").mkdir(parents=True)
    with pytest.raises(InvalidInput, match="already exists"):
        build(data, config())
    taken = {str(data.resolve() / "saves/tiny/lora/run2"): "abc123"}
    with pytest.raises(InvalidInput, match="Job abc123 already trains into"):
        build(data, config(output_dir="saves/tiny/lora/run2"), taken=taken)


def test_where_gpus_priority_and_export_are_checked(data):
    with pytest.raises(InvalidInput, match="No Ray cluster is configured"):
        build(data, config(), backend="ray")
    with pytest.raises(InvalidInput, match="give a number of GPUs"):
        build(data, config(), backend="ray", ray_available=True, gpus="all")
    with pytest.raises(InvalidInput, match="Priority must be from -100 to 100"):
        build(data, config(), priority=1000)
    with pytest.raises(InvalidInput, match="Unknown export setting 'bogus'"):
        validate_export({"bogus": 1})
    with pytest.raises(InvalidInput, match="not a valid Ollama model name"):
        validate_export({"ollama_name": "bad name!"})
    assert validate_export("") == {}


def test_resume_retry_and_train_again(data):
    run = data / "saves" / "tiny" / "lora" / "run1"
    with pytest.raises(InvalidInput, match="no checkpoint to resume from"):
        resume_config({"output_dir": str(run)}, run)
    for step in (10, 20):
        ckpt = run / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)
        (ckpt / "adapter_config.json").write_text("{}")
        (ckpt / "adapter_model.safetensors").write_bytes(b"x")
    cfg, last = resume_config({"output_dir": str(run), "overwrite_output_dir": True}, run)
    assert last == run / "checkpoint-20" and cfg["resume_from_checkpoint"] == str(last)
    assert cfg["overwrite_output_dir"] is False
    assert retry_config(cfg) == {"output_dir": str(run), "overwrite_output_dir": True}
    with pytest.raises(InvalidInput, match="has no training_args.yaml"):
        train_again_yaml(data, "tiny/lora/run1")
    (run / "training_args.yaml").write_text(config(resume_from_checkpoint="x"))
    again = yaml.safe_load(train_again_yaml(data, "tiny/lora/run1"))
    assert again["output_dir"] == str(run.parent.resolve() / "run1-again-2") and "resume_from_checkpoint" not in again
    (run.parent / "run1-again-2").mkdir()
    assert yaml.safe_load(train_again_yaml(data, "tiny/lora/run1"))["output_dir"].endswith("run1-again-3")


def test_the_store_keeps_order_priority_and_moves_across_processes(tmp_path):
    db = tmp_path / "tunedeck.db"
    store = JobStore(db)
    a = store.add("a", "local", {"config": {"output_dir": "/x/a"}})
    b = store.add("b", "local", {"config": {"output_dir": "/x/b"}})
    c = store.add("c", "local", {"config": {"output_dir": "/x/c"}}, priority=10)
    d = store.add("d", "local", {"config": {"output_dir": "/x/d"}})
    assert [j.name for j in store.queued()] == ["c", "a", "b", "d"]
    assert store.move(d.id, -1) and [j.name for j in JobStore(db).queued()] == ["c", "a", "d", "b"]
    assert store.move(a.id, -1)  # takes c's place and priority: a swap holds whatever the priorities were
    assert [j.name for j in JobStore(db).queued()] == ["a", "c", "d", "b"]
    assert (store.get(a.id).priority, store.get(c.id).priority, store.get(d.id).priority) == (10, 10, 0)
    assert not store.move(a.id, -1)
    assert store.transition(a.id, (QUEUED,), state=RUNNING, gpus=[0, 1], handle={"pid": 7})
    assert not store.transition(a.id, (QUEUED,), state=RUNNING)  # one start only
    store.update(b.id, state=CANCELLED)
    fresh = JobStore(db)  # another process (the app restarted): same queue, same handles
    assert [j.name for j in fresh.list()][:3] == ["a", "c", "d"]
    assert fresh.get(a.id).gpus == (0, 1) and fresh.get(a.id).handle == {"pid": 7}
    assert fresh.get(b.id).finished is not None
    fresh.requeue(b.id, attempt=2)
    assert [j.name for j in fresh.queued()] == ["c", "d", "b"] and fresh.get(b.id).attempt == 2
    assert set(fresh.active_outputs()) == {"/x/a", "/x/b", "/x/c", "/x/d"}
