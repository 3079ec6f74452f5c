"""The dashboard in a real headless Chromium (Debian's, driven by Playwright; no browser download)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, sync_playwright

from tests.server_process import TOKEN, ServerProcess

CHROMIUM = "/usr/bin/chromium"
# The machine has no network: without these Chromium keeps trying to reach Google's hosts.
OFFLINE_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
COMPLETED = "rgb(46,158,91)"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[BrowserContext]:
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=OFFLINE_FLAGS,
            viewport={"width": 1280, "height": 820})
        try:
            yield context
        finally:
            context.close()


def open_dashboard(browser: BrowserContext, server: ServerProcess) -> Page:
    page = browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("requestfailed", lambda request: problems.append(f"{request.url}: {request.failure}")
            if "/events" not in request.url else None)  # a stream aborted on purpose is no problem
    page.goto(f"{server.url}/dashboard#token={TOKEN}")
    page.wait_for_selector("#app:not([hidden])")
    page.problems = problems  # type: ignore[attr-defined]
    return page


def test_start_a_plan_and_watch_its_nodes_turn_complete(browser: BrowserContext, tmp_path: Path) -> None:
    with ServerProcess(tmp_path, delay=0.4) as server:
        page = open_dashboard(browser, server)
        assert TOKEN not in page.url  # taken from the fragment, then dropped from the address
        page.fill("#vibe", "a launch blog post for our coffee brand")
        page.fill("#constraints", "under 800 words; mention the roastery")
        page.click("#submit-form button")
        page.wait_for_function("window.vibePlanner.cy && window.vibePlanner.cy.nodes().length === 12")
        # Live: a node is seen running (from its node_started event) before the run ends.
        page.wait_for_function("Object.values(window.vibePlanner.nodes).some(n => n.status === 'running')")
        if os.environ.get("DASHBOARD_SCREENSHOT"):  # how docs/service-dashboard.png is made
            page.wait_for_function(
                "Object.values(window.vibePlanner.nodes).filter(n => n.status === 'completed').length >= 5")
            page.screenshot(path=os.environ["DASHBOARD_SCREENSHOT"])
        page.wait_for_function(
            "Object.values(window.vibePlanner.nodes).filter(n => n.status === 'completed').length === 12")
        page.wait_for_selector("#plan-status.completed")
        colours = page.evaluate("window.vibePlanner.cy.nodes().map(n => n.style('background-color'))")
        assert set(colours) == {COMPLETED}
        assert page.locator("#nodes tbody tr[data-status=completed]").count() == 12
        page.wait_for_selector("#checkpoints tbody tr:has-text('final')")
        page.wait_for_selector("#plans tbody tr:has-text('completed')")
        assert page.problems == []  # type: ignore[attr-defined]
        assert TOKEN not in server.log


def test_the_page_asks_for_the_token_and_cancels_a_running_plan(
    browser: BrowserContext, tmp_path: Path,
) -> None:
    with ServerProcess(tmp_path, delay=60) as server:
        page = browser.new_page()
        page.goto(f"{server.url}/dashboard")
        page.wait_for_selector("#login:not([hidden])")
        page.fill("#token", "not-the-token-at-all")
        page.click("#login-form button")
        page.wait_for_selector("#login-error:has-text('sign in')")
        page.fill("#token", TOKEN)
        page.click("#login-form button")
        page.wait_for_selector("#app:not([hidden])")
        page.fill("#vibe", "a slow plan")
        page.click("#submit-form button")
        page.wait_for_function("Object.values(window.vibePlanner.nodes).some(n => n.status === 'running')")
        page.click("#cancel-button")
        page.wait_for_selector("#plan-status.cancelled")
        page.wait_for_selector("#checkpoints tbody tr:has-text('cancelled')")


def test_a_pending_request_is_approved_from_the_page(browser: BrowserContext, tmp_path: Path) -> None:
    with ServerProcess(tmp_path) as server:
        page = open_dashboard(browser, server)
        page.fill("#vibe", "a press release for the new roastery")
        page.fill("#constraints", "must be approved by legal")
        page.click("#submit-form button")
        page.wait_for_selector("#plan-status.waiting")
        page.wait_for_selector("#requests:not([hidden]) form.request[data-request-id]")
        assert page.locator("#nodes tbody tr[data-node-id=approval][data-status=waiting]").count() == 1
        page.fill("#requests input[name=comment]", "fine by legal")
        page.click("#requests button.approve")
        page.wait_for_selector("#plan-status.completed")
        assert page.locator("#requests").is_hidden()
        page.wait_for_function(
            "Object.values(window.vibePlanner.nodes).every(n => n.status === 'completed')")
        assert page.problems == []  # type: ignore[attr-defined]
