"""Load: upload each GGUF to Ollama as a blob and create the model with the training template."""

from __future__ import annotations

import hashlib
import json

from ...ollama import file_digest
from ..jobs import Cancelled
from ..modelfile import create_payload, parse_modelfile
from . import StageContext


def load_key(digest: str, payload: dict) -> str:
    """What makes an Ollama model identical: the GGUF bytes and the create request."""
    return hashlib.sha256(json.dumps({"digest": digest, "payload": payload}, sort_keys=True).encode()).hexdigest()


def training_modelfile(ctx: StageContext) -> dict:
    path = ctx.plan.merged_dir / "Modelfile"
    if path.is_file():
        modelfile = parse_modelfile(path.read_text(encoding="utf-8"))
        ctx.emit(f"training template from {path.name}: stop={modelfile['parameters'].get('stop', [])}")
        return modelfile
    ctx.emit("no Modelfile from LLaMA-Factory: Ollama will use the GGUF's own chat template")
    return {"template": None, "system": None, "parameters": {}}


def run(ctx: StageContext) -> None:
    plan, req, job = ctx.plan, ctx.request, ctx.job
    modelfile = training_modelfile(ctx)
    loaded: dict[str, str] = {}
    reused = 0
    for target in plan.targets:
        job.check_cancel()
        stamp_stage = "convert" if target.gguf == plan.gguf else f"quantize:{target.quant}"
        stamp = ctx.stamps.valid(stamp_stage, target.gguf) or {}
        digest = stamp.get("digest")
        if not digest:
            ctx.emit(f"hashing {target.gguf.name}")
            try:
                digest = file_digest(target.gguf, should_stop=job.cancel_event.is_set)
            except InterruptedError:
                raise Cancelled() from None
            ctx.stamps.write(stamp_stage, target.gguf, digest=digest)
        payload = create_payload(target.name, digest, modelfile, req.system_prompt)
        key = load_key(digest, payload)
        if ctx.history.last_loaded_key(target.name) == key and ctx.ollama.exists(target.name):
            ctx.emit(f"{target.name}: reused (same GGUF, template and parameters already in Ollama)")
            loaded[target.name] = key
            reused += 1
            continue
        upload(ctx, target.gguf, digest)
        ctx.emit(f"creating {target.name}")
        for status in ctx.ollama.create(payload):
            ctx.emit(status.get("status", json.dumps(status)))
        loaded[target.name] = key
    job.set_result("loaded", loaded)
    job.set_result("ollama_models", [t.name for t in plan.targets])
    if reused == len(plan.targets):
        job.set_stage_status("load", "reused")


def upload(ctx: StageContext, path, digest: str) -> None:
    if ctx.ollama.has_blob(digest):
        ctx.emit(f"blob {digest[:19]}… already in Ollama")
        return
    size = path.stat().st_size
    ctx.emit(f"uploading {path.name} ({size / 2**20:.1f} MiB)")
    marks: set[int] = set()

    def progress(sent: int, total: int) -> None:
        pct = int(100 * sent / max(total, 1)) // 25 * 25
        if pct not in marks:
            marks.add(pct)
            ctx.emit(f"uploaded {pct}%")

    try:
        ctx.ollama.push_blob(path, digest, on_progress=progress, should_stop=ctx.job.cancel_event.is_set)
    except InterruptedError:
        raise Cancelled() from None
