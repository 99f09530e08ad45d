"""An existing Ray cluster, through its documented HTTP APIs: the Jobs API (submit, status, stop, logs; what
`JobSubmissionClient` and `ray job submit` call) and the state API's node list (the cluster's resources).

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

    def totals(self) -> dict[str, float]:
        """{resource: total} over the cluster's live nodes (CPU, GPU, memory, custom resources), from the state
        API (the autoscaler's summary lags a node that just joined by seconds)."""
        data = self._request("GET", "/api/v0/nodes", params={"detail": "true", "limit": "10000"}).json()
        nodes = ((data.get("data") or {}).get("result") or {}).get("result") or []
        totals: dict[str, float] = {}
        for node in nodes:
            if node.get("state") != "ALIVE":
                continue
            for key, value in (node.get("resources_total") or {}).items():
                if isinstance(value, (int, float)):
                    totals[key] = totals.get(key, 0.0) + float(value)
        return totals

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

    def follow_logs(self, submission_id: str, on_text: Callable[[str], None], stop: threading.Event,
                    interval: float = 2.0) -> None:
        """Hand `on_text` the job's new output as the driver prints it, until `stop` is set. The Jobs API
        serves the whole log on each call, so the pause between calls grows with its size (2 s, plus 1 s per
        MB, at most 15 s)."""
        seen = 0
        while not stop.is_set():
            text = self.logs(submission_id)
            if len(text) > seen:
                on_text(text[seen:])
                seen = len(text)
            stop.wait(min(15.0, interval + seen / 1e6))

    def close(self) -> None:
        self._client.close()
