"""The training queue on a real Ray cluster (a head and two worker nodes on this machine, one CPU each):
jobs go through the Ray Jobs API, two train at once on different nodes, a third waits for a free node,
a cancel stops a running one, logs stream into the app, results land in saves/ and export."""

from __future__ import annotations

import httpx
import psutil
import pytest
from gradio_client import Client

from app.auth import make_checker
from tests.harness import zoo
from tests.harness.appserver import running_app, settings_for
from tests.harness.caddy import running_caddy
from tests.harness.parts import wait_for
from tests.harness.toolbox import start_llamacpp, start_llamafactory, start_ollama
from tests.harness.training import log_steps, ray_cluster, train_yaml, wait_jobs

pytestmark = pytest.mark.tools
USER, PASSWORD = "admin", "Ray-Tab-Pw-3"


def trainers_on_host(config_part: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "llamafactory-cli" in cmd and config_part in cmd:
            found.append(p)
    return found


def test_ray_cluster_runs_two_at_once_queues_the_third_cancels_and_exports(stack, tmp_path):
    data = tmp_path / "data"
    zoo.install(data, ("llama2",))
    start_llamafactory(stack, data)  # LLaMA-Factory's own parser checks each config before it goes to Ray
    start_llamacpp(stack, data)
    ollama = start_ollama(stack)
    saves = data / "saves" / "llama2" / "lora"
    with ray_cluster(("nodeA", "nodeB"), cpus_per_worker=1) as ray:
        settings = settings_for(tunedeck_project=stack.project, tunedeck_data_dir=str(data),
                                tunedeck_ollama_url=ollama.url, tunedeck_ray_address=ray.address)
        with running_app(settings, auth=make_checker({USER: PASSWORD})) as app:
            client = Client(app.url, auth=(USER, PASSWORD), verbose=False)
            with pytest.raises(Exception, match="give a number of GPUs"):
                client.predict(train_yaml(data, "r0", 10), "all", "ray", 0, 1, None, api_name="/train")
            with pytest.raises(Exception, match="The job asks for 4 CPUs; the Ray cluster has 2"):
                client.predict(train_yaml(data, "r0", 10), "0", "ray", 0, 4, None, api_name="/train")
            with pytest.raises(Exception, match="ray_num_workers 2 needs 2 GPUs on the cluster; it has 0"):
                client.predict(train_yaml(data, "r0", 10, ray_num_workers=2), "0", "ray", 0, 1, None,
                               api_name="/train")
            # the first two train until cancelled, so both nodes stay busy while the third is checked
            first = client.predict(train_yaml(data, "r1", 5000, save_steps=5000), "0", "ray", 0, 1, None,
                                   api_name="/train")
            second = client.predict(train_yaml(data, "r2", 5000, save_steps=5000), "0", "ray", 0, 1, None,
                                    api_name="/train")
            third = client.predict(train_yaml(data, "r3", 10), "0", "ray", 0, 1, None, api_name="/train")
            jobs = wait_jobs(client, lambda j: ray_status(app, j[first["id"]]) == "RUNNING"
                             and ray_status(app, j[second["id"]]) == "RUNNING", 120, "two Ray jobs running")
            nodes = {handle(app, first["id"]).get("node_id"), handle(app, second["id"]).get("node_id")}
            assert nodes == set(ray.nodes.values()), "the two trainings did not land on different nodes"
            wait_for(lambda: ray_status(app, jobs[third["id"]]) == "PENDING", 10, 0.2, "the third job pending")
            # logs stream into the app while they train
            wait_for(lambda: log_steps(saves / "r1"), 180, 0.5, "the first Ray job logging steps")
            log = wait_for(lambda: (t := client.predict(first["id"], False, api_name="/train_log"))
                           and "'loss'" in t and t, 60, 0.5, "trainer output in /train_log")
            assert "attempt 1, from the start, on the Ray cluster" in log
            assert ray_status(app, jobs[third["id"]]) == "PENDING"  # both nodes are still busy
            client.predict(first["id"], "cancel", api_name="/train_control")
            wait_jobs(client, lambda j: j[first["id"]]["state"] == "cancelled", 60, "first cancelled")
            assert max(log_steps(saves / "r1")) < 5000
            wait_for(lambda: not trainers_on_host(first["id"]), 20, 0.5,
                     "no trainer of the cancelled job left")
            # the freed node takes the third job
            wait_jobs(client, lambda j: j[third["id"]]["state"] == "succeeded", 300, "third succeeded")
            assert handle(app, third["id"])["node_id"] == handle(app, first["id"])["node_id"]
            assert max(log_steps(saves / "r3")) == 10 and (saves / "r3" / "adapter_model.safetensors").is_file()
            client.predict(second["id"], "cancel", api_name="/train_control")
            wait_jobs(client, lambda j: j[second["id"]]["state"] == "cancelled", 60, "second cancelled")
            on_ray = {j.get("submission_id"): j["status"] for j in ray.jobs()}
            assert [on_ray[f"tunedeck-{j['id']}-1"] for j in (first, second, third)] == \
                ["STOPPED", "STOPPED", "SUCCEEDED"]
            # the Ray dashboard tab: the cluster's own dashboard under /ray/ behind Caddy and the same login
            dashboard_tab_is_behind_the_login(app, ray)
            # a run trained on the cluster exports like any other
            job = client.submit("llama2/lora/r3", "", "", "f16", [], "r3-bot", "", False, False, False, 0.05,
                                api_name="/export")
            _, final = job.result(timeout=600)
            assert final["status"] == "succeeded", final.get("error")
            client.close()


def handle(app, job_id: str) -> dict:
    return app.runtime.training.store.get(job_id).handle


def ray_status(app, job: dict) -> str:
    return handle(app, job["id"]).get("ray_status", "")


def dashboard_tab_is_behind_the_login(app, ray) -> None:
    assert '"elem_id":"tab-ray"' in httpx.get(app.url + "/config", timeout=10, cookies=session(app.url)).text \
        .replace(" ", "")
    upstreams = {"TUNEDECK_UPSTREAM": f"127.0.0.1:{app.port}", "RAY_DASHBOARD_UPSTREAM": ray.address}
    with running_caddy(upstreams) as caddy:
        page = httpx.get(caddy.url + "/ray/", headers={"Accept": "text/html"}, timeout=10)
        api = httpx.get(caddy.url + "/ray/api/jobs/", timeout=10)
        assert page.status_code == 302 and page.headers["location"] == "/"
        assert api.status_code == 401
        with httpx.Client(timeout=10) as c:
            assert c.post(caddy.url + "/login", data={"username": USER, "password": PASSWORD}).status_code == 200
            page = c.get(caddy.url + "/ray/")
            assert page.status_code == 200 and "<title>Ray Dashboard</title>" in page.text
            assert 'src="./static/js/' in page.text  # relative assets: the dashboard works under /ray/
            jobs = c.get(caddy.url + "/ray/api/jobs/").json()
            assert {j.get("submission_id") for j in jobs} == {j.get("submission_id") for j in ray.jobs()}


def session(url: str) -> dict:
    r = httpx.post(url + "/login", data={"username": USER, "password": PASSWORD}, timeout=10)
    assert r.status_code == 200
    return dict(r.cookies)
