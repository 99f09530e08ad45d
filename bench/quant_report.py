"""bench/quant_report: a quantization report through TuneDeck (/quant_report) divided by the same
llama.cpp commands run by hand (`docker exec` in the same llama.cpp container), on the same files.

The zoo's Llama 3 run is exported once (f16, Q8_0, Q4_K_M, Q2_K). Each side then computes the
report from scratch (its cached results removed): the f16 reference logits (llama-perplexity
--kl-divergence-base), one llama-perplexity --kl-divergence and one llama-bench per file. The
sides alternate three times; the medians are compared.   Target: ratio <= 1.05.
Run: python bench/quant_report.py
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from _common import new_stack, report

from app.export import commands
from app.export.evaltext import eval_set
from gradio_client import Client
from tests.harness.toolbox import tool_app
from tests.harness.zoo import install

TYPES = ["Q8_0", "Q4_K_M", "Q2_K"]
RUN = "llama3/lora/cli"


def clear(workdir: Path) -> None:
    for path in workdir.glob("eval/*.kld"):
        path.unlink()
    shutil.rmtree(workdir / "eval" / ".results", ignore_errors=True)
    shutil.rmtree(workdir / "by-hand", ignore_errors=True)


def by_hand(settings, container, workdir: Path, text: Path) -> float:
    out = workdir / "by-hand"
    out.mkdir(parents=True, exist_ok=True)
    f16 = next(workdir.glob("*-f16.gguf"))
    quants = [next(workdir.glob(f"*-{q}.gguf")) for q in TYPES]
    argvs = [commands.reference_logits_command(settings, f16, text, out / "ref.kld").argv,
             commands.bench_command(settings, f16).argv]
    for q in quants:
        argvs += [commands.kl_divergence_command(settings, q, out / "ref.kld").argv,
                  commands.bench_command(settings, q).argv]
    t0 = time.monotonic()
    for argv in argvs:
        subprocess.run(["docker", "exec", container.id, *argv], check=True, capture_output=True)
    return time.monotonic() - t0


def through_tunedeck(client: Client, job_id: str) -> tuple[float, dict]:
    t0 = time.monotonic()
    final = None
    for final in client.submit(job_id, 0.05, api_name="/quant_report"):
        pass
    assert final[1]["status"] == "succeeded", final[0][-2000:]
    return time.monotonic() - t0, final[1]["result"]["quant_report"]


def main() -> None:
    stack = new_stack()
    data = Path(tempfile.mkdtemp(prefix="td-bench-qr-")) / "data"
    try:
        install(data, ("llama3",))
        with tool_app(stack, data) as tools:
            app, cpp = tools.app, tools.llamacpp
            client = Client(app.url, verbose=False)
            final = None
            for final in client.submit(RUN, "", "", "f16", TYPES, "bench", "", True, False, False,
                                       api_name="/export"):
                pass
            job_id = final[1]["job_id"]
            workdir = Path(final[1]["result"]["workdir"])
            text = workdir / "eval" / f"eval-{eval_set(data, str(data / 'saves' / RUN)).digest[:12]}.txt"
            ours, hands = [], []
            for _ in range(3):
                clear(workdir)
                hands.append(by_hand(app.runtime.settings, cpp, workdir, text))
                clear(workdir)
                seconds, table = through_tunedeck(client, job_id)
                ours.append(seconds)
            client.close()
        hand, mine = statistics.median(hands), statistics.median(ours)
        for row in table["rows"]:  # the last report's table, for the record
            print(f"[quant_report] {row['type']:7} {row['bytes'] / 2**20:6.1f} MiB  PPL {row['ppl']:9.3f}  "
                  f"mean KLD {row['kld_mean']:.5f}  p99 KLD {row['kld_p99']:.5f}  same top {row['same_top']:6.2f}%  "
                  f"{row['tokens_per_s']:8.1f} tok/s")
        print(f"[quant_report] {table['recommendation']['text']}")
        report("quant_report", types=len(TYPES), by_hand_s=round(hand, 2), tunedeck_s=round(mine, 2),
               ratio=round(mine / hand, 3), target=1.05)
    finally:
        stack.cleanup()
        shutil.rmtree(data.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
