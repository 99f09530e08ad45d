"""The training queue: persistent jobs (jobs.py) started in order on this host's GPUs (local.py) or handed
to a Ray cluster (ray_jobs.py), followed to their end, cancelled, resumed, retried and, when asked,
exported. One scheduler thread starts and ends jobs; the UI and the API only submit and ask.

Jobs are files too: `<data>/training/<job>/config.yaml` (what the trainer reads) and `train.log` (its
output). TuneDeck also writes the arguments into the run as `training_args.yaml`, as LLaMA Board does,
so the Runs and Export tabs know the run's template and "Train again" works on it.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Callable

from ..config import Settings
from ..docker_gateway import DockerGateway, EngineUnavailable, ServiceUnavailable
from ..export.validation import InvalidInput
from .commands import gpu_apps_command, gpu_query_command, helper_command, ray_entrypoint, ray_env
from .gpus import Gpu, GpuRequest, allocate, check_request, parse_gpu_request, parse_gpus, parse_processes
from .jobs import CANCELLED, FAILED, FINAL, QUEUED, RUNNING, SUCCEEDED, JobStore, TrainJob
from .local import LocalTrainer, TrainerUnavailable, run_to_end
from .ray_jobs import TERMINAL, RayJobs, RayUnavailable
from .request import (
    TrainRequest,
    build_train_request,
    config_yaml,
    resume_config,
    retry_config,
)

log = logging.getLogger(__name__)
RESULT = "@@tunedeck-result "
TICK_S = 1.0
GPU_CACHE_S = 15.0
LOG_TAIL = 64 * 1024
_ERROR_LINE = re.compile(r"^(\w+(Error|Exception)|RuntimeError|ValueError|AssertionError|KeyError)\b.*|.*\b(Error|error):")


class TrainingQueue:
    def __init__(self, settings: Settings, gateway: DockerGateway, store: JobStore | None = None,
                 start_export: Callable[[str, dict], str] | None = None) -> None:
        self.settings = settings
        self.gateway = gateway
        self.data_dir = Path(settings.data_dir)
        self.jobs_dir = self.data_dir / "training"
        self.store = store or JobStore(self.data_dir / "tunedeck.db")
        self.local = LocalTrainer(settings, gateway)
        self.ray = RayJobs(settings.ray_address) if settings.ray_address else None
        self.start_export = start_export
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopping: set[str] = set()          # running jobs being stopped (one stop each)
        self._followers: dict[str, threading.Event] = {}  # Ray jobs whose log is being followed
        self._ray_log_start: dict[str, int] = {}         # where the followed Ray output starts in train.log
        self._gpu_cache: tuple[float, list[Gpu], str] = (0.0, [], "")
        self._lock = threading.Lock()

    # -- life ----------------------------------------------------------------------------------------
    def start(self) -> "TrainingQueue":
        self._thread = threading.Thread(target=self._loop, name="training-queue", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop scheduling; trainers keep running (a restarted app re-attaches to them)."""
        self._stop.set()
        self._wake.set()
        for stop in list(self._followers.values()):
            stop.set()
        if self.ray:
            self.ray.close()

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the loop must go on; the failure is logged with its traceback
                log.exception("training queue: a scheduling pass failed")
            self._wake.wait(TICK_S)
            self._wake.clear()

    # -- submit and act ----------------------------------------------------------------------------------
    def check(self, yaml_text: object, *, gpus: object = "all", backend: object = "local", priority: object = 0,
              cpus: object = None, export: object = None, source: str = "yaml") -> TrainRequest:
        """TuneDeck's checks, then LLaMA-Factory's own parser in its container; one sentence per problem."""
        request = build_train_request(self.data_dir, self.settings.llamafactory_data, yaml_text, gpus=gpus,
                                      backend=backend, priority=priority, cpus=cpus, export=export, source=source,
                                      ray_available=self.ray is not None, taken=self.store.active_outputs())
        if request.backend == "local":
            check_request(request.gpus, [g.index for g in self.gpus()[0]])
        else:
            self._check_ray(request)
        self._parser_check(request.config)
        return request

    def submit(self, yaml_text: object, **options) -> TrainJob:
        request = self.check(yaml_text, **options)
        job = self.store.add(request.name, request.backend, request.stored(), request.priority)
        log.info("training job %s queued: %s (%s, GPUs %s)", job.id, job.name, job.backend, request.gpus.text())
        self.wake()
        return job

    def _parser_check(self, config: dict) -> None:
        import json

        try:
            code, lines = run_to_end(self.gateway, helper_command(self.settings, "check_args.py", json.dumps(config)),
                                     timeout=180)
        except (ServiceUnavailable, EngineUnavailable) as exc:
            raise InvalidInput(f"LLaMA-Factory cannot check the config: {exc}") from None
        answers = [ln[len(RESULT):] for ln in lines if ln.startswith(RESULT)]
        if not answers:
            last = next((ln for ln in reversed(lines) if ln.strip()), f"exit code {code}")
            raise InvalidInput(f"LLaMA-Factory's argument check did not answer: {last[:300]}")
        result = json.loads(answers[-1])
        if not result.get("ok"):
            raise InvalidInput(f"LLaMA-Factory refuses this config: {result.get('error')}")

    def _check_ray(self, request: TrainRequest) -> None:
        """Refuse what the cluster can never run, instead of a job that waits forever."""
        try:
            totals = self.ray.totals()
        except RayUnavailable as exc:
            raise InvalidInput(str(exc)) from None
        gpus_total, cpus_total = totals.get("GPU", 0.0), totals.get("CPU", 0.0)
        workers = int(request.config.get("ray_num_workers") or 1)
        if workers > 1:
            # LLaMA-Factory 0.9.5 (train/trainer_utils.py get_placement_group) reserves {"CPU": 10, "GPU": 1}
            # for every GPU of the cluster; on CPUs only it asks 10 CPUs for each CPU and never starts
            if gpus_total < workers:
                raise InvalidInput(f"ray_num_workers {workers} needs {workers} GPUs on the cluster; it has "
                                   f"{gpus_total:g} (LLaMA-Factory's Ray mode trains one worker per GPU).")
            if cpus_total < 10 * gpus_total:
                raise InvalidInput(f"LLaMA-Factory's Ray mode reserves 10 CPUs per GPU of the cluster: "
                                   f"{gpus_total:g} GPUs need {10 * gpus_total:g} CPUs, the cluster has "
                                   f"{cpus_total:g}.")
        elif request.gpus.count > gpus_total:
            raise InvalidInput(f"The job asks for {request.gpus.count} GPUs; the Ray cluster has {gpus_total:g}.")
        if request.cpus and request.cpus > cpus_total:
            raise InvalidInput(f"The job asks for {request.cpus:g} CPUs; the Ray cluster has {cpus_total:g}.")

    def cancel(self, job_id: str) -> TrainJob:
        job = self._job(job_id)
        if job.state == QUEUED and self.store.transition(job.id, (QUEUED,), state=CANCELLED,
                                                         error="Cancelled before it started."):
            return self._job(job_id)
        if job.state != RUNNING:
            raise InvalidInput(f"Job {job_id} is {job.state}: only queued and running jobs can be cancelled.")
        self.store.update(job.id, cancel=True)
        self.wake()
        return self._job(job_id)

    def resume(self, job_id: str) -> TrainJob:
        """Queue the job again, from its run's last checkpoint."""
        job = self._ended(job_id, "resumed")
        config, last = resume_config(job.request["config"], Path(job.output_dir))
        self.store.requeue(job.id, attempt=job.attempt + 1, resume_from=str(last),
                           request={**job.request, "config": config})
        self.wake()
        return self._job(job_id)

    def retry(self, job_id: str) -> TrainJob:
        """Queue the job again from the start (its run folder is overwritten)."""
        job = self._ended(job_id, "retried")
        self.store.requeue(job.id, attempt=job.attempt + 1, resume_from="",
                           request={**job.request, "config": retry_config(job.request["config"])})
        self.wake()
        return self._job(job_id)

    def move(self, job_id: str, delta: int) -> TrainJob:
        job = self._job(job_id)
        if job.state != QUEUED:
            raise InvalidInput(f"Job {job_id} is {job.state}: only queued jobs can be moved.")
        if not self.store.move(job_id, delta):
            raise InvalidInput(f"Job {job_id} is already {'first' if delta < 0 else 'last'} in the queue.")
        return self._job(job_id)

    def _job(self, job_id: str) -> TrainJob:
        job = self.store.get(str(job_id or "").strip())
        if job is None:
            raise InvalidInput(f"There is no training job {str(job_id)[:40]!r}.")
        return job

    def _ended(self, job_id: str, verb: str) -> TrainJob:
        job = self._job(job_id)
        if job.state not in (FAILED, CANCELLED, SUCCEEDED):
            raise InvalidInput(f"Job {job_id} is {job.state}: only an ended job can be {verb}.")
        if job.output_dir in self.store.active_outputs():
            raise InvalidInput(f"Another job is training into {job.name} right now.")
        return job

    # -- what the UI shows --------------------------------------------------------------------------
    def jobs(self, limit: int = 200) -> list[TrainJob]:
        return self.store.list(limit=limit)

    def log_text(self, job_id: str, tail: int = LOG_TAIL) -> str:
        path = self.jobs_dir / job_id / "train.log"
        try:
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - tail))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        if size > tail:
            text = text.split("\n", 1)[-1]
        return _collapse_redraws(text)

    def gpus(self, max_age: float = GPU_CACHE_S) -> tuple[list[Gpu], str]:
        """(GPUs, note) of this host, as `nvidia-smi` sees them in the LLaMA-Factory container."""
        with self._lock:
            at, gpus, note = self._gpu_cache
            if time.monotonic() - at < max_age:
                return gpus, note
        try:
            code, lines = run_to_end(self.gateway, gpu_query_command(self.settings), timeout=20)
            if code == 0:
                gpus, note = parse_gpus("\n".join(lines)), ""
            else:
                gpus = []
                note = ("No GPU: nvidia-smi is not available in the LLaMA-Factory container, so trainings run on "
                        "the CPU." if code in (126, 127) else f"nvidia-smi failed (exit code {code}): "
                        + (lines[-1][:200] if lines else ""))
        except (ServiceUnavailable, EngineUnavailable) as exc:
            gpus, note = [], f"GPUs unknown: {exc}"
        with self._lock:
            self._gpu_cache = (time.monotonic(), gpus, note)
        return gpus, note

    def gpu_processes(self) -> list[dict]:
        try:
            code, lines = run_to_end(self.gateway, gpu_apps_command(self.settings), timeout=20)
        except (ServiceUnavailable, EngineUnavailable):
            return []
        return parse_processes("\n".join(lines)) if code == 0 else []

    # -- scheduling ---------------------------------------------------------------------------------
    def tick(self) -> None:
        for job in self.store.running():
            if job.backend == "ray":
                self._reconcile_ray(job)
            else:
                self._reconcile_local(job)
        self._start_local()
        self._submit_ray()
        self._exports()

    def _reconcile_local(self, job: TrainJob) -> None:
        state, code = self.local.state(job.handle)
        if state == "running":
            if job.cancel and job.id not in self._stopping:
                self._stopping.add(job.id)
                threading.Thread(target=self._stop_local, args=(job,), name=f"stop-{job.id}", daemon=True).start()
            return
        if state == "unknown":
            return
        self._stopping.discard(job.id)
        if code == 0:  # finished, even if a cancel came too late to stop it
            self._end(job, SUCCEEDED, "")
        elif job.cancel:
            self._end(job, CANCELLED, "Cancelled while training.")
        else:
            self._end(job, FAILED, self._failure(job, code))

    def _stop_local(self, job: TrainJob) -> None:
        try:
            stopped = self.local.cancel(job.handle)
            if not stopped:
                log.warning("training job %s: the trainer survived SIGKILL", job.id)
        except Exception:  # noqa: BLE001 - logged; the next pass tries again
            log.exception("training job %s: stopping the trainer failed", job.id)
            self._stopping.discard(job.id)
        self.wake()

    def _failure(self, job: TrainJob, code: int | None) -> str:
        """One sentence from the trainer's log: its last error line, else the exit code."""
        tail = self.log_text(job.id, 16 * 1024).splitlines()
        error = next((ln.strip() for ln in reversed(tail) if _ERROR_LINE.match(ln.strip())), "")
        why = "its container stopped" if code is None else f"exit code {code}"
        return f"The trainer failed ({why})" + (f": {error[:400]}" if error else ".")

    def _end(self, job: TrainJob, state: str, error: str) -> None:
        if self.store.transition(job.id, (RUNNING,), state=state, error=error, cancel=False):
            self._append_log(job.id, f"\n[tunedeck] attempt {job.attempt} {state}" + (f": {error}" if error else "")
                             + "\n")
            log.info("training job %s %s%s", job.id, state, f": {error}" if error else "")

    def _start_local(self) -> None:
        queued = [j for j in self.store.queued() if j.backend == "local"]
        if not queued:
            return
        inventory = [g.index for g in self.gpus()[0]]
        running = [j for j in self.store.running() if j.backend == "local"]
        busy = {g for j in running for g in j.gpus}
        for job in queued:  # strictly in order: a job that cannot start yet holds the ones behind it
            request = parse_gpu_request(job.request.get("gpus", "all"))
            gpus = allocate(request, inventory, busy, len(running))
            if gpus is None:
                return
            if not self.store.transition(job.id, (QUEUED,), state=RUNNING, started=time.time(), gpus=list(gpus)):
                continue
            job = self.store.get(job.id)
            try:
                config_path, log_path = self._prepare(job)
                handle = self.local.start(config_path, log_path, gpus, on_exit=self.wake)
            except (TrainerUnavailable, OSError) as exc:
                self._end(job, FAILED, str(exc))
                continue
            self.store.update(job.id, handle={k: v for k, v in handle.items() if k != "early"})
            running.append(job)
            busy.update(gpus)
            log.info("training job %s started on %s", job.id, f"GPUs {list(gpus)}" if gpus else "the CPU")

    def _prepare(self, job: TrainJob) -> tuple[Path, Path]:
        """The attempt's config file, its log, and the run's training_args.yaml (as LLaMA Board writes)."""
        folder = self.jobs_dir / job.id
        folder.mkdir(parents=True, exist_ok=True)
        if folder.is_symlink() or self.jobs_dir.is_symlink():
            raise OSError(f"{folder} is a symbolic link; TuneDeck does not write through links")
        config = job.request["config"]
        config_path = folder / f"config-{job.attempt}.yaml"
        _write(config_path, config_yaml(config))
        self._write_run_args(Path(job.output_dir), config)
        log_path = folder / "train.log"
        how = f"resuming from {Path(job.resume_from).name}" if job.resume_from else "from the start"
        where = f"GPUs {list(job.gpus)}" if job.gpus else ("the Ray cluster" if job.backend == "ray" else "the CPU")
        self._append_log(job.id, f"[tunedeck] attempt {job.attempt}, {how}, on {where}\n")
        return config_path, log_path

    def _write_run_args(self, out: Path, config: dict) -> None:
        """training_args.yaml in a new run folder, as LLaMA Board writes it (a folder the trainer already wrote
        keeps its own: it may belong to the tool containers' user, and the job's config is in its folder)."""
        try:
            out.mkdir(parents=True, exist_ok=True)
            if not (out / "training_args.yaml").exists():
                _write(out / "training_args.yaml", config_yaml({k: v for k, v in config.items()
                                                                if k != "resume_from_checkpoint"}))
        except OSError as exc:
            log.warning("cannot write training_args.yaml into %s: %s", out, exc)

    def _append_log(self, job_id: str, text: str) -> None:
        folder = self.jobs_dir / job_id
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / "train.log", "a", encoding="utf-8") as f:
                f.write(text)
        except OSError as exc:
            log.warning("training job %s: cannot write its log: %s", job_id, exc)

    # -- Ray ----------------------------------------------------------------------------------------
    def _submit_ray(self) -> None:
        """Every queued Ray job goes to the cluster at once, in queue order: the cluster does the waiting."""
        if self.ray is None:
            return
        for job in [j for j in self.store.queued() if j.backend == "ray"]:
            if not self.store.transition(job.id, (QUEUED,), state=RUNNING, started=time.time()):
                continue
            job = self.store.get(job.id)
            sid = f"tunedeck-{job.id}-{job.attempt}"
            try:
                config_path, _ = self._prepare(job)
                gpus = parse_gpu_request(job.request.get("gpus", "0")).count
                distributed = int(job.request["config"].get("ray_num_workers") or 1) > 1
                self.ray.submit(sid, ray_entrypoint(self.settings, config_path), env=ray_env(gpus, distributed),
                                num_cpus=job.request.get("cpus") or 1, num_gpus=0 if distributed else gpus,
                                metadata={"tunedeck_job": job.id, "run": job.name})
            except (RayUnavailable, OSError) as exc:
                self._end(job, FAILED, str(exc))
                continue
            self.store.update(job.id, handle={"submission_id": sid, "ray_status": "PENDING"})
            log.info("training job %s submitted to Ray as %s", job.id, sid)

    def _reconcile_ray(self, job: TrainJob) -> None:
        sid = job.handle.get("submission_id")
        if not sid or self.ray is None:
            self._end(job, FAILED, "The job has no Ray submission (the app stopped while submitting it).")
            return
        if job.cancel and job.id not in self._stopping:
            self._stopping.add(job.id)
            try:
                self.ray.stop(sid)
            except RayUnavailable as exc:
                log.warning("training job %s: stopping %s failed: %s", job.id, sid, exc)
                self._stopping.discard(job.id)
        try:
            details = self.ray.status(sid)
        except RayUnavailable as exc:
            log.info("training job %s: no Ray status now: %s", job.id, exc)
            return
        status = str(details.get("status") or "")
        if status != job.handle.get("ray_status"):
            driver = details.get("driver_info") or {}
            self.store.update(job.id, handle={**job.handle, "ray_status": status,
                                              "node": driver.get("node_ip_address") or "",
                                              "node_id": details.get("driver_node_id") or driver.get("node_id") or ""})
        if status == "RUNNING":
            self._follow_ray(job.id, sid)
        if status in TERMINAL:
            follow = self._followers.pop(job.id, None)
            if follow:
                follow.set()
            self._final_ray_log(job.id, sid)
            self._stopping.discard(job.id)
            if status == "SUCCEEDED":
                self._end(job, SUCCEEDED, "")
            elif status == "STOPPED" or job.cancel:
                self._end(job, CANCELLED, "Cancelled while training." if job.cancel else "Stopped on the Ray cluster.")
            else:
                self._end(job, FAILED, self._failure(job, details.get("driver_exit_code"))
                          .replace("The trainer failed", f"The Ray job failed ({details.get('message', '')[:200]})", 1))

    def _follow_ray(self, job_id: str, sid: str) -> None:
        if job_id in self._followers:
            return
        stop = threading.Event()
        self._followers[job_id] = stop
        start_at = self._log_size(job_id)

        def run() -> None:
            path = self.jobs_dir / job_id / "train.log"
            try:
                with open(path, "a", encoding="utf-8") as f:
                    def write(text: str) -> None:
                        f.write(text)
                        f.flush()
                    self.ray.follow_logs(sid, write, stop)
            except (RayUnavailable, OSError) as exc:
                log.info("training job %s: following the Ray log stopped: %s", job_id, exc)
            except Exception:  # noqa: BLE001 - logged; the final log is fetched when the job ends
                log.exception("training job %s: following the Ray log failed", job_id)

        self._ray_log_start[job_id] = start_at
        threading.Thread(target=run, name=f"ray-log-{job_id}", daemon=True).start()

    def _log_size(self, job_id: str) -> int:
        try:
            return (self.jobs_dir / job_id / "train.log").stat().st_size
        except OSError:
            return 0

    def _final_ray_log(self, job_id: str, sid: str) -> None:
        """The complete driver output replaces what was followed (a stream can miss the last lines)."""
        try:
            text = self.ray.logs(sid)
        except RayUnavailable as exc:
            log.info("training job %s: no final Ray log: %s", job_id, exc)
            return
        path = self.jobs_dir / job_id / "train.log"
        start = self._ray_log_start.pop(job_id, None)
        if start is None:
            start = self._log_size(job_id)
        try:
            with open(path, "r+b" if path.exists() else "wb") as f:
                f.seek(start)
                f.truncate()
                f.write(text.encode("utf-8", "replace"))
        except OSError as exc:
            log.warning("training job %s: cannot write its log: %s", job_id, exc)

    # -- export when done ---------------------------------------------------------------------------
    def _exports(self) -> None:
        if self.start_export is None:
            return
        for job in self.store.list((SUCCEEDED,), limit=20):
            if not job.request.get("export") or job.export_job:
                continue
            try:
                export_id = self.start_export(job.name, job.request["export"])
            except InvalidInput as exc:
                self.store.update(job.id, export_job=f"!{exc}")
                continue
            except Exception as exc:  # noqa: BLE001 - an export already running: try again on the next pass
                log.info("training job %s: export waits: %s", job.id, exc)
                return
            self.store.update(job.id, export_job=export_id)
            self._append_log(job.id, f"[tunedeck] export {export_id} started\n")


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _collapse_redraws(text: str) -> str:
    """A progress bar redrawn with `\\r` shows as its newest state only."""
    return "\n".join(line.rsplit("\r", 1)[-1] if "\r" in line.rstrip("\r") else line.rstrip("\r")
                     for line in text.split("\n"))


__all__ = ["TrainingQueue", "FINAL", "GpuRequest"]
