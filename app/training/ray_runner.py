"""Queued jobs handed to a Ray cluster (ray_jobs.py): submitted at once with their GPUs and CPUs (the cluster
does the waiting), their status and output followed into the job's log, stopped on cancel."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Callable

from ..config import Settings
from .commands import ray_entrypoint, ray_env
from .gpus import parse_gpu_request
from .jobs import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, JobStore, TrainJob
from .joblog import JobFiles, error_line
from .ray_jobs import TERMINAL, RayJobs, RayUnavailable

log = logging.getLogger(__name__)


class RayRunner:
    def __init__(self, settings: Settings, ray: RayJobs, store: JobStore, files: JobFiles,
                 end: Callable[[TrainJob, str, str], None]) -> None:
        self.settings = settings
        self.ray = ray
        self.store = store
        self.files = files
        self._end = end
        self._stopping: set[str] = set()               # jobs whose stop was sent (once each)
        self._followers: dict[str, tuple[threading.Event, threading.Thread]] = {}  # output being followed

    def submit_queued(self) -> None:
        """Every queued Ray job goes to the cluster, in queue order."""
        for job in [j for j in self.store.queued() if j.backend == "ray"]:
            if not self.store.transition(job.id, (QUEUED,), state=RUNNING, started=time.time()):
                continue
            job = self.store.get(job.id)
            sid = self.submission_id(job)
            try:
                config_path = self.files.prepare(job, "the Ray cluster")
                gpus = parse_gpu_request(job.request.get("gpus", "0")).count
                distributed = int(job.request["config"].get("ray_num_workers") or 1) > 1
                self.ray.submit(sid, ray_entrypoint(self.settings, config_path, Path(job.output_dir)),
                                env=ray_env(gpus, distributed),
                                num_cpus=job.request.get("cpus") or 1, num_gpus=0 if distributed else gpus,
                                metadata={"tunedeck_job": job.id, "run": job.name})
            except (RayUnavailable, OSError) as exc:
                self._end(job, FAILED, str(exc))
                continue
            # where the driver's output starts in train.log: a restarted app follows it again from there
            self.store.update(job.id, handle={"submission_id": sid, "ray_status": "PENDING",
                                              "log_offset": self.files.size(job.id)})
            log.info("training job %s submitted to Ray as %s", job.id, sid)

    @staticmethod
    def submission_id(job: TrainJob) -> str:
        """Derived from the job and its attempt: an app that stopped right after submitting finds it again."""
        return f"tunedeck-{job.id}-{job.attempt}"

    def reconcile(self, job: TrainJob) -> None:
        sid = job.handle.get("submission_id")
        if not sid:  # the app stopped between submitting and recording it: ask the cluster
            sid = self.submission_id(job)
            try:
                self.ray.status(sid)
            except RayUnavailable:
                self._end(job, FAILED, "The job never reached the Ray cluster (the app stopped while submitting it).")
                return
            self.store.update(job.id, handle={"submission_id": sid, "ray_status": "",
                                              "log_offset": self.files.size(job.id)})
            job = self.store.get(job.id)
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
        offset = int(job.handle.get("log_offset", self.files.size(job.id)))
        if status == "RUNNING":
            self._follow(job.id, sid, offset)
        if status not in TERMINAL:
            return
        follower = self._followers.pop(job.id, None)
        if follower:  # stopped before the complete output replaces what it wrote
            follower[0].set()
            follower[1].join(15)
        self._final_log(job.id, sid, offset)
        self._stopping.discard(job.id)
        if status == "SUCCEEDED":
            self._end(job, SUCCEEDED, "")
        elif status == "STOPPED" or job.cancel:
            self._end(job, CANCELLED, "Cancelled while training." if job.cancel else "Stopped on the Ray cluster.")
        else:
            code = details.get("driver_exit_code")
            error = error_line(self.files.text(job.id, 16 * 1024))
            why = f"exit code {code}" if code is not None else str(details.get("message") or "")[:200]
            self._end(job, FAILED, f"The Ray job failed ({why})" + (f": {error[:400]}" if error else "."))

    def _follow(self, job_id: str, sid: str, offset: int) -> None:
        if job_id in self._followers:
            return
        stop = threading.Event()
        self.files.replace_from(job_id, offset, "")  # what an earlier app process followed is read again

        def run() -> None:
            try:
                with self.files.appender(job_id) as f:
                    def write(text: str) -> None:
                        f.write(text)
                        f.flush()

                    self.ray.follow_logs(sid, write, stop)
            except (RayUnavailable, OSError) as exc:
                log.info("training job %s: following the Ray log stopped: %s", job_id, exc)
            except Exception:  # noqa: BLE001 - logged; the complete log is fetched when the job ends
                log.exception("training job %s: following the Ray log failed", job_id)

        thread = threading.Thread(target=run, name=f"ray-log-{job_id}", daemon=True)
        self._followers[job_id] = (stop, thread)
        thread.start()

    def _final_log(self, job_id: str, sid: str, offset: int) -> None:
        """The complete driver output replaces what was followed (a follower can miss the last lines)."""
        try:
            text = self.ray.logs(sid)
        except RayUnavailable as exc:
            log.info("training job %s: no final Ray log: %s", job_id, exc)
            return
        self.files.replace_from(job_id, offset, text)

    def close(self) -> None:
        for stop, _ in list(self._followers.values()):
            stop.set()
        self.ray.close()
