"""An existing Ray cluster, through its documented HTTP APIs: the Jobs API (submit, status, stop, logs;
what `JobSubmissionClient` and `ray job submit` call) and the state API's log stream (what
`ray.util.state.get_log(follow=True)` reads).

Plain httpx instead of the `ray` package: the dashboard stays a small image, and the cluster may run
any Ray version that speaks these routes.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

import httpx

log = logging.getLogger(__name__)
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class RayUnavailable(Exception):
    """The Ray cluster does not answer or refused a request; the message is one sentence."""


class RayJobs:
    def __init__(self, address: str, timeout: float = 10.0) -> None:
        self.address = address.rstrip("/")
        self._client = httpx.Client(base_url=self.address, timeout=timeout)

    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            res = self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise RayUnavailable(f"The Ray cluster at {self.address} does not answer ({type(exc).__name__}).") \
                from None
        if res.status_code >= 400:
            detail = res.text.strip().splitlines()[-1][:300] if res.text.strip() else f"HTTP {res.status_code}"
            raise RayUnavailable(f"The Ray cluster refused {method} {path.split('?')[0]}: {detail}")
        return res

    def version(self) -> dict:
        return self._request("GET", "/api/version").json()

    def resources(self) -> dict[str, tuple[float, float]]:
        """{resource: (used, total)} over the cluster (CPU, GPU, memory, custom resources)."""
        data = self._request("GET", "/api/cluster_status", params={"format": "0"}).json()
        usage = (((data.get("data") or {}).get("clusterStatus") or {}).get("loadMetricsReport") or {}).get("usage") or {}
        return {k: (float(v[0]), float(v[1])) for k, v in usage.items() if isinstance(v, list) and len(v) == 2}

    def submit(self, submission_id: str, entrypoint: str, *, env: dict[str, str] | None = None,
               num_cpus: float | None = None, num_gpus: float | None = None,
               resources: dict[str, float] | None = None, metadata: dict[str, str] | None = None) -> str:
        body: dict = {"entrypoint": entrypoint, "submission_id": submission_id,
                      "runtime_env": {"env_vars": env or {}}, "metadata": metadata or {}}
        if num_cpus is not None:
            body["entrypoint_num_cpus"] = num_cpus
        if num_gpus is not None:
            body["entrypoint_num_gpus"] = num_gpus
        if resources:
            body["entrypoint_resources"] = resources
        return self._request("POST", "/api/jobs/", json=body).json().get("submission_id", submission_id)

    def status(self, submission_id: str) -> dict:
        """The job's details: `status` (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED), `message`, ..."""
        return self._request("GET", f"/api/jobs/{submission_id}").json()

    def stop(self, submission_id: str) -> bool:
        return bool(self._request("POST", f"/api/jobs/{submission_id}/stop").json().get("stopped"))

    def logs(self, submission_id: str) -> str:
        return str(self._request("GET", f"/api/jobs/{submission_id}/logs").json().get("logs") or "")

    def follow_logs(self, submission_id: str, on_text: Callable[[str], None], stop: threading.Event) -> None:
        """Stream the job's output as the driver prints it until `stop` is set (closed from its thread)."""
        params = {"submission_id": submission_id, "lines": "-1", "interval": "0.5", "filter_ansi_code": "true"}
        timeout = httpx.Timeout(10.0, read=None)
        with httpx.Client(base_url=self.address, timeout=timeout) as client:
            with client.stream("GET", "/api/v0/logs/stream", params=params) as res:
                if res.status_code != 200:
                    raise RayUnavailable(f"The Ray cluster gave no log stream for {submission_id} "
                                         f"(HTTP {res.status_code}).")
                closer = threading.Thread(target=lambda: (stop.wait(), res.close()), daemon=True)
                closer.start()
                try:
                    for chunk in res.iter_text():
                        if stop.is_set():
                            return
                        if chunk:
                            on_text(chunk)
                except httpx.HTTPError:
                    if not stop.is_set():
                        raise

    def close(self) -> None:
        self._client.close()
