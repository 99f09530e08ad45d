"""Runs an export plan: stages in tool containers and against Ollama, one job per data directory.

The UI and the API only start, follow and cancel jobs here; the job runs in its own
thread so a closed browser tab never leaves a tool half-run without cleanup.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..config import Settings
from ..docker_gateway import DockerGateway, EngineUnavailable, ExecHandle, ServiceUnavailable, ToolCommand
from ..ollama import OllamaClient, OllamaError, file_digest
from . import commands
from .history import History
from .modelfile import create_payload, parse_modelfile
from .plan import STAGES, ExportPlan, ExportRequest, make_plan, partial
from .preflight import base_model_problems, disk_problem

MAX_LOG_LINES = 20_000


class ExportBusy(Exception):
    """Another export is running on this data directory."""


class StageFailed(Exception):
    pass


class Cancelled(Exception):
    pass


@dataclass
class ExportJob:
    id: str
    request: ExportRequest
    plan: ExportPlan
    status: str = "running"
    stage: str = "preflight"
    stage_times: dict = field(default_factory=dict)
    stage_status: dict = field(default_factory=dict)
    progress: float = 0.0
    lines: list = field(default_factory=list)
    result: dict = field(default_factory=dict)
    error: str = ""
    started: float = field(default_factory=time.time)
    cancel_event: threading.Event = field(default_factory=threading.Event)
    done_event: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _exec: ExecHandle | None = None
    _partials: list = field(default_factory=list)

    # -- log --------------------------------------------------------------------------
    def emit(self, text: str, stage: str | None = None) -> None:
        prefix = f"[{stage or self.stage}] "
        with self._lock:
            for line in str(text).splitlines() or [""]:
                self.lines.append(prefix + line)
            if len(self.lines) > MAX_LOG_LINES:
                del self.lines[: len(self.lines) - MAX_LOG_LINES]

    def log_text(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def line_count(self) -> int:
        with self._lock:
            return len(self.lines)

    @property
    def finished(self) -> bool:
        return self.done_event.is_set()

    def summary(self) -> dict:
        return {
            "job_id": self.id, "status": self.status, "stage": self.stage, "progress": round(self.progress, 3),
            "error": self.error, "stages": {s: self.stage_status.get(s, "pending") for s in STAGES},
            "stage_seconds": {s: round(self.stage_times[s], 2) for s in STAGES if s in self.stage_times},
            "result": self.result,
        }


class ExportManager:
    """Starts export jobs, one at a time per data directory, and records them in History."""

    def __init__(self, settings: Settings, gateway: DockerGateway, ollama: OllamaClient,
                 history: History | None = None) -> None:
        self.settings = settings
        self.gateway = gateway
        self.ollama = ollama
        self.data_dir = Path(settings.data_dir)
        self.exports_dir = self.data_dir / "exports"
        self.history = history or History(self.data_dir / "tunedeck.db")
        self._lock = threading.Lock()
        self._current: ExportJob | None = None
        self._lock_fd: int | None = None
        self.recover()

    # -- lifecycle ----------------------------------------------------------------------
    def _try_lock(self) -> bool:
        self.exports_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.exports_dir / ".export.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def recover(self) -> None:
        """After a crash: mark running jobs interrupted and delete half-written outputs."""
        if not self._try_lock():
            return  # another process is exporting right now
        try:
            for job in self.history.running():
                tool = (job["result"] or {}).get("tool") or {}
                if tool.get("container") and tool.get("pid"):
                    try:
                        self.gateway.kill_tool(tool["container"], int(tool["pid"]))
                    except Exception:  # noqa: BLE001 - the container may be gone already
                        pass
            self.history.mark_interrupted()
            for p in self.exports_dir.glob("*/*.partial"):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        finally:
            self._unlock()

    @property
    def current(self) -> ExportJob | None:
        return self._current

    def start(self, request: ExportRequest) -> ExportJob:
        with self._lock:
            if self._current is not None and not self._current.finished:
                raise ExportBusy(
                    f"An export is already running (job {self._current.id}, stage {self._current.stage}); "
                    "wait for it to finish or cancel it."
                )
            if not self._try_lock():
                raise ExportBusy("Another TuneDeck process is exporting on this data directory; try again later.")
            try:
                job = ExportJob(uuid.uuid4().hex[:12], request, make_plan(self.data_dir, request))
                self.history.add(job.id, request.run.name, request.summary())
            except BaseException:
                self._unlock()
                raise
            self._current = job
        threading.Thread(target=self._run, args=(job,), name=f"export-{job.id}", daemon=True).start()
        return job

    def cancel(self, job_id: str | None = None) -> bool:
        job = self._current
        if job is None or job.finished or (job_id and job.id != job_id):
            return False
        job.cancel_event.set()
        job.emit("cancel requested", job.stage)
        handle = job._exec
        if handle is not None:
            threading.Thread(target=handle.kill, daemon=True).start()
        return True

    # -- the job ------------------------------------------------------------------------
    def _run(self, job: ExportJob) -> None:
        plan = job.plan
        try:
            skip = self._stage(job, "preflight", 0.0, lambda: self._preflight(job))
            self._stage(job, "merge", 0.05, lambda: self._merge(job, skip))
            self._stage(job, "convert", 0.35, lambda: self._convert(job, skip))
            self._stage(job, "quantize", 0.55, lambda: self._quantize(job, skip))
            self._stage(job, "load", 0.75, lambda: self._load(job, skip))
            self._stage(job, "verify", 0.9, lambda: self._verify(job))
            job.status = "succeeded"
            job.progress = 1.0
            job.emit(f"export finished in {time.time() - job.started:.1f} s", "done")
        except Cancelled:
            job.status = "cancelled"
            job.error = f"Cancelled during {job.stage}."
            job.emit(job.error, job.stage)
        except (StageFailed, OllamaError, EngineUnavailable, ServiceUnavailable) as exc:
            job.status = "failed"
            job.error = f"{job.stage} failed: {exc}"
            job.emit(job.error, job.stage)
        except Exception as exc:  # noqa: BLE001 - reported, never swallowed
            job.status = "failed"
            job.error = f"{job.stage} failed unexpectedly: {type(exc).__name__}: {exc}"
            job.emit(job.error, job.stage)
        finally:
            if job.status != "succeeded":
                job.stage_status[job.stage] = job.status
                self._remove_partials(job)
            job.result.setdefault("workdir", str(plan.workdir))
            self.history.update(job.id, status=job.status, stages=job.summary()["stage_seconds"],
                                result=job.result, error=job.error, log=job.log_text())
            with self._lock:
                self._unlock()
            job.done_event.set()

    def _stage(self, job: ExportJob, stage: str, progress: float, fn: Callable):
        if job.cancel_event.is_set():
            raise Cancelled()
        job.stage = stage
        job.progress = progress
        job.stage_status[stage] = "running"
        start = time.time()
        job.emit(f"— {stage} —", stage)
        out = fn()
        job.stage_times[stage] = time.time() - start
        if job.stage_status[stage] == "running":  # a stage may have set "reused" or "skipped"
            job.stage_status[stage] = "done"
        self.history.update(job.id, stages=job.summary()["stage_seconds"], log=job.log_text())
        if job.cancel_event.is_set():
            raise Cancelled()
        return out

    def _remove_partials(self, job: ExportJob) -> None:
        for p in job._partials:
            p = Path(p)
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            elif p.exists():
                p.unlink(missing_ok=True)
            if not p.exists():
                job.emit(f"removed partial output {p.name}", "cleanup")

    # -- reuse stamps ---------------------------------------------------------------------
    def _stamp_ok(self, plan: ExportPlan, stage: str, artifact: Path) -> dict | None:
        try:
            stamp = json.loads(plan.stamp_path(stage.replace(":", "-")).read_text())
        except (OSError, ValueError):
            return None
        if stamp.get("key") != plan.keys.get(stage) or not artifact.exists():
            return None
        if artifact.is_file() and stamp.get("size") != artifact.stat().st_size:
            return None
        return stamp

    def _write_stamp(self, plan: ExportPlan, stage: str, artifact: Path, **extra) -> None:
        path = plan.stamp_path(stage.replace(":", "-"))
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"key": plan.keys[stage], "finished": time.time(), **extra}
        if artifact.is_file():
            data["size"] = artifact.stat().st_size
        path.write_text(json.dumps(data))

    def _reusable(self, plan: ExportPlan) -> set[str]:
        skip: set[str] = set()
        if self._stamp_ok(plan, "merge", plan.merged_dir):
            skip.add("merge")
            if self._stamp_ok(plan, "convert", plan.gguf):
                skip.add("convert")
                for q, path in plan.quantized.items():
                    if self._stamp_ok(plan, f"quantize:{q}", path):
                        skip.add(f"quantize:{q}")
        return skip

    # -- stages -----------------------------------------------------------------------------
    def _preflight(self, job: ExportJob) -> set[str]:
        plan, req = job.plan, job.request
        skip = self._reusable(plan)
        problems: list[str] = []
        need_tools = {self.settings.llamafactory_service: "merge" not in skip}
        need_tools[self.settings.llamacpp_service] = not {"convert", *(f"quantize:{q}" for q in plan.quantized)} <= skip
        for service, needed in need_tools.items():
            if not needed:
                continue
            try:
                self.gateway.running_service_container(service)
                job.emit(f"tool container for {service}: running")
            except (ServiceUnavailable, EngineUnavailable) as exc:
                problems.append(str(exc))
        try:
            job.emit(f"Ollama {self.ollama.version()} at {self.ollama.base_url}")
        except OllamaError as exc:
            problems.append(str(exc))
        problems += base_model_problems(plan, "merge" not in skip)
        disk, need = disk_problem(self.data_dir, plan, skip)
        if disk:
            problems.append(disk)
        elif need:
            job.emit(f"disk: about {need / 2**30:.2f} GiB needed, "
                     f"{shutil.disk_usage(self.data_dir).free / 2**30:.1f} GiB free")
        if not problems:
            for target in plan.targets:
                try:
                    exists = self.ollama.exists(target.name)
                except OllamaError as exc:
                    problems.append(str(exc))
                    break
                if exists and not req.overwrite:
                    problems.append(f"Ollama already has a model named {target.name!r}; tick 'overwrite' "
                                    "to replace it or choose another name.")
        if problems:
            raise StageFailed(" ".join(problems))
        for stage in sorted(skip):
            job.emit(f"{stage}: inputs unchanged since a previous export, will be reused")
        return skip

    def _run_tool(self, job: ExportJob, command: ToolCommand, label: str) -> None:
        job.emit("$ " + " ".join(command.argv), label)
        handle = self.gateway.exec_tool(command)
        job._exec = handle
        try:
            if job.cancel_event.is_set():
                handle.kill()
            last = ""

            def record(pid: int) -> None:
                """So a restarted app can stop this tool if this process dies."""
                self.history.update(job.id, result={**job.result, "tool": {"container": handle.container,
                                                                          "pid": pid}})

            for _channel, line in handle.lines(on_pid=record):
                if line.strip():
                    last = line
                job.emit(line, label)
            if job.cancel_event.is_set():
                raise Cancelled()
            code = handle.exit_code()
        finally:
            job._exec = None
        if code is None or code == 137:  # killed: by us, by the OOM killer, or with its container
            for _ in range(20):
                try:
                    self.gateway.running_service_container(command.service)
                except (ServiceUnavailable, EngineUnavailable) as exc:
                    raise StageFailed(f"the tool was killed because its container stopped: {exc}") from None
                time.sleep(0.1)
        if code != 0:
            raise StageFailed(f"{' '.join(command.argv[:2])} exited with code {code}: {last.strip()[:300]}")

    def _merge(self, job: ExportJob, skip: set[str]) -> None:
        plan, req = job.plan, job.request
        if "merge" in skip:
            job.emit(f"reused {plan.merged_dir}")
            job.stage_status["merge"] = "reused"
            return
        plan.workdir.mkdir(parents=True, exist_ok=True)
        out = partial(plan.merged_dir)
        shutil.rmtree(out, ignore_errors=True)
        job._partials.append(out)
        plan.merge_yaml.write_text(commands.merge_yaml(req.base_model, req.run.path, req.template, str(out)))
        self._run_tool(job, commands.merge_command(self.settings, plan.merge_yaml), "merge")
        if not (out / "config.json").is_file():
            raise StageFailed("LLaMA-Factory finished but wrote no config.json into the merged folder.")
        shutil.rmtree(plan.merged_dir, ignore_errors=True)
        os.replace(out, plan.merged_dir)
        self._write_stamp(plan, "merge", plan.merged_dir)

    def _convert(self, job: ExportJob, skip: set[str]) -> None:
        plan = job.plan
        job.result["merged_dir"] = str(plan.merged_dir)
        if "convert" in skip:
            job.emit(f"reused {plan.gguf.name}")
            job.stage_status["convert"] = "reused"
        else:
            out = partial(plan.gguf)
            job._partials.append(out)
            self._run_tool(job, commands.convert_command(self.settings, plan.merged_dir, job.request.dtype, out),
                           "convert")
            if not out.is_file():
                raise StageFailed("The converter finished but wrote no GGUF file.")
            os.replace(out, plan.gguf)
            self._write_stamp(plan, "convert", plan.gguf)
        job.result.setdefault("artifacts", {})[plan.gguf.name] = {"file": str(plan.gguf),
                                                                  "bytes": plan.gguf.stat().st_size}

    def _quantize(self, job: ExportJob, skip: set[str]) -> None:
        plan = job.plan
        if not plan.quantized:
            job.emit("no quantization type chosen: the converted GGUF goes to Ollama")
            job.stage_status["quantize"] = "skipped"
            return
        reused = 0
        for i, (q, path) in enumerate(plan.quantized.items()):
            if job.cancel_event.is_set():
                raise Cancelled()
            job.progress = 0.55 + 0.2 * i / len(plan.quantized)
            if f"quantize:{q}" in skip:
                job.emit(f"reused {path.name}")
                reused += 1
            else:
                out = partial(path)
                job._partials.append(out)
                self._run_tool(job, commands.quantize_command(self.settings, plan.gguf, out, q), f"quantize {q}")
                if not out.is_file():
                    raise StageFailed(f"llama-quantize finished but wrote no {q} file.")
                os.replace(out, path)
                self._write_stamp(plan, f"quantize:{q}", path)
            job.result.setdefault("artifacts", {})[path.name] = {"file": str(path), "bytes": path.stat().st_size}
        if reused == len(plan.quantized):
            job.stage_status["quantize"] = "reused"

    @staticmethod
    def _load_key(digest: str, payload: dict) -> str:
        """What makes an Ollama model identical: the GGUF bytes and the create request."""
        return hashlib.sha256(json.dumps({"digest": digest, "payload": payload}, sort_keys=True).encode()).hexdigest()

    def _load(self, job: ExportJob, skip: set[str]) -> None:
        plan, req = job.plan, job.request
        modelfile_path = plan.merged_dir / "Modelfile"
        if modelfile_path.is_file():
            modelfile = parse_modelfile(modelfile_path.read_text(encoding="utf-8"))
            job.emit(f"training template from {modelfile_path.name}: "
                     f"stop={modelfile['parameters'].get('stop', [])}")
        else:
            modelfile = {"template": None, "system": None, "parameters": {}}
            job.emit("no Modelfile from LLaMA-Factory: Ollama will use the GGUF's own chat template")
        loaded: dict[str, str] = {}
        reused = 0
        for target in plan.targets:
            if job.cancel_event.is_set():
                raise Cancelled()
            stamp_stage = "convert" if target.gguf == plan.gguf else f"quantize:{target.quant}"
            stamp = self._stamp_ok(plan, stamp_stage, target.gguf) or {}
            digest = stamp.get("digest")
            if not digest:
                job.emit(f"hashing {target.gguf.name}")
                digest = file_digest(target.gguf, should_stop=job.cancel_event.is_set)
                self._write_stamp(plan, stamp_stage, target.gguf, digest=digest)
            payload = create_payload(target.name, digest, modelfile, req.system_prompt)
            key = self._load_key(digest, payload)
            if self.history.last_loaded_key(target.name) == key and self.ollama.exists(target.name):
                job.emit(f"{target.name}: reused (same GGUF, template and parameters already in Ollama)")
                loaded[target.name] = key
                reused += 1
                continue
            if self.ollama.has_blob(digest):
                job.emit(f"blob {digest[:19]}… already in Ollama")
            else:
                size = target.gguf.stat().st_size
                job.emit(f"uploading {target.gguf.name} ({size / 2**20:.1f} MiB)")
                marks: set[int] = set()

                def progress(sent: int, total: int, marks: set[int] = marks) -> None:
                    pct = int(100 * sent / max(total, 1)) // 25 * 25
                    if pct not in marks:
                        marks.add(pct)
                        job.emit(f"uploaded {pct}%")

                try:
                    self.ollama.push_blob(target.gguf, digest, on_progress=progress,
                                          should_stop=job.cancel_event.is_set)
                except InterruptedError:
                    raise Cancelled() from None
            job.emit(f"creating {target.name}")
            for status in self.ollama.create(payload):
                job.emit(status.get("status", json.dumps(status)))
            loaded[target.name] = key
        job.result["loaded"] = loaded
        job.result["ollama_models"] = [t.name for t in plan.targets]
        if reused == len(plan.targets):
            job.stage_status["load"] = "reused"

    def _verify(self, job: ExportJob) -> None:
        verdicts = {}
        for target in job.plan.targets:
            if job.cancel_event.is_set():
                raise Cancelled()
            job.emit(f"{target.name} ← {job.request.verify_prompt!r}")
            reply, reason = [], None
            for chunk in self.ollama.chat(target.name, job.request.verify_prompt):
                piece = (chunk.get("message") or {}).get("content", "")
                reply.append(piece)
                if chunk.get("done"):
                    reason = chunk.get("done_reason")
            text = "".join(reply)
            job.emit(f"{target.name} → {text!r}")
            clean = reason == "stop"
            job.emit(f"done_reason={reason}: " + ("stopped cleanly on a stop token" if clean else
                                                 "did not stop on its own (check the template and stop tokens)"))
            verdicts[target.name] = {"reply": text, "done_reason": reason, "clean_stop": clean}
        job.result["verify"] = verdicts
