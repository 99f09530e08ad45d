"""Configuration: env parsing, README table, `python -m app --help`."""

import subprocess
import sys
from pathlib import Path

from app.config import ENV_VARS, Settings, env_table_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_without_environment():
    s = Settings.from_env({})
    assert s.host == "127.0.0.1" and s.port == 7860 and not s.share
    assert s.project == "tunedeck"
    assert "ollama" in s.services and "llamafactory" in s.services
    assert s.data_dir.is_absolute()


def test_environment_overrides_and_empty_means_default():
    s = Settings.from_env({"TUNEDECK_PORT": "9000", "TUNEDECK_SERVICES": " a, b ,,", "GRADIO_SHARE": "true",
                           "TUNEDECK_PROJECT": ""})
    assert s.port == 9000 and s.services == ("a", "b") and s.share and s.project == "tunedeck"


def test_readme_lists_every_variable_in_one_table():
    readme = (ROOT / "README.md").read_text()
    assert env_table_markdown() in readme, "README's configuration table is stale: paste env_table_markdown()"


def test_help_documents_flags_and_variables():
    out = subprocess.run([sys.executable, "-m", "app", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    for flag in ("--host", "--port", "--share", "--root-path"):
        assert flag in out.stdout
    for var in ENV_VARS:
        assert var.name in out.stdout


def test_bad_settings_are_one_sentence_not_a_traceback():
    for env, expected in (({"TUNEDECK_PORT": "abc"}, "TUNEDECK_PORT must be a port number from 1 to 65535"),
                          ({"TUNEDECK_PORT": "70000"}, "TUNEDECK_PORT must be a port number"),
                          ({"TUNEDECK_KL_THRESHOLD": "low"}, "TUNEDECK_KL_THRESHOLD must be a number"),
                          ({"TUNEDECK_LOG_LEVEL": "loud"}, "TUNEDECK_LOG_LEVEL must be one of")):
        out = subprocess.run([sys.executable, "-m", "app"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                             env={"PATH": "/usr/bin:/bin", **env})
        assert out.returncode == 2, out.stderr
        assert expected in out.stderr and "Traceback" not in out.stderr, out.stderr
