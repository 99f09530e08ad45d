"""What TuneDeck counts as safe to delete, and why: pure functions over plain facts (no disk, no Docker).

Safe means a later action rebuilds it, or nothing ever reads it again:
- a merged folder once its GGUF passed fidelity: the GGUF is the export's product and was checked against
  the merged weights; a re-export merges again (the merge stage's reuse needs the folder);
- checkpoints other than the last and the best (best by eval loss, else train loss; the trainer's own
  `best_model_checkpoint` first): the last is where training stops or resumes, the best is the one worth
  exporting; a checkpoint another run was trained on top of is kept too;
- a stale `.partial` of no running job: a tool was stopped mid-write, nothing reads it;
- an export folder no history row knows: nothing in TuneDeck refers to it.
Nothing a running job uses is ever safe: the running export's folder, run and base, a run still training.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    safe: bool
    reason: str


def _loss(value: float | None) -> str:
    return "no loss logged" if value is None else f"{value:.4g}"


def best_checkpoint(steps: list[int], losses: dict[int, float], eval_losses: dict[int, float],
                    trainer_best: int | None) -> tuple[int | None, str]:
    """(step, how it was chosen) of the best checkpoint: the trainer's own choice; else the lowest eval loss
    logged at a checkpoint's step (the trainer evaluates where it saves when it keeps a best), else at or
    before it; else the lowest train loss logged at or before each step. Ties go to the later step."""
    if trainer_best in steps:
        return trainer_best, "the trainer's best_model_checkpoint"
    exact = {s: eval_losses[s] for s in steps if s in eval_losses}
    for label, value_at in (("eval loss", exact.get if exact else lambda s: at(eval_losses, s)),
                            ("train loss", lambda s: at(losses, s))):
        scored = [(value_at(s), s) for s in steps]
        scored = [(v, s) for v, s in scored if v is not None]
        if scored:
            value, step = min(scored, key=lambda vs: (vs[0], -vs[1]))
            return step, f"lowest {label}, {_loss(value)}"
    return None, "no loss logged"


def at(series: dict[int, float], step: int) -> float | None:
    """The last value logged at or before `step`."""
    earlier = [s for s in series if s <= step]
    return series[max(earlier)] if earlier else None


def checkpoint_verdicts(steps: list[int], losses: dict[int, float], eval_losses: dict[int, float],
                        trainer_best: int | None = None, has_final: bool = True,
                        kept_for: dict[int, str] | None = None) -> dict[int, Verdict]:
    """A verdict for each checkpoint step of one run that no longer trains. `kept_for`: steps kept for
    another reason (another run was trained on top of it), with that reason."""
    if not steps:
        return {}
    kept_for = kept_for or {}
    last = max(steps)
    best, how = best_checkpoint(steps, losses, eval_losses, trainer_best)
    kept = f"checkpoint-{last} (last)" + ("" if best in (None, last) else f" and checkpoint-{best} (best)")
    out: dict[int, Verdict] = {}
    for step in steps:
        if step == last:
            out[step] = Verdict(False, "the last checkpoint: training resumes from it" if has_final else
                                "the last checkpoint: the run has no final weights, so this is its model")
        elif step == best:
            out[step] = Verdict(False, f"the best checkpoint ({how})")
        elif step in kept_for:
            out[step] = Verdict(False, kept_for[step])
        else:
            out[step] = Verdict(True, f"neither the last nor the best checkpoint (best: {how}); {kept} stay"
                                      + (", with the run's final weights" if has_final else ""))
    return out


def merged_verdict(exports: list[dict]) -> Verdict:
    """The merged folder of one export folder, from its history rows: each {"job", "status", "verdict",
    "gguf", "gguf_present"} (verdict: the fidelity verdict, gguf: the checked GGUF's file name)."""
    passed = [e for e in exports if e.get("status") == "succeeded" and e.get("verdict") == "ok"]
    present = [e for e in passed if e.get("gguf_present")]
    if present:
        e = present[-1]
        return Verdict(True, f"its GGUF {e['gguf']} passed fidelity (export job {e['job']}); a re-export merges "
                             "again")
    if passed:
        return Verdict(False, f"its GGUF passed fidelity (export job {passed[-1]['job']}) but is gone: the merged "
                              "weights are all that is left of this export")
    warned = [e for e in exports if e.get("status") == "succeeded" and e.get("verdict") == "warning"]
    if warned:
        return Verdict(False, f"its GGUF did not pass fidelity (export job {warned[-1]['job']}): the merged "
                              "weights are the reference to compare with")
    return Verdict(False, "no export from it passed fidelity yet")


def partial_verdict(running_job: str | None, in_running_folder: bool) -> Verdict:
    if in_running_folder:
        return Verdict(False, f"being written by the running export (job {running_job})")
    return Verdict(True, "a tool stopped while writing it, and no running job writes it; nothing reads a "
                         ".partial")


def orphan_verdict() -> Verdict:
    return Verdict(True, "no export in the history made this folder; nothing in TuneDeck refers to it")


def staging_verdict(running_job: str | None) -> Verdict:
    """An Ollama model named `tunedeck-check-…`: the staging copy an export checks before the real name."""
    if running_job:
        return Verdict(False, f"an export is running (job {running_job}) and may be checking it")
    return Verdict(True, "a staging copy left by an interrupted export; no export is running")


def format_bytes(n: int | float | None) -> str:
    if n is None:
        return "unknown"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
