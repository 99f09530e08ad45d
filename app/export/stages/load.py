"""Load: upload each GGUF to Ollama as a blob and create the model with the chat format of training.

The template, stop tokens and default system come from LLaMA-Factory's own template (asked in its
container), with the fixes a served model needs; LLaMA-Factory's own Modelfile is compared and any
difference is said in the log. A TuneDeck Modelfile is written beside the GGUF files.

Nothing a user has in Ollama changes until the served prompt is known to be training's: the template is
checked token for token on the GGUF first (`prompt_check`), then each model is created under a staging
name, Ollama's own prompt token count for each check conversation is compared with training's on a
fresh load, and only then is the model created under its real name (the staging model is deleted).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time

from ...gguf import NotGGUF, adds_bos, read_metadata
from ...ollama import OllamaError, file_digest
from .. import prompt_check
from ..jobs import Cancelled, StageFailed
from ..modelfile import create_payload, parse_modelfile, render_modelfile
from ..templates import chat_format
from . import StageContext
from .verify import final_chunk

log = logging.getLogger(__name__)
COUNT_OPTIONS = {"num_predict": 1, "temperature": 0, "seed": 0}

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
                 "(checked token for token against training's prompt before Ollama changes)")
    if lf is not None and sorted(lf["parameters"].get("stop", [])) != sorted(fmt["stops"]):
        ctx.emit(f"stop tokens: LLaMA-Factory's Modelfile has {lf['parameters'].get('stop', [])}, "
                 f"the template stops on {fmt['stops']}")
    ctx.emit(f"chat format of template {ctx.request.template}: stop={fmt['stops']}, "
             f"runtime adds BOS: {'yes' if bos else 'no'}")
    started = time.monotonic()
    ctx.extras["prompt_check"] = prompt_check.check(ctx, ours, fmt, plan.gguf, bos)
    ctx.job.update_result("check_seconds", prompt_check=round(time.monotonic() - started, 2))
    return ours


def run(ctx: StageContext) -> None:
    plan, req, job = ctx.plan, ctx.request, ctx.job
    serving = serving_format(ctx)
    ctx.fs.write_text(plan.workdir / "Modelfile", render_modelfile(plan.targets[0].gguf.name, serving,
                                                                   req.system_prompt))
    loaded: dict[str, str] = {}
    pending: list[tuple[str, dict]] = []  # (real name, create payload) of the models to create
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
        loaded[target.name] = key
        if ctx.history.last_loaded_key(target.name) == key and ctx.ollama.exists(target.name):
            ctx.emit(f"{target.name}: reused (same GGUF, template and parameters already in Ollama)")
            continue
        upload(ctx, target.gguf, digest)
        pending.append((target.name, payload))
    checks = {}
    staged: list[str] = []
    started = time.monotonic()
    try:
        for i, (name, payload) in enumerate(pending):  # every staging model checked before any real one
            staging = f"tunedeck-check-{job.id}-{i}"
            ctx.emit(f"creating {staging} (staging copy of {name}, to check the prompt Ollama builds)")
            staged.append(staging)
            for status in ctx.ollama.create({**payload, "model": staging}):
                job.check_cancel()
            checks[name] = served_count_check(ctx, staging, name)
        job.update_result("check_seconds", staging=round(time.monotonic() - started, 2))
        for name, payload in pending:
            job.check_cancel()
            ctx.emit(f"creating {name}")
            for status in ctx.ollama.create(payload):
                ctx.emit(status.get("status", json.dumps(status)))
    finally:
        for staging in staged:
            try:
                ctx.ollama.delete(staging)
            except OllamaError as exc:  # said, never swallowed; recovery removes it later
                log.warning("export %s: could not delete staging model %s: %s", job.id, staging, exc)
                ctx.emit(f"warning: could not delete the staging model {staging}: {exc}")
    local = ctx.extras.get("prompt_check") or {}
    job.set_result("prompt_check", {name: {**local, "ollama": checks.get(name, "reused")} for name in loaded})
    job.set_result("loaded", loaded)
    job.set_result("ollama_models", [t.name for t in plan.targets])
    if req.base_only and req.compare_to:
        from ..reports import model_pair

        job.set_result("compare_pair", model_pair(req))
    job.set_result("modelfile", str(plan.workdir / "Modelfile"))
    if not pending:
        job.set_stage_status("load", "reused")


def served_count_check(ctx: StageContext, staging: str, name: str) -> dict:
    """Ollama's own prompt length (`prompt_eval_count` on a fresh load) for each check conversation must
    be training's; otherwise the export fails and `name` is never created or replaced."""
    fmt = ctx.extras["chat_format"]
    local = (ctx.extras.get("prompt_check") or {}).get("conversations") or {}
    out = {}
    for key, conv in prompt_check.checked_conversations(fmt, ctx.request.system_prompt).items():
        ctx.ollama.unload(staging)  # a fresh load: prompt_eval_count then counts the whole prompt
        _reply, last = final_chunk(ctx, staging, conv["messages"], COUNT_OPTIONS)
        served, train = last.get("prompt_eval_count"), conv["train_tokens"]
        expected = len(local[key]["served_ids"]) if key in local else train  # what TuneDeck's own check found
        out[key] = {"served_tokens": served, "train_tokens": train}
        ctx.emit(f"{name}: Ollama's prompt ({key.replace('_', ' ')}) {served} tokens, training's {train} "
                 + ("✓" if served == train else "(the same text, as checked)" if served == expected else "✗"))
        if served != expected:
            raise StageFailed(f"Ollama builds a {served}-token prompt for the {key.replace('_', ' ')} conversation "
                              f"where training had {train} tokens (TuneDeck's own rendering of the same template "
                              f"gives {expected}, so this Ollama renders or tokenizes it differently); "
                              f"{name} was not created or replaced.")
    return out


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
