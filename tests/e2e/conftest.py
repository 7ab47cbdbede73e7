"""The web UI in a real browser (Debian's Chromium driven by Playwright) against a
real ``dicom-gw serve`` on its embedded PostgreSQL, serving the built UI.

The browser is the system's /usr/bin/chromium (``playwright install`` downloads
are not used); without it, or without a built UI, the tests skip, and fail
under CI=true. Screenshots of each page go to webui/e2e-screenshots/.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.api.conftest import Client
from tests.gateway import ADMIN_PASSWORD, Gateway, running

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).parents[2]
DIST = ROOT / "webui" / "dist"
SCREENSHOTS = ROOT / "webui" / "e2e-screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
# Fast retries and an early circuit, so that a stopped destination shows up in seconds.
FORWARDER_CONFIG = """\
forwarder:
  backoff_initial_s: 0.5
  backoff_max_s: 2
  circuit_failures: 2
  circuit_probe_s: 1
"""
expect.set_options(timeout=15_000)


def _require(ok: bool, why: str) -> None:
    if not ok:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(why, pytrace=False)
        pytest.skip(why)


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    _require(CHROMIUM.exists(), f"{CHROMIUM} is missing (apt-get install chromium)")
    _require(
        (DIST / "index.html").exists(),
        "the web UI is not built (./dev test builds it; or cd webui && npm ci && npm run build)",
    )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def gateway(workdir: Path) -> Iterator[Gateway]:
    """One gateway per test module, with its own embedded PostgreSQL."""
    state = workdir / f"e2e-{os.urandom(4).hex()}"
    state.mkdir(mode=0o755)
    with running(Gateway(state, None, config_yaml=FORWARDER_CONFIG)) as gw:
        yield gw


def base_url(gateway: Gateway) -> str:
    return f"http://127.0.0.1:{gateway.api_port}"


@pytest.fixture
def page(browser: Browser, gateway: Gateway) -> Iterator[Page]:
    """A fresh browser context (no cookies) on the gateway, failing the test on
    any console error or CSP violation the page reports."""
    context = browser.new_context(
        base_url=base_url(gateway), viewport={"width": 1280, "height": 900}
    )
    opened = context.new_page()
    errors: list[str] = []
    opened.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    opened.on("pageerror", lambda e: errors.append(str(e)))
    yield opened
    context.close()
    # 401s of the login form and of probing /me are expected answers, not errors.
    unexpected = [e for e in errors if not re.search(r"status of 401|status of 429", e)]
    assert unexpected == []


@pytest.fixture
def api(gateway: Gateway) -> Iterator[Client]:
    """The admin over HTTP, to set up what a test does not do through the UI."""
    client = Client(gateway)
    assert client.login("admin", ADMIN_PASSWORD).status_code == 200
    yield client
    client.http.close()


def log_in(page: Page, username: str, password: str, code: str | None = None) -> None:
    page.goto("/login")
    page.get_by_label("User name").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    if code is not None:
        page.get_by_label("Authentication code").fill(code)
        page.get_by_role("button", name="Verify").click()
    expect(page.get_by_test_id("whoami")).to_have_text(username)


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True)


def wait_ready(gateway: Gateway) -> None:
    """The API answers (serve waits for the port; the workers' pool may lag)."""
    httpx.get(f"{base_url(gateway)}/api/v1/health/live", timeout=10).raise_for_status()
