"""The training queue: persistent jobs (jobs.py) started in order on this host's GPUs (local.py) or handed
to a Ray cluster (ray_runner.py), followed to their end, cancelled, resumed, retried and, when asked,
exported. One scheduler thread starts and ends jobs; the UI and the API only submit, act and read.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Callable

from ..config import Settings
from ..docker_gateway import DockerGateway
from ..export.validation import InvalidInput
from .checks import cluster_check, parser_check
from .gpu_inventory import GpuInventory
from .gpus import allocate, check_request, parse_gpu_request
from .jobs import CANCELLED, FAILED, FINAL, QUEUED, RUNNING, SUCCEEDED, JobStore, TrainJob
from .joblog import LOG_TAIL, JobFiles, error_line
from .local import LocalTrainer, TrainerUnavailable
from .ray_jobs import RayJobs
from .ray_runner import RayRunner
from .request import TrainRequest, build_train_request, resume_config, retry_config

log = logging.getLogger(__name__)
TICK_S = 1.0


class TrainingQueue:
    def __init__(self, settings: Settings, gateway: DockerGateway, store: JobStore | None = None,
                 start_export: Callable[[str, dict], str] | None = None) -> None:
        self.settings = settings
        self.gateway = gateway
        self.data_dir = Path(settings.data_dir)
        self.store = store or JobStore(self.data_dir / "tunedeck.db", self.data_dir)
        self.files = JobFiles(self.data_dir)
        self.local = LocalTrainer(settings, gateway)
        self.inventory = GpuInventory(settings, gateway)
        self.ray = RayRunner(settings, RayJobs(settings.ray_address), self.store, self.files, self._end) \
            if settings.ray_address else None
        self.start_export = start_export
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._stopping: set[str] = set()  # local jobs being stopped (one stop each)

    # -- life ----------------------------------------------------------------------------------------
    def start(self) -> "TrainingQueue":
        threading.Thread(target=self._loop, name="training-queue", daemon=True).start()
        return self

    def close(self) -> None:
        """Stop scheduling; trainers keep running (a restarted app re-attaches to them)."""
        self._stop.set()
        self._wake.set()
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
            check_request(request.gpus, [g.index for g in self.inventory.gpus()[0]])
        else:
            cluster_check(self.ray.ray, request)
        parser_check(self.settings, self.gateway, request.config)
        return request

    def submit(self, yaml_text: object, **options) -> TrainJob:
        request = self.check(yaml_text, **options)
        job = self.store.add(request.name, request.backend, request.stored(), request.priority)
        log.info("training job %s queued: %s (%s, GPUs %s)", job.id, job.name, job.backend, request.gpus.text())
        self.wake()
        return job

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
        if job.state not in FINAL:
            raise InvalidInput(f"Job {job_id} is {job.state}: only an ended job can be {verb}.")
        if job.output_dir in self.store.active_outputs():
            raise InvalidInput(f"Another job is training into {job.name} right now.")
        return job

    # -- what the UI shows --------------------------------------------------------------------------
    def jobs(self, limit: int = 200) -> list[TrainJob]:
        return self.store.list(limit=limit)

    def log_text(self, job_id: str, tail: int = LOG_TAIL) -> str:
        return self.files.text(job_id, tail)

    # -- scheduling ---------------------------------------------------------------------------------
    def tick(self) -> None:
        for job in self.store.running():
            if job.backend != "ray":
                self._reconcile_local(job)
            elif self.ray is not None:
                self.ray.reconcile(job)
            else:
                self._end(job, FAILED, "TUNEDECK_RAY_ADDRESS is no longer set: the app cannot follow this Ray job.")
        self._start_local()
        if self.ray is not None:
            self.ray.submit_queued()
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
            error = error_line(self.files.text(job.id, 16 * 1024))
            why = "its container stopped" if code is None else f"exit code {code}"
            self._end(job, FAILED, f"The trainer failed ({why})" + (f": {error[:400]}" if error else "."))

    def _stop_local(self, job: TrainJob) -> None:
        try:
            if not self.local.cancel(job.handle):
                log.warning("training job %s: the trainer survived SIGKILL", job.id)
        except Exception:  # noqa: BLE001 - logged; the next pass tries again
            log.exception("training job %s: stopping the trainer failed", job.id)
            self._stopping.discard(job.id)
        self.wake()

    def _end(self, job: TrainJob, state: str, error: str) -> None:
        if self.store.transition(job.id, (RUNNING,), state=state, error=error, cancel=False):
            self.files.append(job.id, f"\n[tunedeck] attempt {job.attempt} {state}"
                              + (f": {error}" if error else "") + "\n")
            log.info("training job %s %s%s", job.id, state, f": {error}" if error else "")

    def _start_local(self) -> None:
        queued = [j for j in self.store.queued() if j.backend == "local"]
        if not queued:
            return
        inventory = [g.index for g in self.inventory.gpus()[0]]
        running = [j for j in self.store.running() if j.backend == "local"]
        busy = {g for j in running for g in j.gpus} | self.inventory.occupied()
        for job in queued:  # strictly in order: a job that cannot start yet holds the ones behind it
            gpus = allocate(parse_gpu_request(job.request.get("gpus", "all")), inventory, busy, len(running))
            if gpus is None:
                return
            if not self.store.transition(job.id, (QUEUED,), state=RUNNING, started=time.time(), gpus=list(gpus)):
                continue
            job = self.store.get(job.id)
            try:
                config_path = self.files.prepare(job, f"GPUs {list(gpus)}" if gpus else "the CPU")
                handle = self.local.start(config_path, self.files.log_path(job.id), Path(job.output_dir), gpus,
                                          on_exit=self.wake)
            except (TrainerUnavailable, OSError) as exc:
                self._end(job, FAILED, str(exc))
                continue
            self.store.update(job.id, handle={k: v for k, v in handle.items() if k != "early"})
            running.append(job)
            busy.update(gpus)
            log.info("training job %s started on %s", job.id, f"GPUs {list(gpus)}" if gpus else "the CPU")

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
            self.files.append(job.id, f"[tunedeck] export {export_id} started\n")
