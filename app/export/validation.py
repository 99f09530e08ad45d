"""Validation of every export input: names, paths, types. Pure functions, one clear sentence each."""

from __future__ import annotations

import os
import re
from pathlib import Path

GGUF_DTYPES = ("auto", "f16", "bf16", "q8_0")
QUANT_TYPES = (
    "Q4_K_M", "Q4_K_S", "Q5_K_M", "Q5_K_S", "Q6_K", "Q8_0", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q2_K",
    "Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL", "IQ4_XS",
)
# llama.cpp refuses these without an importance matrix (src/llama-quant.cpp: tensor_requires_imatrix;
# IQ3_XS turns some tensors into IQ3_XXS). With TuneDeck's importance matrix they are allowed.
IMATRIX_QUANT_TYPES = ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "Q2_K_S")
MAX_SYSTEM_PROMPT = 16_000
MAX_TEMPLATE = 64
_PART = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}"
_NAMESPACE = r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}"
_HOST = r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}"
_OLLAMA_NAME = re.compile(rf"(?:(?:{_HOST})/)?(?:{_NAMESPACE}/)?{_PART}(?::{_PART})?")
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
_TEMPLATE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class InvalidInput(ValueError):
    """A user input that cannot be used; the message is shown as is."""


def check_text(label: str, value: object, max_len: int = 4096, allow_control: bool = False) -> str:
    """Text of bounded length without NUL; names and paths also refuse every other control character
    (C0 and C1: a NEL or a line break in a path is never intended, and YAML would fold it)."""
    if not isinstance(value, str):
        raise InvalidInput(f"{label} must be text.")
    if "\x00" in value:
        raise InvalidInput(f"{label} cannot contain a NUL character.")
    if len(value) > max_len:
        raise InvalidInput(f"{label} is too long ({len(value)} characters, at most {max_len}).")
    if not allow_control and _CONTROL.search(value):
        char = _CONTROL.search(value).group()
        raise InvalidInput(f"{label} cannot contain control characters (found U+{ord(char):04X}).")
    return value


def confine(data_dir: Path, candidate: str | os.PathLike, label: str = "Path") -> Path:
    """Resolve `candidate` (relative to `data_dir` or absolute) and refuse anything outside it.

    Symlinks are resolved first, so a link that points out of the data directory is refused.
    """
    text = check_text(label, str(candidate), 4096).strip()
    if not text:
        raise InvalidInput(f"{label} is empty.")
    root = Path(data_dir).resolve()
    path = Path(text)
    if not path.is_absolute():
        path = root / path
    resolved = path.resolve()
    if resolved != root and root not in resolved.parents:
        raise InvalidInput(f"{label} {text!r} is outside the data directory {root}.")
    return resolved


def validate_ollama_name(name: object) -> str:
    """Ollama's rules: `[host/][namespace/]model[:tag]`, parts of letters, digits, `_ . -`."""
    text = check_text("Ollama model name", name, 600).strip()
    if not text:
        raise InvalidInput("Ollama model name is empty.")
    if not _OLLAMA_NAME.fullmatch(text) or ".." in text:
        raise InvalidInput(
            f"{text!r} is not a valid Ollama model name: use `name` or `name:tag` made of letters, digits, "
            "`_`, `.` and `-` (starting with a letter, digit or `_`, at most 80 characters per part)."
        )
    return text


def validate_dtype(dtype: object) -> str:
    text = check_text("GGUF dtype", dtype, 16).strip().lower()
    if text not in GGUF_DTYPES:
        raise InvalidInput(f"GGUF dtype {dtype!r} is not one of {', '.join(GGUF_DTYPES)}.")
    return text


def validate_quant_types(types: object, dtype: str, imatrix: bool = False) -> list[str]:
    if types is None or types == "":
        types = []
    if isinstance(types, str):
        types = [t for t in re.split(r"[,\s]+", types) if t]
    if not isinstance(types, (list, tuple)):
        raise InvalidInput("Quantization types must be a list.")
    out: list[str] = []
    for raw in types:
        t = check_text("Quantization type", raw, 16).strip().upper()
        if t in IMATRIX_QUANT_TYPES and not imatrix:
            raise InvalidInput(
                f"{t} needs an importance matrix: tick 'importance matrix from the run's data' (API: imatrix), "
                "or choose a K-quant such as Q4_K_M."
            )
        if t not in QUANT_TYPES and t not in IMATRIX_QUANT_TYPES:
            raise InvalidInput(f"Unknown quantization type {raw!r}; choose from {', '.join(QUANT_TYPES)} "
                               f"(with an importance matrix also {', '.join(IMATRIX_QUANT_TYPES)}).")
        if t not in out:
            out.append(t)
    if out and dtype == "q8_0":
        raise InvalidInput("A q8_0 GGUF cannot be quantized again without loss; choose f16, bf16 or auto.")
    if len(out) > 6:
        raise InvalidInput("Choose at most 6 quantization types per export.")
    return out


def validate_template(template: object, allow_empty: bool = False) -> str:
    """A LLaMA-Factory template name; empty (when allowed) means "infer it from the run"."""
    text = check_text("Template", template, MAX_TEMPLATE).strip()
    if allow_empty and not text:
        return ""
    if not _TEMPLATE.fullmatch(text):
        raise InvalidInput(f"Template {template!r} is not a LLaMA-Factory template name.")
    return text


def validate_base_model(data_dir: Path, value: object) -> str:
    """A local folder inside the data directory, or a Hugging Face repo id (`org/name`)."""
    text = check_text("Base model", value, 4096).strip()
    if not text:
        raise InvalidInput("Base model is empty.")
    if text.startswith(("/", ".", "~")) or not _HUB_ID.fullmatch(text) or (Path(data_dir) / text).exists():
        return str(confine(data_dir, text, "Base model"))
    return text


def validate_system_prompt(value: object) -> str:
    """Any characters (quotes, newlines, unicode) but NUL; it travels as JSON, never through a shell."""
    if value is None:
        return ""
    return check_text("System prompt", value, MAX_SYSTEM_PROMPT, allow_control=True)


def slug(text: str, max_len: int = 48) -> str:
    """A filesystem- and Ollama-safe name derived from free text."""
    s = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-._").lower()
    s = re.sub(r"-{2,}", "-", s)[:max_len].strip("-._")
    return s or "model"


def validate_threshold(value: object, label: str = "KL threshold") -> float:
    """A positive number (the quantization report's recommendation limit)."""
    if isinstance(value, bool):
        raise InvalidInput(f"{label} must be a number, not {value!r}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"{label} must be a number, not {value!r}.") from None
    if not 0 < number <= 10:
        raise InvalidInput(f"{label} must be a number above 0 and at most 10, not {value!r}.")
    return number
