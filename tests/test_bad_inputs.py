"""Bad-input sweep across every public endpoint: each gets one clear message and changes
nothing on disk or in Docker (table-driven; real engine, real app, no tools needed)."""

from __future__ import annotations

import json
import struct

import pytest
from gradio_client import Client

from tests.harness.appserver import running_app, settings_for

RUN = "tiny/lora/run1"


def export(run=RUN, base="", template="default", dtype="f16", quants=("Q4_K_M",), name="ok-name", system="",
           overwrite=False):
    return ("/export", (run, base, template, dtype, list(quants), name, system, overwrite))


def logs(service="ollama", tail=10, pattern="", regex=False, ts=True):
    return ("/logs", (service, tail, pattern, regex, ts))


def control(container="{outsider}", action="stop", confirm=True):
    return ("/control", (container, action, confirm))


def chat(model="some-model", messages=({"role": "user", "content": "hi"},), options=None):
    return ("/chat", (model, list(messages), options or {}))


def train(config=None, gpus="all", where="local", priority=0, cpus=None, export=None, **config_changes):
    base = {"model_name_or_path": "models/base", "dataset": "qa", "template": "default",
            "output_dir": "saves/base/lora/new", "max_steps": 5}
    base.update(config_changes)
    text = config if config is not None else "\n".join(f"{k}: {v}" for k, v in base.items() if v is not None)
    return ("/train", (text, gpus, where, priority, cpus, export))


CASES = [
    ("unknown run", export(run="nope/run"), "Unknown run 'nope/run'"),
    ("run above saves/", export(run="../../etc"), "outside"),
    ("absolute run path", export(run="/etc"), "outside"),
    ("empty run", export(run=""), "Choose a run"),
    ("NUL in run", export(run="tiny\x00/x"), "NUL"),
    ("huge run name", export(run="x" * 5000), "too long"),
    ("run symlinked out of the data dir", export(run="evil"), "outside"),
    ("base above the data dir", export(base="../../../etc"), "outside the data directory"),
    ("absolute base outside", export(base="/etc"), "outside the data directory"),
    ("base symlinked out", export(base="models/escape"), "outside the data directory"),
    ("Ollama name with a space", export(name="bad name"), "not a valid Ollama model name"),
    ("Ollama name with two tags", export(name="a:b:c"), "not a valid Ollama model name"),
    ("Ollama name starting with '-'", export(name="-lead"), "not a valid Ollama model name"),
    ("Ollama name too long", export(name="x" * 100), "not a valid Ollama model name"),
    ("shell in Ollama name", export(name="; rm -rf /"), "not a valid Ollama model name"),
    ("unicode Ollama name", export(name="ümlaut"), "not a valid Ollama model name"),
    ("imatrix-only quant", export(quants=("IQ2_XS",)), "needs an importance matrix"),
    ("unknown quant", export(quants=("Q9_Z",)), "Unknown quantization type"),
    ("shell in quant type", export(quants=('"; rm -rf /',)), "Unknown quantization type"),
    ("too many quant types", export(quants=("Q4_K_M", "Q4_K_S", "Q5_K_M", "Q5_K_S", "Q6_K", "Q8_0", "Q2_K")),
     "at most 6"),
    ("re-quantizing q8_0", export(dtype="q8_0"), "cannot be quantized again"),
    ("unknown dtype", export(dtype="f64"), "f64"),
    ("tagged name with several quants", export(quants=("Q4_K_M", "Q8_0"), name="m:v1"), "without a tag"),
    ("NUL in system prompt", export(system="be\x00nice"), "NUL"),
    ("huge system prompt", export(system="y" * 20_000), "too long"),
    ("template path", export(template="../x"), "not a LLaMA-Factory template name"),
    ("template with space", export(template="a b"), "not a LLaMA-Factory template name"),
    ("NEL in a run path", export(run="tiny/lora/run\x851"), "control characters"),
    ("line break in the base model path", export(base="models/ba\nse"), "control characters"),
    ("escape sequence in the Ollama name", export(name="name\x1b[31m"), "control characters"),
    ("bad regex", logs(pattern="(", regex=True), "Invalid regular expression"),
    ("bad regex class", logs(pattern="[a-", regex=True), "Invalid regular expression"),
    ("negative tail", logs(tail=-1), "between 1 and 2000"),
    ("zero tail", logs(tail=0), "between 1 and 2000"),
    ("huge tail", logs(tail=100_000), "between 1 and 2000"),
    ("text tail", logs(tail="abc"), "whole number"),
    ("huge filter", logs(pattern="z" * 600), "too long"),
    ("logs of a container outside the project", logs(service="{outsider}"), "not a service or container"),
    ("path as service", logs(service="../../"), "not a service or container"),
    ("control outside the project", control(), "Refused"),
    ("control by id outside the project", control(container="{outsider_id}"), "Refused"),
    ("shell in container name", control(container="$(reboot)"), "Refused"),
    ("unknown action", control(action="rm"), "Unknown action"),
    ("unconfirmed action", control(confirm=False), "Confirm to stop"),
    ("register an unknown dataset", ("/register_dataset", ("nope",)), "No easy-dataset export named 'nope'"),
    ("register nothing", ("/register_dataset", ("",)), "Choose a dataset"),
    ("report on an unknown job", ("/quant_report", ("nope", 0.05)), "No export job 'nope'"),
    ("report without a job", ("/quant_report", ("", 0.05)), "Choose an export job"),
    ("compare with neither job nor run", ("/compare_base", ("", "")), "Choose a run or an export job"),
    ("compare an unknown job", ("/compare_base", ("nope", "")), "No export job 'nope'"),
    ("compare a run never exported", ("/compare_base", ("", RUN)), "has no finished export yet"),
    ("chat with an empty message", chat(messages=({"role": "user", "content": " "},)), "Type a message first"),
    ("chat with a bad role", chat(messages=({"role": "root", "content": "x"},)), "needs a role"),
    ("chat with a bad model name", chat(model="bad name"), "not a valid Ollama model name"),
    ("chat with an unknown option", chat(options={"mirostat": 2}), "Unknown option 'mirostat'"),
    ("chat with a list of models", chat(model=["a", "b"]), "Model must be one Ollama model name"),
    ("train nothing", train(config=""), "Paste or upload a LLaMA-Factory training config"),
    ("train on broken YAML", train(config="dataset: [qa"), "not valid YAML"),
    ("train on a YAML list", train(config="- a\n- b"), "must be a YAML mapping"),
    ("train on an unknown dataset", train(dataset="nope"), "Dataset 'nope' is not in"),
    ("train into /etc", train(output_dir="/etc/x"), "outside the data directory"),
    ("train outside saves/", train(output_dir="exports/x"), "must be a folder inside"),
    ("train over an existing run", train(output_dir="saves/tiny/lora/run1"), "already exists"),
    ("train a missing local model", train(model_name_or_path="models/nope"), "does not exist"),
    ("train on a Ray cluster never set", train(where="ray"), "No Ray cluster is configured"),
    ("train on text GPUs", train(gpus="two"), "GPUs must be 'all', a number"),
    ("train on GPUs the host lacks", train(gpus="2"), "this host has none"),
    ("train with a wild priority", train(priority=1000), "Priority must be from -100 to 100"),
    ("train with an unknown export setting", train(export={"bogus": 1}), "Unknown export setting 'bogus'"),
    ("train without LLaMA-Factory", train(), "LLaMA-Factory's argument check cannot run"),
    ("control an unknown training job", ("/train_control", ("nope", "cancel")), "There is no training job 'nope'"),
    ("unknown training action", ("/train_control", ("nope", "rm")), "Action must be one of"),
    ("log of an unknown training job", ("/train_log", ("nope", False)), "There is no training job 'nope'"),
    ("delete something unknown", ("/storage_delete", (["nope"], True)), "is not something TuneDeck can delete"),
    ("delete outside the data dir", ("/storage_delete", (["../../etc"], True)), "outside"),
]


def fake_run(data):
    run = data / "saves" / "tiny" / "lora" / "run1"
    run.mkdir(parents=True)
    (run / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(data / "models" / "base"),
                                                         "peft_type": "LORA"}))
    header = json.dumps({"__metadata__": {}}).encode()
    (run / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    (run / "training_args.yaml").write_text(f"model_name_or_path: {data / 'models' / 'base'}\ntemplate: default\n")
    (data / "models" / "base").mkdir(parents=True)
    (data / "data").mkdir()
    (data / "data" / "dataset_info.json").write_text(json.dumps({"qa": {"file_name": "qa.json"}}))
    outside = data.parent / "outside-run"
    outside.mkdir()
    for f in run.iterdir():
        (outside / f.name).write_bytes(f.read_bytes())
    (data / "saves" / "evil").symlink_to(outside)
    (data / "models" / "escape").symlink_to("/usr")


def snapshot(data, docker_client, project):
    files = sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in data.rglob("*")
                   if p.is_file() and not p.name.startswith("tunedeck.db"))
    containers = sorted((c.id, c.status) for c in docker_client.containers.list(all=True, filters={"name": project}))
    return files, containers


@pytest.fixture(scope="module")
def sweep(docker_client, hosttools_image, tmp_path_factory):
    from tests.harness.stack import Stack, new_project_name

    data = tmp_path_factory.mktemp("bad") / "data"
    data.mkdir()
    fake_run(data)
    stack = Stack(docker_client, new_project_name(), hosttools_image)
    try:
        stack.run("ollama", ["sh", "-c", "while true; do echo hi; sleep 1; done"])
        outsider = stack.run("ollama", labelled=False, name=f"{stack.project}-outsider")
        with running_app(settings_for(tunedeck_project=stack.project, tunedeck_data_dir=str(data))) as app:
            client = Client(app.url, verbose=False)
            yield {"client": client, "data": data, "outsider": outsider, "project": stack.project}
            client.close()
    finally:
        stack.cleanup()


def test_sweep_covers_every_public_endpoint_that_takes_input(sweep):
    """A new endpoint with inputs must bring its bad-input cases along."""
    api = sweep["client"].view_api(print_info=False, return_format="dict")["named_endpoints"]
    with_inputs = {name for name, spec in api.items() if spec["parameters"]}
    covered = {call[0] for _label, call, _expected in CASES}
    assert with_inputs - covered == set(), f"no bad-input case for {sorted(with_inputs - covered)}"
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("label,call,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_clearly_and_changes_nothing(sweep, docker_client, label, call, expected):
    endpoint, args = call
    subst = {"{outsider}": sweep["outsider"].name, "{outsider_id}": sweep["outsider"].id}
    args = tuple(subst.get(a, a) if isinstance(a, str) else a for a in args)
    before = snapshot(sweep["data"], docker_client, sweep["project"])
    with pytest.raises(Exception) as err:
        sweep["client"].predict(*args, api_name=endpoint)
    message = str(err.value)
    assert expected in message, message
    assert "Traceback" not in message and len(message) < 400
    assert snapshot(sweep["data"], docker_client, sweep["project"]) == before
    assert not list(sweep["data"].rglob("*.partial"))
    sweep["outsider"].reload()
    assert sweep["outsider"].status == "running"
