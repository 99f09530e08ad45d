"""Datasets: easy-dataset's real export layout (written by the stand-in, from easy-dataset's own code)
registered into LLaMA-Factory's dataset_info.json, and read back by LLaMA-Factory's own parser."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from gradio_client import Client

from app.config import Settings
from app.datasets import exports, register_by_name, registered, status_of
from app.datasets.registry import RegistryError, members, upsert

sys.path.insert(0, str(Path(__file__).parent / "standins"))
from easydataset_server import Store  # noqa: E402

QA = [("What colour is the sky?", "Blue."), ("Capital of France?", "Paris."), ("2 + 5?", "Seven.")]


def project(root: Path, name: str = "Demo project", system: str = "") -> tuple[Store, str]:
    store = Store(root)
    pid = store.create_project(name)
    for q, a in QA:
        store.add_dataset(pid, q, a, confirmed=False)
    store.generate(pid, system_prompt=system)
    return store, pid


def settings(tmp_path: Path) -> Settings:
    return Settings.from_env({"TUNEDECK_DATA_DIR": str(tmp_path / "data")})


def test_exports_are_listed_with_their_facts(tmp_path):
    s = settings(tmp_path)
    _store, pid = project(s.easydataset_dir.parent, system="Answer in one word.")
    found = {e.name: e for e in exports(s)}
    assert set(found) == {f"[Easy Dataset] [{pid}] {k}" for k in ("Alpaca", "ShareGPT", "multilingual-thinking")}
    alpaca = found[f"[Easy Dataset] [{pid}] Alpaca"]
    assert (alpaca.project, alpaca.formatting, alpaca.rows) == ("Demo project", "alpaca", 3)
    assert alpaca.file == str(s.easydataset_dir / pid / "alpaca.json") and len(alpaca.sha256) == 16
    assert found[f"[Easy Dataset] [{pid}] ShareGPT"].formatting == "sharegpt" and not alpaca.problem
    thinking = found[f"[Easy Dataset] [{pid}] multilingual-thinking"]
    assert "no LLaMA-Factory converter" in thinking.problem
    assert status_of(thinking, {}).startswith("skipped:")


def test_register_merges_updates_in_place_and_leaves_other_entries_byte_for_byte(tmp_path):
    s = settings(tmp_path)
    store, pid = project(s.easydataset_dir.parent)
    s.llamafactory_data.mkdir(parents=True)
    mine = ('{\n    "identity": {"file_name": "identity.json"},\n\t"alpaca_en_demo":  {\n  "file_name": '
            '"alpaca_en_demo.json"   }\n}\n')
    info = s.llamafactory_data / "dataset_info.json"
    info.write_text(mine)
    name = f"[Easy Dataset] [{pid}] Alpaca"
    assert "registered in" in register_by_name(s, name)
    text = info.read_text()
    for key, start, vstart, vend in members(mine):
        assert mine[start:vend] in text, f"{key} was rewritten"
    entry = json.loads(text)[name]
    assert entry["file_name"] == str(s.easydataset_dir / pid / "alpaca.json")  # absolute: valid in every container
    assert entry["columns"] == {"prompt": "instruction", "query": "input", "response": "output", "system": "system"}

    store.add_dataset(pid, "One more?", "Yes.", confirmed=False)
    store.generate(pid)  # a re-export from easy-dataset
    assert "unchanged" in register_by_name(s, name) or "updated" in register_by_name(s, name)
    again = info.read_text()
    assert again.count(json.dumps(name)) == 1 and json.loads(again)[name] == entry
    register_by_name(s, f"[Easy Dataset] [{pid}] ShareGPT")
    final = json.loads(info.read_text())
    assert list(final)[:2] == ["identity", "alpaca_en_demo"] and len(final) == 4
    assert not [p for p in s.llamafactory_data.iterdir() if p.name.startswith(".dataset_info.json.")]
    assert status_of(next(e for e in exports(s) if e.name == name), registered(s.llamafactory_data)) == "registered"


@pytest.mark.parametrize("edit,expected", [
    (lambda rows: [{k: v for k, v in r.items() if k != "output"} for r in rows],
     "maps response to column 'output', which rows of the data file lack"),
    (lambda rows: [{**r, "messages": [{**m, "role": "human"} for m in r["messages"]]} for r in rows],
     "has role 'human', which none of the role tags"),
])
def test_column_or_role_mismatch_is_refused_in_one_sentence(tmp_path, edit, expected):
    s = settings(tmp_path)
    _store, pid = project(s.easydataset_dir.parent)
    fmt = "alpaca" if "output" in expected else "sharegpt"
    path = s.easydataset_dir / pid / f"{fmt}.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    name = f"[Easy Dataset] [{pid}] {'Alpaca' if fmt == 'alpaca' else 'ShareGPT'}"
    with pytest.raises(RegistryError, match=expected) as err:
        register_by_name(s, name)
    assert str(err.value).count(". ") == 0 and not (s.llamafactory_data / "dataset_info.json").exists()
    with pytest.raises(RegistryError, match="cannot be registered: formatting 'multilingual-thinking'"):
        register_by_name(s, f"[Easy Dataset] [{pid}] multilingual-thinking")


def test_upsert_handles_empty_unicode_and_broken_files():
    assert json.loads(upsert("", "a", {"file_name": "x"})) == {"a": {"file_name": "x"}}
    assert json.loads(upsert("{}", "ü [x]", {"file_name": "é"})) == {"ü [x]": {"file_name": "é"}}
    assert json.loads(upsert('{"a": 1, "a": 2}', "a", {"n": 3})) == {"a": {"n": 3}}
    for broken in ('{"a": ', "[1, 2]", '{"a": 1} trailing'):
        with pytest.raises(RegistryError):
            upsert(broken, "b", {})


def test_llamafactory_loads_the_registered_datasets(tmp_path):
    """LLaMA-Factory's own dataset parser and converters accept what was registered."""
    from tests.harness.toolbox import tool_env, tools_python

    s = settings(tmp_path)
    _store, pid = project(s.easydataset_dir.parent, system="Be brief.")
    for fmt in ("Alpaca", "ShareGPT"):
        register_by_name(s, f"[Easy Dataset] [{pid}] {fmt}")
    script = (
        "import sys, json\n"
        "from llamafactory.data.parser import get_dataset_list\n"
        "from llamafactory.data.loader import _load_single_dataset\n"
        "from llamafactory.hparams import DataArguments, ModelArguments\n"
        "from transformers import Seq2SeqTrainingArguments\n"
        "names = json.loads(sys.argv[2])\n"
        "out = {}\n"
        "for name, attr in zip(names, get_dataset_list(names, sys.argv[1])):\n"
        "    d = _load_single_dataset(attr, ModelArguments(model_name_or_path='x'), DataArguments(dataset_dir=sys.argv[1]),"
        " Seq2SeqTrainingArguments(output_dir='/tmp/x'))\n"
        "    out[name] = [d[0]['_prompt'], d[0]['_response'], d[0]['_system']]\n"
        "print(json.dumps(out))\n")
    names = [f"[Easy Dataset] [{pid}] Alpaca", f"[Easy Dataset] [{pid}] ShareGPT"]
    out = subprocess.run([tools_python(), "-c", script, str(s.llamafactory_data), json.dumps(names)],
                         capture_output=True, text=True, timeout=300, env=tool_env())
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    for name in names:
        prompt, response, system = loaded[name]
        assert prompt[0]["content"] in [q for q, _ in QA] and response[0]["content"] in [a for _, a in QA]
        assert system == "Be brief."


def test_datasets_api(app_server, data_dir):
    s = app_server.runtime.settings
    _store, pid = project(s.easydataset_dir.parent)
    client = Client(app_server.url, verbose=False)
    listed = {d["name"]: d for d in client.predict(api_name="/datasets")}
    name = f"[Easy Dataset] [{pid}] Alpaca"
    assert listed[name]["status"] == "not registered" and listed[name]["rows"] == 3
    assert "registered in" in client.predict(name, api_name="/register_dataset")
    assert {d["name"]: d for d in client.predict(api_name="/datasets")}[name]["status"] == "registered"
    with pytest.raises(Exception, match="cannot be registered: formatting 'multilingual-thinking'"):
        client.predict(f"[Easy Dataset] [{pid}] multilingual-thinking", api_name="/register_dataset")
    with pytest.raises(Exception, match="No easy-dataset export named"):
        client.predict("nope", api_name="/register_dataset")
    client.close()
