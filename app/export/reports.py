"""A quantization report for a finished export, from its history row: the same request, report only."""

from __future__ import annotations

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
    return build_request(data_dir, run=req["run"], base_model=req["base_model"], template=template,
                         dtype=req["dtype"], quant_types=req["quant_types"], ollama_name=req["ollama_name"],
                         system_prompt=req.get("system_prompt") or "", overwrite=True,
                         imatrix=bool(req.get("imatrix")), report=True, kl_threshold=kl_threshold)
