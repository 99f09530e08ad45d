"""What an export will do: validated request, output paths, and the input hashes that decide reuse."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..runs import ADAPTER_WEIGHTS, RunInfo, find_run
from .validation import (
    IMATRIX_QUANT_TYPES,
    InvalidInput,
    check_text,
    slug,
    validate_base_model,
    validate_dtype,
    validate_ollama_name,
    validate_quant_types,
    validate_system_prompt,
    validate_template,
    validate_threshold,
)

DEFAULT_VERIFY_PROMPT = "Reply with one short sentence: what are you?"
_SMALL_FILE = 64 << 20  # files below this are hashed by content; larger ones by size and mtime


@dataclass(frozen=True)
class ExportRequest:
    run: RunInfo
    base_model: str
    template: str
    dtype: str
    quant_types: tuple[str, ...]
    ollama_name: str
    system_prompt: str
    overwrite: bool
    verify_prompt: str = DEFAULT_VERIFY_PROMPT
    template_source: str = "given"   # "given", "run" (training_args.yaml) or "inferred"
    imatrix: bool = False            # importance matrix from the run's data, for the k-quants and IQ types
    report: bool = True              # quantization report (when there are quantized types)
    kl_threshold: float = 0.05       # the report recommends the smallest type below this mean KL divergence
    base_only: bool = False          # export the run's base model itself (no adapter): "compare with base"
    compare_to: str = ""             # with base_only: the fine-tune's Ollama name this base is compared with

    def summary(self) -> dict:
        d = asdict(self)
        d["run"] = self.run.name
        return d


def default_ollama_name(run: RunInfo) -> str:
    return slug(run.name.replace("/", "-"), 60)


def build_request(data_dir: Path, *, run: str, base_model: str = "", template: str = "", dtype: str = "f16",
                  quant_types=("Q4_K_M",), ollama_name: str = "", system_prompt: str = "",
                  overwrite: bool = False, verify_prompt: str = "", imatrix: bool = False, report: bool = True,
                  kl_threshold: object = 0.05, base_only: bool = False) -> ExportRequest:
    """Validate raw inputs (from the UI or the API) into a request; raises InvalidInput."""
    run_name = check_text("Run", run or "", 1024).strip()
    if not run_name:
        raise InvalidInput("Choose a run to export.")
    info = find_run(data_dir, run_name)
    if info is None:
        raise InvalidInput(f"Unknown run {run_name!r}: no LoRA adapter, model weights or checkpoint of one "
                           "under saves/.")
    base = validate_base_model(data_dir, base_model or info.base_model)
    tmpl = validate_template(template or info.template or "", allow_empty=True)
    source = "given" if template else "run" if tmpl else "inferred"
    dt = validate_dtype(dtype or "f16")
    for label, flag in (("Importance matrix", imatrix), ("Report", report)):
        if not isinstance(flag, bool):
            raise InvalidInput(f"{label} must be true or false.")
    quants = validate_quant_types(quant_types, dt, imatrix)
    threshold = validate_threshold(kl_threshold)
    if imatrix and not quants:
        raise InvalidInput("An importance matrix only helps quantization: choose at least one quantization type.")
    name = validate_ollama_name(ollama_name or default_ollama_name(info))
    if len(quants) > 1 and ":" in name.rsplit("/", 1)[-1]:
        raise InvalidInput("With several quantization types, give the Ollama name without a tag; each type becomes a tag.")
    if not isinstance(overwrite, bool):
        raise InvalidInput("Overwrite must be true or false.")
    prompt = check_text("Verification prompt", verify_prompt or DEFAULT_VERIFY_PROMPT, 2000, allow_control=True)
    if base_only and not os.path.isdir(base):
        raise InvalidInput(f"Comparing with the base needs the base model as a folder in the data directory; "
                           f"{base!r} is not one.")
    return ExportRequest(info, base, tmpl, dt, tuple(quants), name, validate_system_prompt(system_prompt),
                         overwrite, prompt, source, imatrix, report, threshold, bool(base_only))


# -- hashing --------------------------------------------------------------------------
def _hash_file(h, path: Path) -> None:
    st = path.stat()
    h.update(f"{path.name}:{st.st_size}".encode())
    if st.st_size <= _SMALL_FILE:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    else:
        h.update(str(st.st_mtime_ns).encode())


def fingerprint_dir(path: Path, names: tuple[str, ...] | None = None) -> str:
    """Content hash of a model folder (large weight shards by size+mtime, the rest by content)."""
    h = hashlib.sha256()
    files = sorted(p for p in Path(path).iterdir() if p.is_file()) if names is None else [Path(path) / n for n in names]
    for p in files:
        if p.is_file():
            _hash_file(h, p)
    return h.hexdigest()


def adapter_fingerprint(run_dir: Path) -> str:
    """Full content hash of the adapter (config + weights): a retrained adapter never reuses."""
    h = hashlib.sha256()
    for name in ("adapter_config.json", *ADAPTER_WEIGHTS):
        p = Path(run_dir) / name
        if p.is_file():
            h.update(name.encode())
            with open(p, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
    return h.hexdigest()


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


# -- plan ----------------------------------------------------------------------------
IMATRIX_SUFFIX = "@imatrix"


@dataclass(frozen=True)
class OllamaTarget:
    name: str
    gguf: Path
    quant: str   # the variant label: a type, or "<type>@imatrix"


@dataclass(frozen=True)
class ExportPlan:
    request: ExportRequest
    workdir: Path
    merge_yaml: Path
    merged_dir: Path
    gguf: Path
    quantized: dict[str, Path]       # variant label → file: what is delivered, plus plain comparators
    targets: tuple[OllamaTarget, ...]
    keys: dict[str, str] = field(default_factory=dict)
    imatrix: Path | None = None
    eval_dir: Path | None = None

    def stamp_path(self, stage: str) -> Path:
        return self.workdir / ".stamps" / f"{stage}.json"

    @staticmethod
    def qtype(label: str) -> str:
        return label.split("@", 1)[0]

    @property
    def delivered(self) -> list[str]:
        return [t.quant for t in self.targets if t.gguf != self.gguf]


def partial(path: Path) -> Path:
    """Where a stage writes before its output is complete; renamed into place at the end."""
    return path.with_name(path.name + ".partial")


def make_plan(data_dir: Path, request: ExportRequest, eval_digest: str = "", calib_digest: str = "") -> ExportPlan:
    """Paths and reuse keys. `eval_digest`/`calib_digest` hash the evaluation and calibration texts."""
    base = request.base_model
    base_fp = fingerprint_dir(Path(base)) if os.path.isdir(base) else f"hub:{base}"
    if request.base_only:  # the base itself, shared by every run on it: content-keyed, named after the base
        merge_key = _key("base", base_fp, request.template)
        stem = slug(Path(base).name, 36) + "-base"
    elif not request.run.merges:  # a full or freeze fine-tune: the run's own weights are the model
        merge_key = _key("model", fingerprint_dir(Path(request.run.path)), request.template)
        stem = slug(request.run.name.replace("/", "-"), 40)
    else:
        merge_key = _key("merge", [adapter_fingerprint(Path(a)) if os.path.isdir(a) else a
                                   for a in request.run.prior_adapters], adapter_fingerprint(Path(request.run.path)),
                         base_fp, request.template)
        stem = slug(request.run.name.replace("/", "-"), 40)
    convert_key = _key("convert", merge_key, request.dtype)
    workdir = Path(data_dir).resolve() / "exports" / f"{stem}-{merge_key[:10]}"
    gguf = workdir / f"{stem}-{request.dtype}.gguf"
    keys = {"merge": merge_key, "convert": convert_key, "chat": _key("chat", merge_key, request.template)}
    imatrix = None
    delivered: list[str] = []
    quantized: dict[str, Path] = {}
    if request.imatrix:
        imatrix = workdir / f"{stem}-imatrix-{calib_digest[:8]}.gguf"
        keys["imatrix"] = _key("imatrix", convert_key, calib_digest)
    for q in request.quant_types:
        label = q + IMATRIX_SUFFIX if request.imatrix else q
        delivered.append(label)
        quantized[label] = workdir / f"{stem}-{q}{'-imat' if request.imatrix else ''}.gguf"
        if request.imatrix and request.report and q not in IMATRIX_QUANT_TYPES:
            quantized[q] = workdir / f"{stem}-{q}.gguf"  # the same type without imatrix, for the report
    for label in quantized:
        q = ExportPlan.qtype(label)
        keys[f"quantize:{label}"] = _key("quantize", convert_key, q, keys["imatrix"]) \
            if label.endswith(IMATRIX_SUFFIX) else _key("quantize", convert_key, q)
    if eval_digest:
        keys["reference"] = _key("reference", convert_key, eval_digest)
        keys["hf-logits"] = _key("hf-logits", keys["reference"], merge_key, "peft-chain")
    targets: list[OllamaTarget] = []
    if not delivered:
        targets.append(OllamaTarget(request.ollama_name, gguf, request.dtype))
    elif len(delivered) == 1:
        targets.append(OllamaTarget(request.ollama_name, quantized[delivered[0]], delivered[0]))
    else:
        for label in delivered:
            q = ExportPlan.qtype(label)
            targets.append(OllamaTarget(f"{request.ollama_name}:{q.lower()}", quantized[label], label))
    merged = Path(base) if request.base_only else workdir / "merged"
    return ExportPlan(request, workdir, workdir / "merge.yaml", merged, gguf, quantized, tuple(targets),
                      keys, imatrix, workdir / "eval")
