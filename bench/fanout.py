"""bench/fanout: 20 gradio_client followers of the same container. Reports the Docker log
streams the app holds (target: 1 per container), its unix-socket count and its RSS, against
the same app with no follower. Run: python bench/fanout.py [CLIENTS]
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import psutil
from _common import ROOT, new_stack, report, rss_mib

from tests.harness.appserver import running_app, settings_for

CLIENTS = int(sys.argv[1]) if len(sys.argv) > 1 else 20
FOLLOWERS = textwrap.dedent("""
    import sys, time
    from gradio_client import Client
    url, n = sys.argv[1], int(sys.argv[2])
    clients = [Client(url, verbose=False) for _ in range(n)]
    jobs = [c.submit("ollama", 200, "", False, True, api_name="/logs") for c in clients]
    print("started", flush=True)
    time.sleep(float(sys.argv[3]))
    seen = [len(j.outputs()) for j in jobs]
    print("updates", min(seen), max(seen), flush=True)
    for j in jobs:
        j.cancel()
    for c in clients:
        c.close()
""")


def unix_sockets() -> int:
    return len(psutil.Process().net_connections(kind="unix"))


def main() -> None:
    stack = new_stack()
    try:
        stack.run("ollama", ["sh", "-c", 'i=0; while true; do i=$((i+1)); echo "line $i"; sleep 0.01; done'])
        with running_app(settings_for(tunedeck_project=stack.project, tunedeck_data_dir="/tmp/td-bench")) as app:
            time.sleep(2)
            idle_rss, idle_socks = rss_mib(), unix_sockets()
            proc = subprocess.Popen([sys.executable, "-c", FOLLOWERS, app.url, str(CLIENTS), "20"], cwd=ROOT,
                                    stdout=subprocess.PIPE, text=True)
            assert proc.stdout.readline().startswith("started")
            time.sleep(8)
            streams, socks, rss = app.runtime.logs.open_streams(), unix_sockets(), rss_mib()
            time.sleep(8)
            rss = max(rss, rss_mib())
            updates = proc.stdout.readline().split()[1:]
            proc.wait(60)
            time.sleep(1.5)
            after = app.runtime.logs.open_streams()
        report("fanout", clients=CLIENTS, docker_log_streams=streams, streams_after_cancel=after,
               unix_sockets_idle=idle_socks, unix_sockets_following=socks, rss_idle_mib=round(idle_rss),
               rss_following_mib=round(rss), updates_per_client_min_max="/".join(updates))
    finally:
        stack.cleanup()


if __name__ == "__main__":
    main()
