"""A training submission, checked before it is queued: TuneDeck's own checks here (pure filesystem reads),
LLaMA-Factory's argument parser afterwards in its container (app/training/argcheck.py).

One sentence per problem. Relative paths mean what they mean to LLaMA Board, whose working directory
is the data directory: `saves/...`, `data`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..export.validation import (
    InvalidInput,
    check_text,
    confine,
    validate_dtype,
    validate_ollama_name,
    validate_quant_types,
    validate_system_prompt,
    validate_threshold,
)
from ..runs import checkpoints, read_yaml
from .gpus import GpuRequest, parse_gpu_request

MAX_YAML = 200_000
BACKENDS = ("local", "ray")
_EXPORT_KEYS = {"ollama_name", "quant_types", "dtype", "system_prompt", "report", "imatrix", "kl_threshold",
                "overwrite"}


@dataclass(frozen=True)
class TrainRequest:
    config: dict                 # LLaMA-Factory's training arguments, with absolute output_dir and dataset_dir
    name: str                    # output_dir relative to saves/: the run's name in the Runs tab
    backend: str
    gpus: GpuRequest
    cpus: float | None = None    # CPUs to reserve on a Ray cluster (the entrypoint's num_cpus)
    priority: int = 0
    export: dict = field(default_factory=dict)  # export settings used when the run finishes ("" = none)
    source: str = "yaml"

    def stored(self) -> dict:
        return {"config": self.config, "gpus": self.gpus.text(), "cpus": self.cpus, "export": self.export,
                "source": self.source}


def parse_config(text: object) -> dict:
    """The training YAML (LLaMA-Factory's `llamafactory-cli train` file) as a mapping."""
    body = check_text("Training config", text if text is not None else "", MAX_YAML, allow_control=True)
    if not body.strip():
        raise InvalidInput("Paste or upload a LLaMA-Factory training config (YAML) first.")
    try:
        config = yaml.safe_load(body)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InvalidInput(f"The training config is not valid YAML{where}: {getattr(exc, 'problem', exc)}.") from None
    if not isinstance(config, dict) or not config:
        raise InvalidInput("The training config must be a YAML mapping of LLaMA-Factory arguments (key: value).")
    bad = [k for k in config if not isinstance(k, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)]
    if bad:
        raise InvalidInput(f"{str(bad[0])[:60]!r} is not an argument name.")
    return config


def _names(value: object) -> list[str]:
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else []
    return [str(v).strip() for v in items if str(v).strip()]


def check_datasets(config: dict, dataset_dir: Path) -> None:
    """Every dataset the config names must be registered in the data dir's dataset_info.json."""
    names = _names(config.get("dataset")) + _names(config.get("eval_dataset"))
    if not names:
        raise InvalidInput("The training config names no dataset (`dataset:`).")
    info_path = dataset_dir / "dataset_info.json"
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInput(f"There is no dataset_info.json in {dataset_dir}: register a dataset first "
                           "(Datasets tab).") from None
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{info_path} cannot be read as JSON ({exc}).") from None
    known = sorted(info) if isinstance(info, dict) else []
    for name in names:
        if name not in known:
            listed = ", ".join(known[:8]) + (" …" if len(known) > 8 else "") if known else "none"
            raise InvalidInput(f"Dataset {name!r} is not in {info_path} (registered: {listed}).")


def _local_path(data_dir: Path, value: str, label: str) -> None:
    """A model or adapter given as a path inside the data dir must exist (a hub id is not checked)."""
    for part in _names(value):
        path = Path(part)
        if not path.is_absolute() and not part.startswith(("./", "saves/", "models/")):
            continue  # a hub id such as Qwen/Qwen2.5-0.5B
        resolved = (Path(data_dir) / path) if not path.is_absolute() else path
        root = Path(data_dir).resolve()
        try:
            inside = resolved.resolve() == root or root in resolved.resolve().parents
        except OSError:
            inside = False
        if inside and not resolved.exists():
            raise InvalidInput(f"{label} {part!r} does not exist.")


def last_checkpoint(output_dir: Path) -> Path | None:
    found = checkpoints(output_dir)
    return found[-1][1] if found else None


def build_train_request(data_dir: Path, dataset_dir: Path, yaml_text: object, *, gpus: object = "all",
                        backend: object = "local", priority: object = 0, cpus: object = None,
                        export: object = None, source: str = "yaml", ray_available: bool = False,
                        taken: dict[str, str] | None = None) -> TrainRequest:
    """Validate raw inputs (UI or API) into a request; raises InvalidInput. `taken`: output_dir → job id of
    queued and running jobs."""
    data_dir = Path(data_dir).resolve()
    config = parse_config(yaml_text)
    where = str(backend or "local").strip().lower()
    if where not in BACKENDS:
        raise InvalidInput(f"Where must be 'local' or 'ray', not {str(backend)[:20]!r}.")
    if where == "ray" and not ray_available:
        raise InvalidInput("No Ray cluster is configured (set TUNEDECK_RAY_ADDRESS); train on this host instead.")
    if config.get("do_train") is False:
        raise InvalidInput("This config does not train (`do_train: false`); the queue runs trainings.")
    config["do_train"] = True
    if not config.get("model_name_or_path"):
        raise InvalidInput("The training config names no model (`model_name_or_path:`).")
    _local_path(data_dir, str(config["model_name_or_path"]), "Model")
    if config.get("adapter_name_or_path"):
        _local_path(data_dir, str(config["adapter_name_or_path"]), "Adapter")

    raw_dir = config.get("dataset_dir")
    dataset_root = confine(data_dir, str(raw_dir), "dataset_dir") if raw_dir else Path(dataset_dir).resolve()
    config["dataset_dir"] = str(dataset_root)
    check_datasets(config, dataset_root)

    out = config.get("output_dir")
    if not out or not isinstance(out, str):
        raise InvalidInput("The training config has no `output_dir` (where the run is saved, under saves/).")
    saves = data_dir / "saves"
    out_path = confine(data_dir, out, "output_dir")
    if out_path == saves or saves not in out_path.parents:
        raise InvalidInput(f"output_dir {out!r} must be a folder inside {saves}, where the Runs tab finds runs.")
    if out_path.exists():
        raise InvalidInput(f"output_dir {out!r} already exists: choose a new folder (or resume that job from the "
                           "queue).")
    if taken and str(out_path) in taken:
        raise InvalidInput(f"Job {taken[str(out_path)]} already trains into {out!r}.")
    config["output_dir"] = str(out_path)
    # a new folder: LLaMA-Factory's resume-on-existing-checkpoints never applies to a fresh job
    config.pop("resume_from_checkpoint", None)

    gpu_request = parse_gpu_request(gpus)
    if where == "ray" and gpu_request.kind != "count":
        raise InvalidInput("On a Ray cluster give a number of GPUs per job (0 to train on CPUs); "
                           "GPU ids and 'all' only mean something on this host.")
    cpu_count = None
    if cpus not in (None, ""):
        try:
            cpu_count = float(cpus)
        except (TypeError, ValueError):
            cpu_count = -1.0
        if not 0 < cpu_count <= 1024:
            raise InvalidInput(f"CPUs must be a number from 0 to 1024, not {str(cpus)[:20]!r}.")
    try:
        prio = int(priority or 0)
    except (TypeError, ValueError):
        raise InvalidInput(f"Priority must be a whole number, not {str(priority)[:20]!r}.") from None
    if not -100 <= prio <= 100:
        raise InvalidInput("Priority must be from -100 to 100 (higher starts first).")
    return TrainRequest(config, str(out_path.relative_to(saves)), where, gpu_request, cpu_count, prio,
                        validate_export(export), source)


def validate_export(export: object) -> dict:
    """Export settings kept with a job and used when it finishes (same rules as the Export tab's)."""
    if export in (None, "", {}):
        return {}
    if isinstance(export, str):
        try:
            export = json.loads(export)
        except ValueError:
            raise InvalidInput("Export settings must be a JSON object.") from None
    if not isinstance(export, dict):
        raise InvalidInput("Export settings must be an object such as {\"quant_types\": [\"Q4_K_M\"]}.")
    unknown = sorted(set(export) - _EXPORT_KEYS)
    if unknown:
        raise InvalidInput(f"Unknown export setting {unknown[0]!r} (known: {', '.join(sorted(_EXPORT_KEYS))}).")
    out: dict = {}
    dtype = validate_dtype(export.get("dtype") or "f16")
    out["dtype"] = dtype
    out["imatrix"] = bool(export.get("imatrix", False))
    out["quant_types"] = validate_quant_types(export.get("quant_types", ["Q4_K_M"]), dtype, out["imatrix"])
    if export.get("ollama_name"):
        out["ollama_name"] = validate_ollama_name(export["ollama_name"])
    out["system_prompt"] = validate_system_prompt(export.get("system_prompt") or "")
    out["report"] = bool(export.get("report", True))
    out["kl_threshold"] = validate_threshold(export.get("kl_threshold", 0.05))
    out["overwrite"] = bool(export.get("overwrite", False))
    return out


def resume_config(config: dict, output_dir: Path) -> tuple[dict, Path]:
    """The job's config resuming from its last checkpoint; one sentence when it has none."""
    last = last_checkpoint(Path(output_dir))
    if last is None:
        raise InvalidInput(f"{Path(output_dir).name} has no checkpoint to resume from: retry it from the start.")
    return {**config, "resume_from_checkpoint": str(last), "overwrite_output_dir": False}, last


def retry_config(config: dict) -> dict:
    """The job's config started over: what a failed attempt left in output_dir is overwritten."""
    cfg = {k: v for k, v in config.items() if k != "resume_from_checkpoint"}
    cfg["overwrite_output_dir"] = True
    return cfg


def train_again_yaml(data_dir: Path, run_name: str) -> str:
    """A run's training arguments (LLaMA Board's training_args.yaml) with a fresh output_dir beside it."""
    saves = Path(data_dir).resolve() / "saves"
    run = confine(saves, run_name, "Run")
    args = read_yaml(run / "training_args.yaml")
    if not args:
        raise InvalidInput(f"{run_name} has no training_args.yaml (LLaMA Board and TuneDeck's queue write one; a "
                           "CLI run does not): paste its YAML instead.")
    stem, n = re.sub(r"-again-\d+$", "", run.name), 2
    while (run.parent / f"{stem}-again-{n}").exists():
        n += 1
    args = {k: v for k, v in args.items() if k not in ("resume_from_checkpoint", "overwrite_output_dir")}
    args["output_dir"] = str(run.parent / f"{stem}-again-{n}")
    return yaml.safe_dump(args, sort_keys=False, allow_unicode=True)


def config_yaml(config: dict) -> str:
    """What the trainer reads: ASCII-only YAML (every other character escaped, nothing folded)."""
    return yaml.safe_dump(config, sort_keys=False, allow_unicode=False, width=1 << 16)


def relpath_in(root: Path, path: str) -> str:
    return os.path.relpath(path, root)
