"""Pure builders of the commands the training queue runs in the LLaMA-Factory container, and of a Ray
job's entrypoint. User text travels as one argv slot or a YAML file, never through a shell."""

from __future__ import annotations

import shlex
from pathlib import Path

from ..config import Settings
from ..docker_gateway import ToolCommand
from ..export.commands import HELPER_ENV
from .gpus import APP_FIELDS, GPU_FIELDS, visible_devices

_SCRIPTS = Path(__file__).with_name("scripts")
_COMMON = Path(__file__).parents[1] / "export" / "scripts" / "common.py"
# Before the trainer starts, the job's config goes into a new run folder as training_args.yaml (as LLaMA
# Board writes it: the Runs and Export tabs read the run's template there, "Train again" its arguments). The
# trainer's own user writes it, whoever owns saves/; a folder that has one keeps it (a resumed run).
_RUN_ARGS = 'if [ ! -e "$out/training_args.yaml" ]; then mkdir -p "$out" && cp "$cfg" "$out/training_args.yaml"; fi'
# The trainer's output goes to the job's log file inside the container, so it is kept while the app is
# down; the PID the wrapper reports leads a process group (docker exec starts a session), and a cancel
# signals the whole group: torchrun and its workers too.
_LOCAL = f'log=$1; out=$2; cfg=$3; shift 3; {_RUN_ARGS}; exec "$@" >>"$log" 2>&1'
_RAY = f'out=$1; cfg=$2; shift 2; {_RUN_ARGS}; exec "$@"'


def train_env(gpus: tuple[int, ...]) -> tuple[tuple[str, str], ...]:
    """CUDA_VISIBLE_DEVICES for the job's own GPUs; several GPUs use LLaMA-Factory's torchrun launch."""
    env = [("CUDA_VISIBLE_DEVICES", visible_devices(gpus)), ("PYTHONUNBUFFERED", "1"),
           ("DISABLE_VERSION_CHECK", "1")]
    if len(gpus) > 1:
        env += [("FORCE_TORCHRUN", "1"), ("NPROC_PER_NODE", str(len(gpus)))]
    return tuple(env)


def train_command(settings: Settings, config_path: Path, log_path: Path, output_dir: Path,
                  gpus: tuple[int, ...]) -> ToolCommand:
    """`llamafactory-cli train CONFIG` in the LLaMA-Factory container, its output appended to `log_path`."""
    return ToolCommand(settings.llamafactory_service,
                       ("sh", "-c", _LOCAL, "tunedeck-train", str(log_path), str(output_dir), str(config_path),
                        settings.llamafactory_cli, "train", str(config_path)),
                       workdir=str(settings.data_dir), env=train_env(gpus))


def group_signal_command(settings: Settings, pid: int, signal: str) -> ToolCommand:
    """Signal a trainer's whole process group (the shell's own `kill`: every implementation takes -PGID)."""
    if signal not in ("TERM", "KILL", "INT"):
        raise ValueError(f"unsupported signal {signal!r}")
    return ToolCommand(settings.llamafactory_service, ("sh", "-c", f'kill -{signal} -"$1"', "tunedeck-kill",
                                                       str(int(pid))))


def alive_command(settings: Settings, pid: int) -> ToolCommand:
    """Exit 0 while any process of the trainer's group is alive."""
    return ToolCommand(settings.llamafactory_service, ("sh", "-c", 'kill -0 -"$1" 2>/dev/null', "tunedeck-alive",
                                                       str(int(pid))))


def gpu_query_command(settings: Settings) -> ToolCommand:
    return ToolCommand(settings.llamafactory_service, (
        "nvidia-smi", f"--query-gpu={','.join(GPU_FIELDS)}", "--format=csv,noheader,nounits"))


def gpu_apps_command(settings: Settings) -> ToolCommand:
    return ToolCommand(settings.llamafactory_service, (
        "nvidia-smi", f"--query-compute-apps={','.join(APP_FIELDS)}", "--format=csv,noheader,nounits"))


def helper_command(settings: Settings, script: str, *args: str) -> ToolCommand:
    """A training helper (app/training/scripts/) run by LLaMA-Factory's own Python in its container."""
    source = _COMMON.read_text() + "\n\n" + (_SCRIPTS / script).read_text()
    return ToolCommand(settings.llamafactory_service, (settings.python, "-c", source, script, *args),
                       workdir=str(settings.data_dir), env=HELPER_ENV)


def ray_entrypoint(settings: Settings, config_path: Path, output_dir: Path) -> str:
    """The shell command a Ray job runs on the node it lands on (every node mounts the data dir at the
    same path, so the config's absolute paths hold there)."""
    return shlex.join(["sh", "-c", _RAY, "tunedeck-train", str(output_dir), str(config_path),
                       settings.llamafactory_cli, "train", str(config_path)])


def ray_env(gpus: int, distributed: bool) -> dict[str, str]:
    """Ray sets CUDA_VISIBLE_DEVICES from the job's GPUs; several GPUs on one node use torchrun, a job
    across nodes uses LLaMA-Factory's own Ray mode (USE_RAY=1 with `ray_num_workers`)."""
    env = {"PYTHONUNBUFFERED": "1", "DISABLE_VERSION_CHECK": "1"}
    if distributed:
        env["USE_RAY"] = "1"
    elif gpus > 1:
        env.update({"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": str(gpus)})
    return env
