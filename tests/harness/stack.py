"""Stand-in service containers carrying the stack's compose labels, removed after the test."""

from __future__ import annotations

import os
import time
import uuid

import docker

from app.docker_gateway import PROJECT_LABEL, SERVICE_LABEL

TEST_LABEL = "tunedeck.test"


def new_project_name() -> str:
    return "tdt" + uuid.uuid4().hex[:8]


def remove_leftovers(client: docker.DockerClient) -> None:
    """Containers left by an earlier, killed test run (never those of a session still running)."""
    for c in client.containers.list(all=True, filters={"label": TEST_LABEL}):
        owner = c.labels.get(TEST_LABEL, "")
        if owner.isdigit() and os.path.exists(f"/proc/{owner}"):
            continue
        try:
            c.remove(force=True)
        except docker.errors.APIError:
            pass


class Stack:
    def __init__(self, client: docker.DockerClient, project: str, image: str) -> None:
        self.client = client
        self.project = project
        self.image = image
        self.containers: list = []

    def run(self, service: str, command=("sleep", "86400"), *, labelled: bool = True, name: str | None = None,
            wait_running: bool = True, **kwargs):
        labels = {TEST_LABEL: str(os.getpid()), **kwargs.pop("labels", {})}
        # No bridge network unless asked: a new veth makes Chromium abort in-flight requests
        # (net::ERR_NETWORK_CHANGED), which would break browser tests at random.
        if "ports" not in kwargs:
            kwargs.setdefault("network_mode", "none")
        if labelled:
            labels.update({PROJECT_LABEL: self.project, SERVICE_LABEL: service})
        container = self.client.containers.run(
            kwargs.pop("image", self.image), None if command is None else list(command), detach=True, labels=labels,
            name=name or f"{self.project}-{service}-{len(self.containers) + 1}", init=kwargs.pop("init", True),
            **kwargs,
        )
        self.containers.append(container)
        if wait_running:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                container.reload()
                if container.status == "running":
                    break
                time.sleep(0.1)
        return container

    def cleanup(self) -> None:
        for c in self.containers:
            try:
                c.remove(force=True)
            except docker.errors.APIError:
                pass
        self.containers.clear()
