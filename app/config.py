"""Settings from environment variables: the single source for parsing, `--help` and README.

Every knob of TuneDeck is one `EnvVar` in `ENV_VARS`; `Settings.from_env()` reads them,
`env_table_markdown()` renders the README table (a test keeps README in sync).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping


@dataclass(frozen=True)
class EnvVar:
    name: str
    default: str
    help: str


# name | default | meaning (one setting per line; `--help` and the README's table are made from it)
_TABLE = """
TUNEDECK_HOST | 127.0.0.1 | Address the dashboard listens on (`--host`).
TUNEDECK_PORT | 7860 | Port the dashboard listens on (`--port`).
TUNEDECK_ROOT_PATH |  | Sub-path when served behind a proxy (`--root-path`).
GRADIO_SHARE | false | Create a public Gradio share link (`--share`); needs `TUNEDECK_AUTH`.
TUNEDECK_AUTH |  | Dashboard login: `user:password`, several separated by `,`, or the path of a file with one `user:password` per line. Empty: when a login is needed (a non-local `--host`, `--share`, `TUNEDECK_LOGIN=always`) one is made on first start and kept in `<data dir>/tunedeck-login`.
TUNEDECK_LOGIN | auto | When the dashboard asks for a login: `auto` (when it listens beyond localhost or shares a link) or `always` (the compose stack: it listens on the loopback of the network namespace it shares with Caddy, and every visitor arrives through Caddy).
DOCKER_HOST | unix:///var/run/docker.sock | Docker engine the dashboard talks to.
TUNEDECK_PROJECT | tunedeck | Compose project name: only its containers are shown and touched.
TUNEDECK_SERVICES | net,caddy,app,easy-dataset,llamafactory,llamacpp,ollama,tensorboard | Compose services the stack is expected to have (shown as `missing` when absent).
TUNEDECK_DATA_DIR | /srv/tunedeck | Shared data directory, mounted at this same path in every model-touching container (`saves/`, `exports/`, history database).
TUNEDECK_OLLAMA_URL | http://localhost:11434 | Base URL of the Ollama HTTP API.
TUNEDECK_LLAMAFACTORY_SERVICE | llamafactory | Compose service that runs `llamafactory-cli`.
TUNEDECK_LLAMACPP_SERVICE | llamacpp | Compose service of the llama.cpp toolbox.
TUNEDECK_OLLAMA_SERVICE | ollama | Compose service of Ollama.
TUNEDECK_DATASET_SERVICE | easy-dataset | Compose service of easy-dataset.
TUNEDECK_TENSORBOARD_SERVICE | tensorboard | Compose service of TensorBoard.
TUNEDECK_LLAMAFACTORY_CLI | llamafactory-cli | Command of LLaMA-Factory's CLI inside its container.
TUNEDECK_CONVERT_SCRIPT | /app/convert_hf_to_gguf.py | Path of llama.cpp's `convert_hf_to_gguf.py` inside the llama.cpp container.
TUNEDECK_QUANTIZE_BIN | /app/llama-quantize | Path of `llama-quantize` inside the llama.cpp container.
TUNEDECK_DATASET_URL | {scheme}://{hostname}:1717/ | Iframe URL of easy-dataset; `{scheme}`, `{hostname}` and `{host}` follow the address the browser used.
TUNEDECK_TRAINING_URL | /llamafactory/ | Iframe URL of LLaMA-Factory's web UI (same placeholders).
TUNEDECK_TENSORBOARD_URL | /tensorboard/ | Iframe URL of TensorBoard (same placeholders).
TUNEDECK_LOG_LEVEL | info | Log level of the app (`--log-level`): debug, info, warning or error.
TUNEDECK_LLAMAFACTORY_DATA | {data_dir}/data | LLaMA-Factory's dataset dir (LLaMA Board's "Data dir"), where datasets are registered for training.
TUNEDECK_EASYDATASET_DIR | {data_dir}/easy-dataset/local-db | easy-dataset's project folder (its `local-db`; its database is in `../prisma`), where its "Use in LLaMA Factory" exports appear.
TUNEDECK_PYTHON | python3 | Python inside the LLaMA-Factory and llama.cpp containers.
TUNEDECK_PERPLEXITY_BIN | /app/llama-perplexity | Path of `llama-perplexity` inside the llama.cpp container.
TUNEDECK_IMATRIX_BIN | /app/llama-imatrix | Path of `llama-imatrix` inside the llama.cpp container.
TUNEDECK_BENCH_BIN | /app/llama-bench | Path of `llama-bench` inside the llama.cpp container.
TUNEDECK_TOKENIZE_BIN | /app/llama-tokenize | Path of `llama-tokenize` inside the llama.cpp container (the served prompt's token ids, checked before Ollama changes).
TUNEDECK_KL_THRESHOLD | 0.05 | Quantization report: recommend the smallest type whose mean KL divergence from f16 is below this.
TUNEDECK_FIDELITY_MIN | 0.98 | Fidelity stage: warn when the f16 GGUF agrees with the merged model on fewer top-1 tokens than this.
TUNEDECK_OLLAMA_MIN_VERSION | 0.32.15 | Oldest Ollama an export loads into: its llama.cpp (b10488) must be at least as new as the toolbox's converter, or it may not read the GGUF's architecture and pre-tokenizer.
TUNEDECK_RAY_ADDRESS |  | Ray dashboard / Jobs API of an existing Ray cluster (e.g. `http://10.0.0.5:8265`; the compose `ray` profile's head: `http://127.0.0.1:8265`): the training queue can send jobs there. Empty: trainings run on this host only.
TUNEDECK_RAY_URL | /ray/ | Iframe URL of the Ray dashboard tab, shown when `TUNEDECK_RAY_ADDRESS` is set (same placeholders as the other tools).
TUNEDECK_SESSION_HOURS | 168 | Lifetime of a dashboard login session in hours; the tool routes behind Caddy follow it.
TUNEDECK_DISK_WARN_GB | 20 | Show a banner when free space on the data dir's filesystem or on Ollama's volume falls under this many GiB (0: never); the Storage tab shows what is safe to delete.
"""
ENV_VARS: tuple[EnvVar, ...] = tuple(EnvVar(*(part.strip() for part in line.split(" | ", 2)))
                                     for line in _TABLE.strip().splitlines())

_DEFAULTS = {v.name: v.default for v in ENV_VARS}


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the variable and what it accepts."""


def _truthy(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    host: str
    port: int
    root_path: str
    share: bool
    auth: str = field(repr=False)  # a secret: never in logs or reprs
    docker_host: str
    project: str
    services: tuple[str, ...]
    data_dir: Path
    ollama_url: str
    llamafactory_service: str
    llamacpp_service: str
    ollama_service: str
    dataset_service: str
    tensorboard_service: str
    llamafactory_cli: str
    convert_script: str
    quantize_bin: str
    dataset_url: str
    training_url: str
    tensorboard_url: str
    log_level: str = "info"
    llamafactory_data: Path = Path("/srv/tunedeck/data")
    easydataset_dir: Path = Path("/srv/tunedeck/easy-dataset/local-db")
    python: str = "python3"
    perplexity_bin: str = "/app/llama-perplexity"
    imatrix_bin: str = "/app/llama-imatrix"
    bench_bin: str = "/app/llama-bench"
    tokenize_bin: str = "/app/llama-tokenize"
    kl_threshold: float = 0.05
    fidelity_min: float = 0.98
    ollama_min_version: str = "0.32.15"
    session_hours: float = 168.0
    ray_address: str = ""
    ray_url: str = "/ray/"
    login: str = "auto"
    disk_warn_gb: float = 20.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ

        def get(name: str) -> str:
            value = env.get(name)
            return _DEFAULTS[name] if value is None or value == "" else value

        data_dir = Path(get("TUNEDECK_DATA_DIR")).expanduser().absolute()
        return cls(
            host=get("TUNEDECK_HOST"),
            port=_port(get("TUNEDECK_PORT")),
            root_path=env.get("TUNEDECK_ROOT_PATH", ""),
            share=_truthy(get("GRADIO_SHARE")),
            auth=env.get("TUNEDECK_AUTH", ""),
            docker_host=get("DOCKER_HOST"),
            project=get("TUNEDECK_PROJECT"),
            services=tuple(s.strip() for s in get("TUNEDECK_SERVICES").split(",") if s.strip()),
            data_dir=data_dir,
            ollama_url=get("TUNEDECK_OLLAMA_URL").rstrip("/"),
            llamafactory_service=get("TUNEDECK_LLAMAFACTORY_SERVICE"),
            llamacpp_service=get("TUNEDECK_LLAMACPP_SERVICE"),
            ollama_service=get("TUNEDECK_OLLAMA_SERVICE"),
            dataset_service=get("TUNEDECK_DATASET_SERVICE"),
            tensorboard_service=get("TUNEDECK_TENSORBOARD_SERVICE"),
            llamafactory_cli=get("TUNEDECK_LLAMAFACTORY_CLI"),
            convert_script=get("TUNEDECK_CONVERT_SCRIPT"),
            quantize_bin=get("TUNEDECK_QUANTIZE_BIN"),
            dataset_url=get("TUNEDECK_DATASET_URL"),
            training_url=get("TUNEDECK_TRAINING_URL"),
            tensorboard_url=get("TUNEDECK_TENSORBOARD_URL"),
            log_level=_choice("TUNEDECK_LOG_LEVEL", get("TUNEDECK_LOG_LEVEL"), LOG_LEVELS),
            llamafactory_data=Path(get("TUNEDECK_LLAMAFACTORY_DATA").replace("{data_dir}", str(data_dir))).absolute(),
            easydataset_dir=Path(get("TUNEDECK_EASYDATASET_DIR").replace("{data_dir}", str(data_dir))).absolute(),
            python=get("TUNEDECK_PYTHON"),
            perplexity_bin=get("TUNEDECK_PERPLEXITY_BIN"),
            imatrix_bin=get("TUNEDECK_IMATRIX_BIN"),
            bench_bin=get("TUNEDECK_BENCH_BIN"),
            tokenize_bin=get("TUNEDECK_TOKENIZE_BIN"),
            kl_threshold=_number("TUNEDECK_KL_THRESHOLD", get("TUNEDECK_KL_THRESHOLD"), 0.0, 10.0),
            fidelity_min=_number("TUNEDECK_FIDELITY_MIN", get("TUNEDECK_FIDELITY_MIN"), 0.0, 1.0),
            ollama_min_version=get("TUNEDECK_OLLAMA_MIN_VERSION"),
            session_hours=_number("TUNEDECK_SESSION_HOURS", get("TUNEDECK_SESSION_HOURS"), 0.001, 24 * 366),
            ray_address=_url("TUNEDECK_RAY_ADDRESS", env.get("TUNEDECK_RAY_ADDRESS", "")),
            ray_url=get("TUNEDECK_RAY_URL"),
            login=_choice("TUNEDECK_LOGIN", get("TUNEDECK_LOGIN"), ("auto", "always")),
            disk_warn_gb=_number("TUNEDECK_DISK_WARN_GB", get("TUNEDECK_DISK_WARN_GB"), 0.0, 1 << 20),
        )


LOG_LEVELS = ("debug", "info", "warning", "error")


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise ConfigError(f"TUNEDECK_PORT must be a port number from 1 to 65535, not {value!r}.")
    return port


def _number(name: str, value: str, low: float, high: float) -> float:
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not low <= number <= high:
        raise ConfigError(f"{name} must be a number from {low:g} to {high:g}, not {value!r}.")
    return number


def _url(name: str, value: str) -> str:
    value = value.strip().rstrip("/")
    if value and not value.startswith(("http://", "https://")):
        raise ConfigError(f"{name} must be an http:// or https:// address such as http://10.0.0.5:8265, "
                          f"not {value!r}.")
    return value


def _choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value.lower() not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {value!r}.")
    return value.lower()


def env_table_markdown() -> str:
    """The README's configuration table, generated so it cannot drift from the code."""
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for var in ENV_VARS:
        default = f"`{var.default}`" if var.default else "(empty)"
        rows.append(f"| `{var.name}` | {default} | {var.help} |")
    return "\n".join(rows)


def env_help_text() -> str:
    """Plain-text list of the variables for `python -m app --help`."""
    lines = ["environment variables:"]
    for var in ENV_VARS:
        lines.append(f"  {var.name} (default: {var.default or 'empty'})")
        lines.append(f"      {var.help}")
    return "\n".join(lines)
