"""The web UI in a real browser (Debian's Chromium driven by Playwright) against a
real ``dicom-gw serve`` on its embedded PostgreSQL, serving the built UI.

The browser is the system's /usr/bin/chromium (``playwright install`` downloads
are not used); without it, or without a built UI, the tests skip, and fail
under CI=true. Screenshots of each page go to webui/e2e-screenshots/.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.api.conftest import Client
from tests.gateway import ADMIN_PASSWORD, Gateway, free_port, running
from tests.interop.conftest import require_dcmtk
from tests.interop.corpus import Item, dcmtk_env, small_images, storescu

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
# Fast retries, an early circuit and an early dead-letter, so that a stopped
# destination shows up (unhealthy, jobs dead) in seconds.
FORWARDER_CONFIG = """\
forwarder:
  backoff_initial_s: 0.3
  backoff_max_s: 1
  max_attempts: 2
  circuit_failures: 2
  circuit_probe_s: 1
"""
expect.set_options(timeout=15_000)


def _require(ok: bool, why: str) -> None:
    if not ok:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(why, pytrace=False)
        pytest.skip(why)


# NOTE: package scope, not session: while Playwright's sync API runs, its event
# loop is the thread's running loop, and the async tests after tests/e2e could
# not start theirs.
@pytest.fixture(scope="package")
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


@pytest.fixture(scope="package")
def gateway(workdir: Path) -> Iterator[Gateway]:
    """One gateway for the e2e tests, on its own embedded PostgreSQL; tests make
    users and destinations of their own names."""
    state = workdir / f"e2e-{os.urandom(4).hex()}"
    state.mkdir(mode=0o755)
    with running(Gateway(state, None, config_yaml=FORWARDER_CONFIG)) as gw:
        yield gw


def base_url(gateway: Gateway) -> str:
    return f"http://127.0.0.1:{gateway.api_port}"


@pytest.fixture
def expected_console() -> list[str]:
    """Patterns of browser console errors a test provokes on purpose: by default
    the 401s of a login form and of probing /me, and 429 lockouts."""
    return [r"status of 401", r"status of 429"]


@pytest.fixture
def page(browser: Browser, gateway: Gateway, expected_console: list[str]) -> Iterator[Page]:
    """A fresh browser context (no cookies) on the gateway, failing the test on
    any other console error or CSP violation the page reports."""
    context = browser.new_context(
        base_url=base_url(gateway), viewport={"width": 1280, "height": 900}
    )
    opened = context.new_page()
    errors: list[str] = []
    opened.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    opened.on("pageerror", lambda e: errors.append(str(e)))
    yield opened
    context.close()
    unexpected = [e for e in errors if not any(re.search(p, e) for p in expected_console)]
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


class StoreSCP:
    """DCMTK's storescp as a forward destination, stopped and started at will.

    NOTE: ``--fork``, one process per association, as a PACS takes several at
    once: without it a second association of the destination (max_parallel 2)
    waited unanswered while the first was held open for reuse (idle_release_s,
    10 s), and a job could take longer than the test waits.
    """

    def __init__(self, dcmtk: Path, directory: Path, ae_title: str = "E2EPACS") -> None:
        self.dcmtk = dcmtk
        self.directory = directory
        self.ae_title = ae_title
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.dcmtk / "storescp",
                "--fork",
                "-aet",
                self.ae_title,
                "-od",
                str(self.directory),
                str(self.port),
            ],
            env=dcmtk_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return
            time.sleep(0.05)
        raise AssertionError(f"storescp is not listening on {self.port}")

    def stop(self) -> None:
        """The listener and the children serving open associations: the peer is down."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
            self.proc = None

    def received(self) -> int:
        return sum(1 for p in self.directory.iterdir() if p.is_file())


@pytest.fixture(scope="session")
def dcmtk() -> Path:
    return require_dcmtk()


@pytest.fixture
def storescp(dcmtk: Path, tmp_path: Path) -> Iterator[StoreSCP]:
    scp = StoreSCP(dcmtk, tmp_path / "storescp")
    scp.start()
    yield scp
    scp.stop()


def send_study(dcmtk: Path, gateway: Gateway, directory: Path, count: int = 3) -> list[Item]:
    items = small_images(directory, count)
    run = storescu(dcmtk, [i.path for i in items], gateway.dimse_port)
    assert run.returncode == 0, run.stderr
    return items
