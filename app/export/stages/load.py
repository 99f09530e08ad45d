"""Load: upload each GGUF to Ollama as a blob and create the model with the chat format of training.

The template, stop tokens and default system come from LLaMA-Factory's own template (asked in its
container), with the fixes a served model needs; LLaMA-Factory's own Modelfile is compared and any
difference is said in the log. A TuneDeck Modelfile is written beside the GGUF files.
"""

from __future__ import annotations

import hashlib
import json

from ...gguf import NotGGUF, adds_bos, read_metadata
from ...ollama import file_digest
from ..jobs import Cancelled, StageFailed
from ..modelfile import create_payload, parse_modelfile, render_modelfile
from ..templates import chat_format
from . import StageContext


def load_key(digest: str, payload: dict) -> str:
    """What makes an Ollama model identical: the GGUF bytes and the create request."""
    return hashlib.sha256(json.dumps({"digest": digest, "payload": payload}, sort_keys=True).encode()).hexdigest()


def serving_format(ctx: StageContext) -> dict:
    """{"template", "system", "parameters"} for /api/create, from the training template."""
    plan = ctx.plan
    lf_path = plan.merged_dir / "Modelfile"
    lf = parse_modelfile(lf_path.read_text(encoding="utf-8")) if lf_path.is_file() else None
    try:
        bos = adds_bos(read_metadata(plan.gguf))
    except (OSError, NotGGUF) as exc:
        raise StageFailed(f"The converted GGUF cannot be read ({exc}).") from None
    try:
        fmt = chat_format(ctx, bos)
    except StageFailed as exc:
        if lf is None:
            raise
        ctx.emit(f"{exc} Using LLaMA-Factory's Modelfile as it is.")
        return lf
    ctx.extras["chat_format"] = fmt
    ctx.job.set_result("chat_format", {
        "template": fmt["template"], "stops": fmt["stops"], "runtime_adds_bos": bos,
        "conversations": {k: {"train_tokens": c["train_tokens"], "train_ids": c["train_ids"]}
                          for k, c in fmt["conversations"].items()}})
    params = dict((lf or {}).get("parameters") or {})
    params["stop"] = fmt["stops"]
    params.setdefault("num_ctx", 4096)
    ours = {"template": fmt["ollama_template"], "system": fmt["system"] or None, "parameters": params}
    if lf is not None and lf.get("template") != fmt["ollama_template"]:
        reasons = []
        lf_template = lf.get("template") or ""
        if bos and fmt.get("bos_token") and lf_template.startswith(fmt["bos_token"]):
            reasons.append(f"it starts every prompt with {fmt['bos_token']}, which the runtime adds again")
        if "<<SYS>>" in lf_template and lf_template.index("<<SYS>>") < lf_template.find("[INST]"):
            reasons.append("it puts the system prompt before the first [INST], not inside it as training did")
        why = "; ".join(reasons) or "its template differs from the one training used"
        ctx.emit(f"LLaMA-Factory's Modelfile is wrong for this model: {why}. TuneDeck uses a corrected template "
                 "(the chat-format check in the verify stage compares it with training)")
    if lf is not None and sorted(lf["parameters"].get("stop", [])) != sorted(fmt["stops"]):
        ctx.emit(f"stop tokens: LLaMA-Factory's Modelfile has {lf['parameters'].get('stop', [])}, "
                 f"the template stops on {fmt['stops']}")
    ctx.emit(f"chat format of template {ctx.request.template}: stop={fmt['stops']}, "
             f"runtime adds BOS: {'yes' if bos else 'no'}")
    return ours


def run(ctx: StageContext) -> None:
    plan, req, job = ctx.plan, ctx.request, ctx.job
    serving = serving_format(ctx)
    (plan.workdir / "Modelfile").write_text(render_modelfile(plan.targets[0].gguf.name, serving, req.system_prompt))
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
        payload = create_payload(target.name, digest, serving, req.system_prompt)
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
    job.set_result("modelfile", str(plan.workdir / "Modelfile"))
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
