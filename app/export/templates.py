"""The chat template of a run and the chat format Ollama must reproduce for it, asked of LLaMA-Factory
itself in its container, once per export (and cached by the tokenizer files' content):

- the template named in the run's training_args.yaml, given by hand (then checked against the one
  the run's tokenizer recorded), or inferred from that recorded chat template;
- its training-time prompts of two fixed conversations, stop tokens and default system, and Ollama
  templates that reproduce those prompts (for a runtime that adds BOS itself, and one that does not).
"""

from __future__ import annotations

from pathlib import Path

from .helper import cached, file_fingerprint, run_helper
from .jobs import StageFailed
from .stages import StageContext

TOKENIZER_FILES = ("chat_template.jinja", "tokenizer_config.json", "tokenizer.json", "tokenizer.model",
                   "special_tokens_map.json")
WHERE_TO_CHOOSE = "choose it in the Export tab's Chat template field (API: the template argument)"


def prepare(ctx: StageContext, mode: str) -> dict:
    """{"inference": …, "chat": …} for the request; `mode` is infer, check or given."""
    req = ctx.request
    run = "" if req.base_only else req.run.path
    scripts = Path(__file__).with_name("scripts")
    key = ("prepare", file_fingerprint(scripts / "common.py", scripts / "templates.py"), mode, req.template,
           file_fingerprint(*(Path(run) / n for n in TOKENIZER_FILES)) if run else "",
           file_fingerprint(*(Path(req.base_model) / n for n in TOKENIZER_FILES)))
    result, reused = cached(ctx, ctx.data_dir / "exports" / ".cache", key,
                            lambda: run_helper(ctx, "template", "prepare", run, req.base_model, req.template, mode))
    if reused:
        ctx.emit("template and chat format: reused (same tokenizer files and template as before)")
    ctx.extras["prepared"] = result
    return result


def inferred(ctx: StageContext, inference: dict) -> tuple[str, str]:
    """(template name, a note for the log) from an inference; StageFailed with one sentence if none."""
    if not inference.get("source"):
        raise StageFailed("The run does not record a chat template (no chat_template.jinja and no chat_template in "
                          f"tokenizer_config.json), so its template cannot be inferred; {WHERE_TO_CHOOSE}.")
    matches = inference.get("matches") or []
    if inference.get("unrenderable"):
        raise StageFailed(f"The run's saved chat template ({inference['source']}) cannot render a conversation, so "
                          f"its template cannot be inferred; {WHERE_TO_CHOOSE}.")
    if not matches:
        raise StageFailed(f"The run's saved chat template encodes conversations like no LLaMA-Factory template "
                          f"({closest_text(inference.get('closest') or [])}); {WHERE_TO_CHOOSE}.")
    how = (inference.get("how") or {}).get(matches[0])
    note = {"exact": "", "ids": "; it gives the same token ids as the run's saved chat template",
            "text": "; it renders the same text as the run's saved chat template"}.get(how or "exact", "")
    if len(matches) > 1:
        note += f"; equivalent: {', '.join(matches[1:4])}"
    return matches[0], note


def closest_text(closest: list) -> str:
    """Where the closest templates first differ from the run's own, e.g. "closest: llama3, from token 5 of
    with system: 'Cut' where llama3 gives '<|eot_id|>'"."""
    parts = []
    for name, where in closest[:2]:
        if not where:
            parts.append(name)
            continue
        parts.append(f"{name}, from token {where['token']} of the {where['conversation'].replace('_', ' ')} "
                     f"conversation: the run's template gives {where['saved']!r} where {name} gives "
                     f"{where['template']!r}")
    return "closest: " + "; ".join(parts) if parts else "no template comes close"


def chat_format(ctx: StageContext, adds_bos: bool) -> dict:
    """The prepared chat format, with the Ollama template for this runtime's BOS behaviour."""
    chat = (ctx.extras.get("prepared") or {}).get("chat")
    if not chat or chat.get("error"):
        raise StageFailed(f"LLaMA-Factory could not give the chat format of template {ctx.request.template}"
                          + (f" ({chat['error']})" if chat else "") + ".")
    return {**chat, "ollama_template": chat["ollama_template"]["bos" if adds_bos else "nobos"],
            "ollama_templates": chat["ollama_template"]}
