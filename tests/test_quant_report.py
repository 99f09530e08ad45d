"""Quantization report: which GGUF to ship, measured on the run's own data, with the real llama.cpp
tools (llama-perplexity, llama-imatrix, llama-bench) in their container, on the zoo's Llama 3 run."""

from __future__ import annotations

import shutil

import pytest
from gradio_client import Client

from tests.harness.appserver import wait_job_finished
from tests.harness.stack import Stack, new_project_name
from tests.harness.toolbox import run_tools_script, tool_app
from tests.harness.zoo import install

pytestmark = pytest.mark.tools
TYPES = ["Q8_0", "Q6_K", "Q4_K_M", "Q3_K_M", "Q2_K"]
RUN = "llama3/lora/cli"


@pytest.fixture(scope="module")
def env(docker_client, hosttools_image, tmp_path_factory):
    data = tmp_path_factory.mktemp("quant") / "data"
    install(data, ("llama3", "llama2"))
    nodata = data / "saves" / "llama2" / "lora" / "nodata"  # a run whose training data TuneDeck cannot read
    shutil.copytree(data / "saves" / "llama2" / "lora" / "cli", nodata)
    readme = nodata / "README.md"
    readme.write_text(readme.read_text().replace("on the stop_qa dataset", "on a private dataset"))
    # The same Llama 3 run on a base with the outlier channels trained models have (see the tool's note)
    run_tools_script("outlier_channels.py", str(data / "models" / "llama3"), str(data / "models" / "llama3-outliers"))
    outliers = data / "saves" / "llama3-outliers" / "lora" / "cli"
    shutil.copytree(data / "saves" / "llama3" / "lora" / "cli", outliers)
    for name in ("adapter_config.json", "README.md"):
        path = outliers / name
        path.write_text(path.read_text().replace(str(data / "models" / "llama3"), str(data / "models" / "llama3-outliers")))
    stack = Stack(docker_client, new_project_name(), hosttools_image)
    try:
        with tool_app(stack, data) as tools:
            client = Client(tools.app.url, verbose=False)
            yield {"data": data, "app": tools.app, "client": client}
            client.close()
    finally:
        stack.cleanup()


def stream(client, *args, api_name="/export", **kw):
    final = None
    for final in client.submit(*args, api_name=api_name, **kw):
        pass
    return final


def export_all_types(env) -> dict:
    if "report" not in env:
        log, status = stream(env["client"], RUN, "", "", "f16", TYPES, "qr", "", True, False, True, 0.05)
        assert status["status"] == "succeeded", log[-3000:]
        env["report"], env["job"], env["log"] = status["result"]["quant_report"], status["job_id"], log
    return env


def test_report_orders_the_types_and_recommends_under_the_threshold(env):
    export_all_types(env)
    report = env["report"]
    rows = {r["type"]: r for r in report["rows"]}
    assert list(rows) == ["f16", *TYPES]
    klds = [rows[t]["kld_mean"] for t in TYPES]
    assert klds == sorted(klds) and len(set(klds)) == len(klds), klds  # Q8_0 < Q6_K < Q4_K_M < Q3_K_M < Q2_K
    assert rows["Q8_0"]["same_top"] > 95
    for r in rows.values():
        assert r["bytes"] > 0 and r["ppl"] > 1 and r["tokens_per_s"] > 0
    assert [rows[t]["bytes"] for t in TYPES] == sorted((rows[t]["bytes"] for t in TYPES), reverse=True)
    rec = report["recommendation"]
    under = [t for t in TYPES if rows[t]["kld_mean"] < 0.05]
    if under:
        assert rec["type"] == min(under, key=lambda t: rows[t]["bytes"]) and rec["type"] in rec["text"]
    else:
        assert rec["type"] is None and "No type stays under" in rec["text"]
    assert report["eval"]["from_run"]
    print("\n[quant-report] " + " | ".join(
        f"{t}: {r['bytes'] / 2**20:.1f} MiB ppl {r['ppl']:.2f} kld {r['kld_mean']:.5f} p99 {r['kld_p99']:.5f} "
        f"top {r['same_top']:.1f}% {r['tokens_per_s']:.0f} tok/s" for t, r in rows.items()))
    print(f"[quant-report] {rec['text']}")


def test_report_on_a_finished_export_reuses_the_reference_and_follows_the_threshold(env):
    export_all_types(env)
    rows = {r["type"]: r for r in env["report"]["rows"]}
    tight = (rows["Q8_0"]["kld_mean"] + rows["Q6_K"]["kld_mean"]) / 2  # only Q8_0 is under it
    log, status = stream(env["client"], env["job"], tight, api_name="/quant_report")
    assert status["status"] == "succeeded", log[-2000:]
    assert status["result"]["quant_report"]["recommendation"]["type"] == "Q8_0"
    assert "reference logits of" in log and ": reused" in log
    log, status = stream(env["client"], env["job"], 1e-9, api_name="/quant_report")
    assert "No type stays under a mean KL divergence of 1e-09" in status["result"]["quant_report"]["recommendation"]["text"]


def test_a_second_export_of_the_same_gguf_reuses_the_reference_logits(env):
    export_all_types(env)
    log, status = stream(env["client"], RUN, "", "", "f16", ["Q4_K_M"], "qr-again", "", True)
    assert status["status"] == "succeeded", log[-2000:]
    assert "reference logits of" in log and "llama3-lora-cli-f16.gguf: reused" in log
    assert "[reference] $" not in log  # llama-perplexity did not write it again


def test_cancel_mid_report_leaves_no_partial_file(env):
    export_all_types(env)
    workdir = env["data"] / "exports"
    for folder in workdir.glob("*/eval"):
        shutil.rmtree(folder)  # the report must compute its reference again
    client = Client(env["app"].url, verbose=False)
    job = client.submit(env["job"], 0.05, api_name="/quant_report")
    partials = []
    for log, _status in job:
        if "[reference] $" in (log or ""):
            partials = list(workdir.rglob("*.kld.partial"))
            client.predict(api_name="/cancel_export")
            break
    job.cancel()
    client.close()
    assert partials, "the reference logits were not being written when cancelled"
    assert wait_job_finished(env["app"].runtime.exports).status == "cancelled"
    assert not list(workdir.rglob("*.partial"))


def test_importance_matrix_improves_q4_k_m_and_unlocks_iq_types(env):
    """On a model with outlier channels (67M parameters): a random-weight model has none, and there the
    importance matrix measurably does not help (Q4_K_M mean KLD 0.0007 plain, 0.0014 with it)."""
    log, status = stream(env["client"], "llama3-outliers/lora/cli", "", "", "f16", ["Q4_K_M", "IQ2_XS"],
                         "qr-imatrix", "", True, True)
    assert status["status"] == "succeeded", log[-3000:]
    rows = {r["type"]: r for r in status["result"]["quant_report"]["rows"]}
    assert {"Q4_K_M@imatrix", "Q4_K_M", "IQ2_XS@imatrix"} <= set(rows)
    assert "IQ2_XS" not in rows  # needs the imatrix: no plain twin
    plain, imat = rows["Q4_K_M"]["kld_mean"], rows["Q4_K_M@imatrix"]["kld_mean"]
    print(f"\n[imatrix] Q4_K_M mean KLD without imatrix {plain:.5f}, with imatrix {imat:.5f}")
    assert imat < plain
    assert status["stages"]["imatrix"] == "done"


@pytest.mark.parametrize("call,expected", [
    (("/quant_report", ("{job}", "abc")), "KL threshold must be a number, not 'abc'"),
    (("/quant_report", ("nope", 0.05)), "No export job 'nope' in the history"),
    (("/export", (RUN, "", "", "f16", ["IQ2_XS"], "qr-x", "", True, False)), "needs an importance matrix"),
])
def test_bad_report_inputs_are_one_sentence(env, call, expected):
    export_all_types(env)
    endpoint, args = call
    args = tuple(a.format(job=env["job"]) if isinstance(a, str) else a for a in args)
    with pytest.raises(Exception, match=expected) as err:
        env["client"].predict(*args, api_name=endpoint)
    assert "Traceback" not in str(err.value)


def test_imatrix_iq_type_without_training_text_and_report_without_gguf(env):
    log, status = stream(env["client"], "llama2/lora/nodata", "", "llama2", "f16", ["IQ2_XS"], "qr-nodata", "",
                         True, True)
    assert status["status"] == "failed" and status["stage"] == "preflight"
    assert "IQ2_XS need an importance matrix computed from the run's training text, which TuneDeck cannot read" \
        in status["error"]
    with pytest.raises(Exception, match="did not finish \\(failed\\), so it has no GGUF to report on"):
        env["client"].predict(status["job_id"], 0.05, api_name="/quant_report")
    export_all_types(env)  # its merge and f16 GGUF are reused: only the load and checks run again
    log, status = stream(env["client"], RUN, "", "", "f16", [], "qr-noquant", "", True)
    assert status["status"] == "succeeded", log[-2000:]
    with pytest.raises(Exception, match="made no quantized GGUF"):
        env["client"].predict(status["job_id"], 0.05, api_name="/quant_report")
