"""A quantization report for a finished export, from its history row: the same request, report only."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .history import History
from .plan import ExportRequest, build_request
from .validation import InvalidInput, check_text


def report_request(data_dir: Path, history: History, job_id: object, kl_threshold: object) -> ExportRequest:
    """The request of export `job_id`, asking for its report; one sentence when there is nothing to report on."""
    job_id = check_text("Export job", job_id or "", 64).strip()
    if not job_id:
        raise InvalidInput("Choose an export job (its id is in the history).")
    row = history.get(job_id)
    if row is None:
        raise InvalidInput(f"No export job {job_id!r} in the history.")
    if row["status"] != "succeeded":
        raise InvalidInput(f"Export job {job_id} did not finish ({row['status']}), so it has no GGUF to report on.")
    req, result = row["request"], row["result"] or {}
    if not req.get("quant_types"):
        raise InvalidInput(f"Export job {job_id} made no quantized GGUF (it loaded the GGUF as converted); "
                           "export again with quantization types to compare them.")
    missing = [name for name, art in (result.get("artifacts") or {}).items() if not Path(art["file"]).is_file()]
    if missing or not result.get("artifacts"):
        raise InvalidInput(f"The GGUF files of export job {job_id} are gone ({', '.join(missing) or 'none listed'}); "
                           "export the run again.")
    template = (result.get("template") or {}).get("name") or req.get("template") or ""
    request = build_request(data_dir, run=req["run"], base_model=req["base_model"], template=template,
                            dtype=req["dtype"], quant_types=req["quant_types"], ollama_name=req["ollama_name"],
                            system_prompt=req.get("system_prompt") or "", overwrite=True,
                            imatrix=bool(req.get("imatrix")), report=True, kl_threshold=kl_threshold)
    return replace(request, template_source="run")  # the export's own template, not one chosen by hand


def _export_row(history: History, job_id: str) -> dict:
    row = history.get(job_id)
    if row is None:
        raise InvalidInput(f"No export job {job_id!r} in the history.")
    if row["status"] != "succeeded" or (row["request"] or {}).get("base_only"):
        raise InvalidInput(f"Export job {job_id} is not a finished export of a fine-tune.")
    return row


def base_request(data_dir: Path, history: History, job_id: object = "", run: object = "") -> ExportRequest:
    """"Compare with base": the run's base model exported like the fine-tune of export `job_id` (or of the
    newest finished export of `run`): same template, dtype and quantization, named `<name>-base`."""
    job_id = check_text("Export job", job_id or "", 64).strip()
    run = check_text("Run", run or "", 1024).strip()
    if not job_id:
        if not run:
            raise InvalidInput("Choose a run or an export job to compare with its base model.")
        row = next((r for r in history.recent(500) if r["run"] == run and r["status"] == "succeeded"
                    and not (r["request"] or {}).get("base_only")), None)
        if row is None:
            raise InvalidInput(f"Run {run!r} has no finished export yet; export it first, then compare.")
    else:
        row = _export_row(history, job_id)
    req, result = row["request"], row["result"] or {}
    template = (result.get("template") or {}).get("name") or req.get("template") or ""
    name = base_name(req["ollama_name"])
    probe = build_request(data_dir, run=req["run"], base_model=req["base_model"], template=template,
                          dtype=req["dtype"], quant_types=req["quant_types"], ollama_name=name,
                          system_prompt=req.get("system_prompt") or "", report=False, base_only=True)
    # replace only what TuneDeck itself loaded there: a model of the user's own of that name is refused
    ours = all(history.last_loaded_key(target) for target in target_names(probe))
    return replace(probe, overwrite=ours, template_source="run", compare_to=req["ollama_name"])


def base_name(tuned: str) -> str:
    """`bot` → `bot-base`, `bot:v1` → `bot-base:v1`, `me/bot:v1` → `me/bot-base:v1`."""
    repo, _, tag = tuned.rpartition(":") if ":" in tuned.rsplit("/", 1)[-1] else (tuned, "", "")
    return f"{repo}-base" + (f":{tag}" if tag else "")


def target_names(request: ExportRequest) -> list[str]:
    """The Ollama names an export creates (one per quantized type when there are several)."""
    if len(request.quant_types) > 1:
        return [f"{request.ollama_name}:{q.lower()}" for q in request.quant_types]
    return [request.ollama_name]


def model_pair(request: ExportRequest) -> list[str]:
    """The Ollama names of the fine-tune and of its base, for the Playground (first quantized type)."""
    base = request.ollama_name
    tuned = request.compare_to or base
    if len(request.quant_types) > 1:
        tag = ":" + request.quant_types[0].lower()
        return [tuned + tag, base + tag]
    return [tuned, base]
