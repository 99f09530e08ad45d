"""Property-based tests (hypothesis) of the validators and command builders: no generated input
yields a command that escapes its argv slot or a path outside the data directory."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from app.config import Settings
from app.docker_gateway import ToolCommand, wrapped_argv
from app.export import commands
from app.export.modelfile import create_payload, parse_modelfile
from app.export.validation import (
    QUANT_TYPES,
    InvalidInput,
    confine,
    slug,
    validate_ollama_name,
    validate_quant_types,
)

SETTINGS = Settings.from_env({})
text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200)
path_text = st.lists(st.sampled_from(["..", ".", "a", "b", "/", "~", "x y", "ü", "\\", "$(id)", "`id`", ";"]),
                     max_size=12).map("".join)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(candidate=st.one_of(path_text, text))
def test_confine_never_returns_a_path_outside(tmp_path, candidate):
    root = tmp_path.resolve()
    try:
        out = confine(root, candidate)
    except InvalidInput:
        return
    assert out == root or root in out.parents


def test_confine_refuses_symlinks_out(tmp_path):
    (tmp_path / "inside").mkdir()
    (tmp_path / "link").symlink_to("/etc")
    (tmp_path / "inside" / "up").symlink_to("../..")
    for bad in ("link", "link/passwd", "inside/up", "inside/up/etc"):
        try:
            confine(tmp_path, bad)
        except InvalidInput as exc:
            assert "outside the data directory" in str(exc)
        else:
            raise AssertionError(f"{bad} escaped")
    assert confine(tmp_path, "inside") == (tmp_path / "inside").resolve()


@given(value=text)
def test_each_user_value_stays_in_its_own_argv_slot(value):
    assume("\x00" not in value)
    merged = Path("/data/exports/x") / value
    out = Path("/data/exports/y") / value
    cmd = commands.convert_command(SETTINGS, merged, "f16", out)
    assert cmd.argv == ("python3", SETTINGS.convert_script, str(merged), "--outtype", "f16", "--outfile", str(out))
    q = commands.quantize_command(SETTINGS, merged, out, "Q4_K_M")
    assert q.argv == (SETTINGS.quantize_bin, str(merged), str(out), "Q4_K_M")
    m = commands.merge_command(SETTINGS, merged)
    assert m.argv == (SETTINGS.llamafactory_cli, "export", str(merged))
    # the wrapper that runs every tool passes the argv on untouched, as "$@" (never as shell text)
    wrapped = wrapped_argv(q)
    assert wrapped[:2] == ["sh", "-c"] and wrapped[4:] == list(q.argv)


@settings(max_examples=60, deadline=None)
@given(value=text)
def test_the_tool_wrapper_really_delivers_each_value_intact(value):
    assume("\x00" not in value)
    cmd = ToolCommand("llamacpp", ("printf", "%s\\0", value, "$(id)"))
    out = subprocess.run(wrapped_argv(cmd), capture_output=True, timeout=10).stdout
    pid_line, _, rest = out.partition(b"\n")
    assert pid_line.startswith(b"@@tunedeck-pid ")
    assert rest.split(b"\0")[:2] == [value.encode("utf-8", "surrogateescape"), b"$(id)"]


@given(template=st.text(min_size=1, max_size=40), base=text, adapter=text)
@example(template="t", base="/data/base", adapter="/data/ad\x85x")  # NEL: YAML used to fold it to a space
@example(template="\u2028", base="a\u2029b", adapter="\ufeffx")
def test_merge_yaml_round_trips_any_value(template, base, adapter):
    assume(all("\x00" not in v for v in (template, base, adapter)))
    doc = yaml.safe_load(commands.merge_yaml(base, [adapter], template, "/data/out"))
    assert doc["model_name_or_path"] == base and doc["adapter_name_or_path"] == adapter
    assert doc["template"] == template and doc["export_dir"] == "/data/out"
    assert set(doc) == {"model_name_or_path", "adapter_name_or_path", "template", "finetuning_type",
                        "trust_remote_code", "export_dir", "export_size", "export_device", "export_legacy_format"}


@given(argv=st.lists(text, min_size=1, max_size=5))
def test_tool_command_refuses_nul(argv):
    if any("\x00" in a for a in argv):
        try:
            ToolCommand("llamacpp", tuple(argv))
        except ValueError:
            return
        raise AssertionError("NUL accepted")
    assert ToolCommand("llamacpp", tuple(argv)).argv == tuple(argv)


@given(name=text)
def test_valid_ollama_names_are_safe(name):
    try:
        ok = validate_ollama_name(name)
    except InvalidInput:
        return
    assert all(c.isascii() and (c.isalnum() or c in "_.-:/") for c in ok)
    assert not ok.startswith(("-", ".", ":", "/")) and ".." not in ok and " " not in ok


def _case_variants(name: str):
    return st.sampled_from([name, name.lower(), name.title(), f" {name} "])


@given(types=st.lists(st.one_of(st.sampled_from(QUANT_TYPES).flatmap(_case_variants), text), max_size=8))
def test_quant_types_are_from_the_list_or_refused(types):
    valid = [t.strip().upper() for t in types if isinstance(t, str) and t.strip().upper() in QUANT_TYPES]
    wanted = list(dict.fromkeys(valid))
    try:
        out = validate_quant_types(types, "f16")
    except InvalidInput:
        assert len(valid) < len(types) or len(wanted) > 6, f"refused a valid list {types!r}"
        return
    assert len(valid) == len(types), f"accepted {types!r}"
    assert out == wanted  # normalised, de-duplicated, order kept


@given(value=text)
def test_slug_is_filesystem_safe(value):
    s = slug(value)
    assert s and "/" not in s and s not in (".", "..") and len(s) <= 48
    assert os.path.basename(s) == s


@given(system=text, stop=st.lists(st.text(min_size=1, max_size=10), max_size=3))
def test_create_payload_carries_system_and_stops_verbatim(system, stop):
    modelfile = {"template": "{{ .Prompt }}", "system": "default", "parameters": {"stop": stop}}
    payload = create_payload("m", "sha256:" + "0" * 64, modelfile, system)
    assert payload["system"] == (system or "default")
    assert payload.get("parameters", {}).get("stop", []) == stop


def test_modelfile_parser_reads_llamafactory_output():
    text = ('# ollama modelfile auto-generated by llamafactory\n\nFROM .\n\n'
            'TEMPLATE """{{ if .System }}System: {{ .System }}</s>\n{{ end }}{{ range .Messages }}'
            '{{ if eq .Role "user" }}Human: {{ .Content }}</s>\nAssistant:{{ end }}{{ end }}"""\n\n'
            'SYSTEM """You are "helpful".\nReally."""\n\nPARAMETER stop "</s>"\nPARAMETER stop "<|im_end|>"\n'
            'PARAMETER num_ctx 4096\n')
    parsed = parse_modelfile(text)
    assert parsed["template"].startswith("{{ if .System }}System:") and parsed["template"].endswith("{{ end }}")
    assert parsed["system"] == 'You are "helpful".\nReally.'
    assert parsed["parameters"] == {"stop": ["</s>", "<|im_end|>"], "num_ctx": 4096}
