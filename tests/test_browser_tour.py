"""Open TuneDeck through the real Caddy, click every tab, take the dashboard screenshot."""

import pytest
from playwright.sync_api import expect

from tests.harness.caddy import running_caddy

pytestmark = pytest.mark.browser
TABS = ["Services", "Dataset prep", "Datasets", "Training", "TensorBoard", "Train", "Runs", "Export", "Playground",
        "Storage"]


def test_every_tab_through_caddy(app_server, stack, caddy_bin, page, screenshots):
    stack.run("ollama")
    stack.run("llamacpp")
    with running_caddy({"TUNEDECK_UPSTREAM": f"127.0.0.1:{app_server.port}"}) as caddy:
        page.goto(caddy.url + "/")
        expect(page.locator("#status-table")).to_contain_text(f"{stack.project}-ollama-1")
        expect(page.locator("#status-summary")).to_contain_text("2 running")
        tabs = page.get_by_role("tab")
        expect(tabs).to_have_count(len(TABS))
        assert [t.strip() for t in tabs.all_inner_texts()] == TABS
        for name in TABS:
            page.get_by_role("tab", name=name, exact=True).click()
            expect(page.get_by_role("tab", name=name, exact=True)).to_have_attribute("aria-selected", "true")
        page.get_by_role("tab", name="Dataset prep").click()
        expect(page.locator("#frame-dataset")).to_contain_text("easy-dataset service has no container")
        page.get_by_role("tab", name="Services").click()
        page.screenshot(path=str(screenshots / "dashboard.png"), full_page=True)
