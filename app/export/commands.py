"""Pure builders of the tool commands the pipeline runs in the tool containers.

These are the only producers of `ToolCommand`: user text travels as one argv slot or as a
YAML value, never through a shell.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..config import Settings
from ..docker_gateway import ToolCommand


def merge_yaml(base_model: str, adapters: list[str], template: str, export_dir: str, extra: dict | None = None) -> str:
    """LLaMA-Factory `export` config: merge the LoRA adapters into the base model on CPU, in order (a run
    trained on top of other adapters lists them first, as training merged them)."""
    config = {
        "model_name_or_path": base_model,
        "adapter_name_or_path": ",".join(adapters),
        "template": template,
        "finetuning_type": "lora",
        "trust_remote_code": True,
        "export_dir": export_dir,
        "export_size": 5,
        "export_device": "cpu",
        "export_legacy_format": False,
        **(extra or {}),  # e.g. resize_vocab and the tokens training added (app.export.vocab)
    }
    # ASCII-only output: every other character is written as an escape, so no value (a NEL or a line
    # separator in a path, say) can be folded or re-read differently by LLaMA-Factory's YAML loader.
    return yaml.safe_dump(config, sort_keys=False, allow_unicode=False, width=1 << 16)


def merge_command(settings: Settings, yaml_path: Path) -> ToolCommand:
    return ToolCommand(settings.llamafactory_service, (settings.llamafactory_cli, "export", str(yaml_path)))


def convert_command(settings: Settings, merged_dir: Path, dtype: str, outfile: Path) -> ToolCommand:
    return ToolCommand(
        settings.llamacpp_service,
        ("python3", settings.convert_script, str(merged_dir), "--outtype", dtype, "--outfile", str(outfile)),
    )


def quantize_command(settings: Settings, source: Path, outfile: Path, quant_type: str,
                     imatrix: Path | None = None) -> ToolCommand:
    extra = ("--imatrix", str(imatrix)) if imatrix else ()
    return ToolCommand(settings.llamacpp_service, (settings.quantize_bin, *extra, str(source), str(outfile), quant_type))


# -- evaluation (llama.cpp's tools and TuneDeck's helper in the LLaMA-Factory container) ---------------
EVAL_CTX = 128     # context of each perplexity chunk; half of it is scored
EVAL_CHUNKS = 12   # at most this many chunks: ~750 scored tokens


def reference_logits_command(settings: Settings, gguf: Path, text: Path, out: Path) -> ToolCommand:
    """llama-perplexity on `text`, writing the model's log-probabilities to `out` (--kl-divergence-base)."""
    return ToolCommand(settings.llamacpp_service, (
        settings.perplexity_bin, "-m", str(gguf), "-f", str(text), "-c", str(EVAL_CTX), "--chunks", str(EVAL_CHUNKS),
        "-b", str(EVAL_CTX * 4), "--kl-divergence-base", str(out)))


def kl_divergence_command(settings: Settings, gguf: Path, reference: Path) -> ToolCommand:
    """llama-perplexity comparing `gguf` with a reference logits file: PPL, KLD statistics, same top token."""
    return ToolCommand(settings.llamacpp_service, (
        settings.perplexity_bin, "-m", str(gguf), "-c", str(EVAL_CTX), "-b", str(EVAL_CTX * 4),
        "--kl-divergence-base", str(reference), "--kl-divergence"))


def imatrix_command(settings: Settings, gguf: Path, text: Path, out: Path) -> ToolCommand:
    return ToolCommand(settings.llamacpp_service, (
        settings.imatrix_bin, "-m", str(gguf), "-f", str(text), "-o", str(out), "-c", str(EVAL_CTX),
        "--chunks", "64", "-b", str(EVAL_CTX * 4), "--no-ppl"))


def bench_command(settings: Settings, gguf: Path, tokens: int = 32) -> ToolCommand:
    """llama-bench, generation only: tokens per second of `gguf` on this host."""
    return ToolCommand(settings.llamacpp_service, (
        settings.bench_bin, "-m", str(gguf), "-p", "0", "-n", str(tokens), "-r", "2", "-o", "json"))


def tokenize_command(settings: Settings, gguf: Path, text: Path) -> ToolCommand:
    """llama.cpp's own tokenizer on `gguf`'s vocabulary (weights are not loaded): the ids a runtime feeds
    the model for the text in `text`, special tokens parsed and BOS added as the GGUF says."""
    return ToolCommand(settings.llamacpp_service, (
        settings.tokenize_bin, "-m", str(gguf), "-f", str(text), "--ids", "--no-escape"))


_SCRIPTS = Path(__file__).with_name("scripts")
HELPERS = {"prepare": "templates.py", "hf-logits": "logits.py"}
HELPER_ENV = (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("DISABLE_VERSION_CHECK", "1"),
              ("TOKENIZERS_PARALLELISM", "false"))


def helper_command(settings: Settings, command: str, *args: str) -> ToolCommand:
    """One of TuneDeck's helpers (app/export/scripts/) run by LLaMA-Factory's own Python in its container."""
    source = (_SCRIPTS / "common.py").read_text() + "\n\n" + (_SCRIPTS / HELPERS[command]).read_text()
    return ToolCommand(settings.llamafactory_service, (settings.python, "-c", source, command, *args),
                       env=HELPER_ENV)
