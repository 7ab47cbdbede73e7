"""My account: TOTP enrolment with the QR code's secret, then logging in with a code."""

from __future__ import annotations

import time

import httpx
import pyotp
from playwright.sync_api import Page, expect

from tests.api.conftest import Client
from tests.e2e.conftest import base_url, log_in, screenshot
from tests.gateway import ADMIN_PASSWORD, Gateway


def test_enrol_totp_and_log_in_with_a_code(
    page: Page, api: Client, expected_console: list[str]
) -> None:
    expected_console.append(r"status of 403")  # the wrong first code, on purpose
    password = "operator-password-1"
    assert (
        api.post(
            "/users", json={"username": "ops", "role": "operator", "password": password}
        ).status_code
        == 201
    )
    log_in(page, "ops", password)
    page.get_by_role("link", name="My account").click()
    page.get_by_role("button", name="Set up TOTP").click()
    expect(page.get_by_role("img", name="QR code of the TOTP secret")).to_be_visible()
    totp = pyotp.TOTP(page.get_by_test_id("totp-secret").inner_text())
    page.get_by_label("Code", exact=True).fill("000000" if totp.now() != "000000" else "111111")
    page.get_by_role("button", name="Turn on").click()
    expect(page.get_by_role("alert")).to_contain_text("Wrong or already used code")
    page.get_by_label("Code", exact=True).fill(totp.now())
    page.get_by_role("button", name="Turn on").click()
    expect(page.get_by_test_id("recovery-codes").locator("li")).to_have_count(10)
    expect(page.get_by_text("TOTP is on")).to_be_visible()
    screenshot(page, "14-account-totp")

    page.get_by_role("button", name="Log out").click()
    page.get_by_label("User name").fill("ops")
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    # Each code is good once: the next step's code (accepted for clock drift) logs in.
    page.get_by_label("Authentication code").fill(totp.at(time.time() + 30))
    page.get_by_role("button", name="Verify").click()
    expect(page.get_by_test_id("whoami")).to_have_text("ops")
    page.get_by_role("link", name="My account").click()
    expect(page.get_by_text("TOTP is on")).to_be_visible()


def test_api_token_is_shown_once_and_works(page: Page, gateway: Gateway) -> None:
    log_in(page, "admin", ADMIN_PASSWORD)
    page.goto("/account")
    page.get_by_label("Name", exact=True).fill("backup script")
    page.get_by_role("button", name="Create token").click()
    token = page.get_by_test_id("new-token").inner_text()
    assert token.startswith("dgw_")
    script = httpx.get(
        f"{base_url(gateway)}/api/v1/me", headers={"Authorization": f"Bearer {token}"}
    )
    assert script.status_code == 200 and script.json()["username"] == "admin"
    expect(page.get_by_text("backup script")).to_be_visible()
