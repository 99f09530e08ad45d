"""The dashboard serves its page without a Docker engine, says so, and recovers by itself."""

import re

import httpx
from playwright.sync_api import expect

from tests.harness.appserver import running_app, settings_for
from tests.harness.sockproxy import UnixSocketProxy


def test_page_loads_without_engine_and_recovers(tmp_path, page, stack):
    sock = str(tmp_path / "docker.sock")
    settings = settings_for(docker_host=f"unix://{sock}", tunedeck_project=stack.project,
                            tunedeck_data_dir=str(tmp_path))
    proxy = UnixSocketProxy(sock)
    with running_app(settings) as app:
        assert httpx.get(app.url + "/").status_code == 200
        page.goto(app.url)
        banner = page.locator("#engine-banner")
        expect(banner).to_contain_text(f"Docker engine not reachable at unix://{sock}", timeout=20_000)

        stack.run("ollama")
        proxy.start()  # the engine "comes back"
        try:
            expect(page.locator("#status-summary")).to_contain_text("engine reachable", timeout=15_000)
            expect(banner).not_to_contain_text("not reachable")
            expect(page.locator("#status-table")).to_contain_text(f"{stack.project}-ollama-1")

            proxy.stop()  # and goes away again
            expect(banner).to_contain_text("Docker engine not reachable", timeout=15_000)
            expect(page.locator("#status-summary")).to_have_text(re.compile("not reachable"))
        finally:
            proxy.stop()
