"""A run whose trainer added tokens (`resize_vocab`, `add_special_tokens`, a template whose special tokens
the base vocabulary lacks): which tokens, in the order training added them, read from the tokenizer files.
The merge then adds the same tokens in the same order and resizes the embeddings as training did, so the
merged model's tokenizer is the run's, id for id."""

from __future__ import annotations

import json
from pathlib import Path


def _tokenizer(folder: Path) -> dict:
    try:
        data = json.loads((Path(folder) / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def vocabulary_size(folder: Path) -> int | None:
    """Tokens of a fast tokenizer: its model's vocabulary plus added tokens beyond it."""
    data = _tokenizer(folder)
    vocab = (data.get("model") or {}).get("vocab")
    if not isinstance(vocab, (dict, list)):
        return None
    ids = [t["id"] for t in data.get("added_tokens") or [] if isinstance(t.get("id"), int)]
    return max(len(vocab), max(ids) + 1 if ids else 0)


def added_tokens(run: Path, base: Path) -> list[dict]:
    """The run's tokens that the base's tokenizer lacks, by id: [{"id", "content", "special"}, …]."""
    base_size = vocabulary_size(base)
    if base_size is None:
        return []
    out = [{"id": t["id"], "content": t["content"], "special": bool(t.get("special"))}
           for t in _tokenizer(run).get("added_tokens") or []
           if isinstance(t.get("id"), int) and t["id"] >= base_size and isinstance(t.get("content"), str)]
    return sorted(out, key=lambda t: t["id"])


def merge_keys(tokens: list[dict]) -> dict:
    """LLaMA-Factory 0.9.5's keys that add the tokens again and resize the embeddings (`add_special_tokens`,
    `add_tokens`: comma-separated; the special ones are added first, as its patch_tokenizer does)."""
    if not tokens:
        return {}
    keys: dict = {"resize_vocab": True}
    special = [t["content"] for t in tokens if t["special"]]
    plain = [t["content"] for t in tokens if not t["special"]]
    if special:
        keys["add_special_tokens"] = ",".join(special)
    if plain:
        keys["add_tokens"] = ",".join(plain)
    return keys


def unmergeable(tokens: list[dict]) -> str | None:
    """One sentence when the tokens cannot be added again in training's order (a comma in a token, or plain
    tokens before special ones, which LLaMA-Factory's keys cannot express)."""
    if any("," in t["content"] for t in tokens):
        bad = next(t["content"] for t in tokens if "," in t["content"])
        return f"The run added the token {bad!r}, whose comma LLaMA-Factory's merge cannot pass back; rename it."
    kinds = [t["special"] for t in tokens]
    if kinds != sorted(kinds, reverse=True):
        return ("The run added plain tokens before special ones, an order LLaMA-Factory's merge cannot repeat; "
                "the merged vocabulary would not be the run's.")
    return None
