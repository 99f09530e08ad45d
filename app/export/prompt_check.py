"""The served prompt must be training's, token for token, before Ollama changes.

TuneDeck renders each check conversation through the Ollama template exactly as Ollama will
(`ollama_prompt`), tokenizes it with llama.cpp's own tokenizer on the export's GGUF (special tokens
parsed, BOS added as the GGUF says, as the runtime does) and compares the ids with the ones
LLaMA-Factory's template gave at training. When they differ, the next candidate template is tried
(the other BOS variant, LLaMA-Factory's own Ollama template); when none gives training's ids, the
export fails naming the first differing token, and nothing has been created in Ollama.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from ..gguf import NotGGUF, token_pieces
from . import commands
from .gotemplate import TemplateError
from .jobs import StageFailed
from .modelfile import create_payload
from .ollama_prompt import chat_prompt
from .stages import StageContext

_IDS = re.compile(r"^\[[0-9, ]*\]$")


# -- pure ------------------------------------------------------------------------------------------
def parse_ids(lines: list[str]) -> list[int]:
    """The ids line `[1, 2, 3]` that `llama-tokenize --ids` prints (its log lines are ignored)."""
    for line in reversed(lines):
        line = line.strip()
        if _IDS.match(line):
            return [int(x) for x in line[1:-1].split(",") if x.strip()]
    raise StageFailed("llama-tokenize printed no token ids.")


def first_difference(a: list[int], b: list[int]) -> int | None:
    """Index of the first differing token (or where the shorter list ends); None when equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def token_name(ids: list[int], i: int, pieces: dict[int, str]) -> str:
    if i >= len(ids):
        return "nothing (the prompt ends)"
    return f"{pieces.get(ids[i], '?')!r} (id {ids[i]})"


def difference_sentence(conversation: str, train: list[int], served: list[int], pieces: dict[int, str]) -> str:
    i = first_difference(train, served)
    assert i is not None
    return (f"for the {conversation.replace('_', ' ')} conversation the served prompt has {len(served)} tokens, "
            f"training's {len(train)}; at token {i} it has {token_name(served, i, pieces)} where training had "
            f"{token_name(train, i, pieces)}")


def candidates(chat: dict, adds_bos: bool) -> list[tuple[str, str]]:
    """(label, Ollama template) to try in order, without repeats: TuneDeck's template for this runtime's
    BOS behaviour, the other BOS variant, LLaMA-Factory's own Ollama template."""
    variants = chat.get("ollama_templates") or {}
    ordered = [("TuneDeck's template", variants.get("bos" if adds_bos else "nobos")),
               ("TuneDeck's template for the other BOS behaviour", variants.get("nobos" if adds_bos else "bos")),
               ("LLaMA-Factory's Ollama template", chat.get("lf_ollama_template"))]
    out, seen = [], set()
    for label, template in ordered:
        if template and template not in seen:
            seen.add(template)
            out.append((label, template))
    return out


def checked_conversations(fmt: dict, system_prompt: str) -> dict:
    """The conversations whose prompt training fixed: without a system message only when no custom system
    prompt replaces the template's default."""
    return {k: c for k, c in fmt["conversations"].items() if not (k == "without_system" and system_prompt)}


# -- against the export's GGUF ------------------------------------------------------------------------
def tokenize(ctx: StageContext, gguf: Path, text: str) -> list[int]:
    path = ctx.plan.eval_dir / f"prompt-{hashlib.sha256(text.encode()).hexdigest()[:16]}.txt"
    ctx.job.add_partial(path)  # removed with the job's partials if it does not succeed
    ctx.fs.write_text(path, text)
    try:
        lines = ctx.tools.run(ctx.job, commands.tokenize_command(ctx.settings, gguf, path), "tokenize", echo=False)
    finally:
        ctx.fs.remove(path)
    return parse_ids(lines)


def same_text(train: list[int], served: list[int], pieces: dict[int, str]) -> bool:
    """The same text split into other tokens: the vocabulary pieces of both read the same end to end (a
    SentencePiece model encodes LLaMA-Factory's separately tokenized segments in ways no single string
    reproduces)."""
    return all(i in pieces for i in (*train, *served)) and \
        "".join(pieces[i] for i in train) == "".join(pieces[i] for i in served)


def check(ctx: StageContext, serving: dict, fmt: dict, gguf: Path, adds_bos: bool) -> dict:
    """Choose the first candidate template whose served ids are training's; sets serving["template"].

    When none gives training's ids but the first renders training's very text (only split into other
    tokens), that one is used and the result says so (a warning the user judges). Otherwise StageFailed,
    naming the first differing token."""
    system_prompt = ctx.request.system_prompt
    convs = checked_conversations(fmt, system_prompt)
    tried: list[tuple[str, str, dict[str, list[int]]]] = []
    for label, template in candidates(fmt, adds_bos):
        spec = create_payload("check", "", {**serving, "template": template}, system_prompt)
        try:
            texts = {key: chat_prompt(spec, conv["messages"]) for key, conv in convs.items()}
        except TemplateError as exc:
            ctx.emit(f"{label}: cannot be rendered ({exc})")
            continue
        served = {key: tokenize(ctx, gguf, text) for key, text in texts.items()}
        if all(served[k] == c["train_ids"] for k, c in convs.items()):
            serving["template"] = template
            if tried:
                ctx.emit(f"chat format corrected: {tried[0][0]} did not give training's prompt; {label} does")
            for key in convs:
                ctx.emit(f"chat format ({key.replace('_', ' ')}): served prompt {len(served[key])} tokens, "
                         f"token for token training's ✓")
            return {"ok": True, "template": label, "corrected": bool(tried), "same_text": True,
                    "conversations": {k: {"train_tokens": len(c["train_ids"]), "served_ids": served[k]}
                                      for k, c in convs.items()}}
        tried.append((label, template, served))
    if not tried:
        raise StageFailed("No Ollama template for this chat format can be rendered.")
    label, template, served = tried[0]
    key = next(k for k, c in convs.items() if served[k] != c["train_ids"])
    train = convs[key]["train_ids"]
    try:
        pieces = token_pieces(gguf, {i for ids in served.values() for i in ids} |
                              {i for c in convs.values() for i in c["train_ids"]})
    except (OSError, NotGGUF):
        pieces = {}
    sentence = difference_sentence(key, train, served[key], pieces)
    if all(same_text(c["train_ids"], served[k], pieces) for k, c in convs.items()):
        serving["template"] = template
        note = (f"the served prompt is training's text, but llama.cpp splits it into other tokens than "
                f"LLaMA-Factory did: {sentence}")
        ctx.emit(f"warning: {note}")
        return {"ok": False, "template": label, "corrected": False, "same_text": True, "warning": note,
                "conversations": {k: {"train_tokens": len(c["train_ids"]), "served_ids": served[k]}
                                  for k, c in convs.items()}}
    raise StageFailed(f"Ollama would not serve the prompt the model was trained on: {sentence} (and no "
                      "correction TuneDeck knows gives training's tokens). Nothing was created in Ollama.")
