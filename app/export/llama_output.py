"""Parse what llama.cpp's tools print (pure functions, tested on their real output).

Formats from tools/perplexity/perplexity.cpp: "Final estimate: PPL = %.4lf +/- %.5lf" (stderr),
and after --kl-divergence (stdout) "Mean PPL(Q) : ...", "Mean    KLD: ...", "99.0%   KLD: ...",
"Same top p: %6.3lf ± %5.3lf %%". llama-bench -o json prints a JSON list with `avg_ts`.
"""

from __future__ import annotations

import json
import re

_NUM = r"(-?[\d.]+(?:[eE][-+]?\d+)?)"
_PATTERNS = {
    "ppl": re.compile(r"Final estimate: PPL = " + _NUM),
    "ppl_q": re.compile(r"Mean PPL\(Q\)\s*:\s*" + _NUM),
    "ppl_base": re.compile(r"Mean PPL\(base\)\s*:\s*" + _NUM),
    "kld_mean": re.compile(r"Mean\s+KLD:\s*" + _NUM),
    "kld_p99": re.compile(r"99\.0%\s+KLD:\s*" + _NUM),
    "kld_max": re.compile(r"Maximum KLD:\s*" + _NUM),
    "same_top": re.compile(r"Same top p:\s*" + _NUM),
}
_TOO_SHORT = re.compile(r"you need at least (\d+) tokens")


class ToolOutputError(ValueError):
    """The tool ran but did not print what was expected; the message says why in one sentence."""


def _find(name: str, text: str) -> float | None:
    match = None
    for match in _PATTERNS[name].finditer(text):
        pass
    return float(match.group(1)) if match else None


def perplexity(lines: list[str]) -> float:
    """The final perplexity of a plain llama-perplexity run (it exits 0 even when it computed nothing)."""
    text = "\n".join(lines)
    value = _find("ppl", text)
    if value is None:
        short = _TOO_SHORT.search(text)
        if short:
            raise ToolOutputError(f"the evaluation text is too short for llama-perplexity "
                                  f"(it needs at least {short.group(1)} tokens)")
        raise ToolOutputError("llama-perplexity printed no final perplexity")
    return value


def kl_divergence(lines: list[str]) -> dict:
    """PPL of the model, mean / 99th-percentile / maximum KL divergence and same-top-token % against the
    reference of a `--kl-divergence` run."""
    text = "\n".join(lines)
    out = {k: _find(k, text) for k in ("ppl_q", "ppl_base", "kld_mean", "kld_p99", "kld_max", "same_top")}
    if out["kld_mean"] is None or out["same_top"] is None:
        if "failed to open" in text or "does not look like" in text:
            raise ToolOutputError("llama-perplexity could not read the reference logits file")
        raise ToolOutputError("llama-perplexity printed no KL divergence statistics (fewer than 100 tokens scored?)")
    return out


def bench_tokens_per_second(lines: list[str]) -> float:
    """Generation tokens/s from `llama-bench -o json` (the test with n_gen > 0)."""
    text = "\n".join(lines)
    start, end = text.find("["), text.rfind("]")
    try:
        rows = json.loads(text[start:end + 1])
    except ValueError:
        raise ToolOutputError("llama-bench printed no JSON result") from None
    for row in rows:
        if row.get("n_gen", 0) > 0 and row.get("avg_ts"):
            return float(row["avg_ts"])
    raise ToolOutputError("llama-bench reported no generation speed")
