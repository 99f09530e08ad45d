"""What a training run is, in one place: a folder under `saves/` (any depth) holding one of
LLaMA-Factory's run files. A run is *exportable* once it holds a LoRA adapter (config and
weights) or, for a full or freeze fine-tune, the model itself (config and weights); each of its
`checkpoint-N` folders that holds either is exportable too, as `<run>/checkpoint-N`. The Runs tab
and the Export tab both discover runs here. Pure filesystem reads.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from .export.validation import InvalidInput, confine

RUN_MARKERS = ("trainer_log.jsonl", "training_args.yaml", "adapter_config.json", "running_log.txt")
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
MAX_DEPTH = 8
_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*(?:\n|\Z)", re.S)
_DATASET_SENTENCE = re.compile(r"fine-tuned version of .*? on the (.+?) datasets?\b", re.S)


def discover_run_dirs(saves: Path) -> list[Path]:
    """Folders under saves/ holding any run file; folders inside a run (checkpoints) are not runs."""
    found: list[Path] = []
    saves = Path(saves)
    if not saves.is_dir():
        return found
    depth0 = len(saves.parts)
    for dirpath, dirnames, filenames in os.walk(saves, followlinks=False):
        here = Path(dirpath)
        if here != saves and any(m in filenames for m in RUN_MARKERS):
            found.append(here)
            dirnames.clear()
            continue
        if len(here.parts) - depth0 >= MAX_DEPTH:
            dirnames.clear()
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    return found


MODEL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def has_adapter(path: Path) -> bool:
    path = Path(path)
    return (path / "adapter_config.json").is_file() and any((path / w).is_file() for w in ADAPTER_WEIGHTS)


def has_model(path: Path) -> bool:
    """A whole model (what a full or freeze fine-tune saves): its config and weights."""
    path = Path(path)
    return (path / "config.json").is_file() and any((path / w).is_file() for w in MODEL_WEIGHTS)


def checkpoints(path: Path) -> list[tuple[int, Path]]:
    """(step, folder) of the run's exportable checkpoints, in step order."""
    found = []
    try:
        entries = list(os.scandir(path))
    except OSError:
        return []
    for entry in entries:
        match = _CHECKPOINT.match(entry.name)
        if match and entry.is_dir(follow_symlinks=False) and (has_adapter(entry.path) or has_model(entry.path)):
            found.append((int(match.group(1)), Path(entry.path)))
    return sorted(found)


def is_exportable(path: Path) -> bool:
    """The run's final adapter or model, or (a run stopped early) any of its checkpoints."""
    return has_adapter(path) or has_model(path) or bool(checkpoints(path))


def read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def model_card(path: Path) -> tuple[dict, str]:
    """(front matter, body) of the run's README.md, the model card the trainer writes."""
    try:
        text = (Path(path) / "README.md").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}, ""
    match = _FRONT_MATTER.match(text)
    if not match:
        return {}, text
    try:
        meta = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        meta = None
    return (meta if isinstance(meta, dict) else {}), text[match.end():]


def base_model_of(path: Path) -> str:
    """training_args.yaml, else adapter_config.json, else the model card's `base_model`."""
    args = read_yaml(Path(path) / "training_args.yaml")
    if args.get("model_name_or_path"):
        return str(args["model_name_or_path"])
    adapter = read_json(Path(path) / "adapter_config.json")
    if adapter.get("base_model_name_or_path"):
        return str(adapter["base_model_name_or_path"])
    meta, _ = model_card(path)
    base = meta.get("base_model")
    if isinstance(base, list):
        base = base[0] if base else ""
    return str(base or "")


def datasets_of(path: Path) -> tuple[list[str], str]:
    """(dataset names, dataset dir as written) the run was trained on, from its arguments or model card."""
    args = read_yaml(Path(path) / "training_args.yaml")
    names = args.get("dataset")
    dataset_dir = str(args.get("dataset_dir") or "")
    if not names:
        meta, body = model_card(path)
        names = meta.get("datasets")
        if not names:
            match = _DATASET_SENTENCE.search(body)
            names = re.split(r",\s*|\s+and\s+", match.group(1)) if match else []
    if isinstance(names, str):
        names = names.split(",")
    return [str(n).strip() for n in names or [] if str(n).strip()], dataset_dir


def tail_text(path: Path, n: int = 4096, whole_lines: bool = False) -> str:
    """The last `n` bytes of a file as text ("" when it cannot be read); with `whole_lines`, from the first
    line start within them when the file is longer."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - n))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return text.split("\n", 1)[-1] if whole_lines and size > n else text


def last_loss(log_path: Path, tail_bytes: int = 65536) -> float | None:
    """The last finite `loss` in trainer_log.jsonl, reading only the file's tail."""
    for line in reversed(tail_text(log_path, tail_bytes).splitlines()):
        try:
            value = json.loads(line).get("loss")
        except (ValueError, AttributeError):
            continue
        if isinstance(value, (int, float)) and math.isfinite(value):
            return float(value)
    return None


@dataclass(frozen=True)
class RunInfo:
    """An exportable run (or one of its checkpoints), as the Export tab and the API see it."""

    name: str            # path relative to saves/, e.g. "Qwen2-0.5B/lora/train_2026-11-28" or ".../checkpoint-500"
    path: str            # absolute path of the folder holding the adapter or model
    base_model: str
    template: str        # from training_args.yaml; "" = infer from the run's tokenizer at export
    finetuning_type: str  # lora, or full/freeze (the folder is the model: nothing to merge)
    finished_at: float   # mtime of the adapter or model weights
    last_loss: float | None
    checkpoints: tuple = ()  # ({"name", "step", "loss"}, …) of a run's exportable checkpoints, in step order
    prior_adapters: tuple = ()  # adapters merged into the base before this one was trained, in order

    @property
    def merges(self) -> bool:
        """A LoRA adapter is merged into its base; a full or freeze fine-tune is converted as it is."""
        return self.finetuning_type not in ("full", "freeze")

    def as_dict(self) -> dict:
        """JSON for the API; `folder`, not `path`, since gradio_client treats `path` keys as files."""
        d = asdict(self)
        d["folder"] = d.pop("path")
        d["checkpoints"] = [dict(c) for c in self.checkpoints]
        d["prior_adapters"] = list(self.prior_adapters)
        return d


def losses_by_step(log_path: Path) -> dict[int, float]:
    out: dict[int, float] = {}
    try:
        lines = Path(log_path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        loss, step = record.get("loss"), record.get("current_steps")
        if isinstance(loss, (int, float)) and math.isfinite(loss) and isinstance(step, int):
            out[step] = float(loss)
    return out


def loss_at(losses: dict[int, float], step: int) -> float | None:
    """The last logged loss at or before `step`."""
    steps = [s for s in losses if s <= step]
    return losses[max(steps)] if steps else None


def prior_adapters(args: dict) -> tuple[str, ...]:
    """The adapters a run was trained on top of, as LLaMA-Factory's `model/adapter.py` applies them: every
    path of `adapter_name_or_path` is merged into the base before training when `create_new_adapter` is
    set; otherwise all but the last are, and the last is resumed (its weights are in the run's adapter)."""
    value = args.get("adapter_name_or_path")
    paths = [str(p).strip() for p in (value.split(",") if isinstance(value, str) else value or []) if str(p).strip()]
    return tuple(paths if args.get("create_new_adapter") else paths[:-1])


def _weights(path: Path) -> Path | None:
    return next((path / w for w in (*ADAPTER_WEIGHTS, *MODEL_WEIGHTS) if (path / w).is_file()), None)


def whole_model_kind(run_dir: Path) -> str:
    """`freeze` or `full` for a run that saved a whole model: the trainer's model card tags the run with its
    fine-tuning type (a CLI run has no training_args.yaml to say it)."""
    meta, _ = model_card(run_dir)
    tags = meta.get("tags") if isinstance(meta.get("tags"), list) else []
    return "freeze" if "freeze" in tags else "full"


def read_run(saves: Path, path: Path) -> RunInfo:
    """A run folder, or a checkpoint inside one (whose arguments, log and card are the run's)."""
    is_checkpoint = bool(_CHECKPOINT.match(path.name) or path.name == "pissa_converted") \
        and any((path.parent / m).is_file() for m in RUN_MARKERS)
    run_dir = path.parent if is_checkpoint else path
    args = read_yaml(run_dir / "training_args.yaml")
    own = has_adapter(path) or has_model(path)
    steps = checkpoints(path) if not is_checkpoint else []
    source = path if own else steps[-1][1]  # a run stopped early: its last checkpoint
    kind = "lora" if has_adapter(source) else str(args.get("finetuning_type") or whole_model_kind(run_dir))
    if kind == "lora" and not has_adapter(source):
        kind = "full"
    losses = losses_by_step(run_dir / "trainer_log.jsonl")
    base = base_model_of(source) or base_model_of(run_dir)
    weights = _weights(source)
    return RunInfo(
        name=str(path.relative_to(saves)),
        path=str(source),
        base_model=base or (str(source) if kind != "lora" else ""),
        template=str(args.get("template") or ""),
        finetuning_type=kind,
        finished_at=weights.stat().st_mtime if weights else 0.0,
        last_loss=loss_at(losses, int(_CHECKPOINT.match(source.name).group(1))) if _CHECKPOINT.match(source.name)
        and source != run_dir else last_loss(run_dir / "trainer_log.jsonl"),
        checkpoints=tuple({"name": str(p.relative_to(saves)), "step": step, "loss": loss_at(losses, step)}
                          for step, p in steps),
        prior_adapters=prior_adapters(args) if kind == "lora" else (),
    )


def discover_runs(data_dir: Path) -> list[RunInfo]:
    """Every exportable run under saves/, newest first."""
    saves = Path(data_dir) / "saves"
    runs = [read_run(saves, p) for p in discover_run_dirs(saves) if is_exportable(p)]
    runs.sort(key=lambda r: r.finished_at, reverse=True)
    return runs


def find_run(data_dir: Path, name: str) -> RunInfo | None:
    """A run by its name under saves/, or one of its checkpoints (`<run>/checkpoint-N`)."""
    saves = Path(data_dir) / "saves"
    try:
        path = confine(saves, name, "Run")
    except InvalidInput:
        raise InvalidInput(f"Run {name!r} is outside {saves}.") from None
    if not path.is_dir() or not is_exportable(path):
        return None
    return read_run(saves.resolve(), path)
