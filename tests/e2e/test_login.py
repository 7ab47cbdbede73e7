"""Logging in and out of the console."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from tests.e2e.conftest import log_in, screenshot
from tests.gateway import ADMIN_PASSWORD

LOGIN = re.compile(r"/login(\?.*)?$")


def test_wrong_password_then_login_and_logout(page: Page) -> None:
    page.goto("/")
    expect(page).to_have_url(LOGIN)
    screenshot(page, "01-login")
    page.get_by_label("User name").fill("admin")
    page.get_by_label("Password").fill("not-the-password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("Wrong user name or password")

    log_in(page, "admin", ADMIN_PASSWORD)
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(LOGIN)
    page.goto("/studies")
    expect(page).to_have_url(LOGIN)


def test_a_reloaded_page_keeps_its_session_and_csrf_token(page: Page) -> None:
    log_in(page, "admin", ADMIN_PASSWORD)
    page.goto("/studies")
    page.reload()
    expect(page.get_by_test_id("whoami")).to_have_text("admin")
    # Logging out is a POST: it needs the CSRF token, which the reload got from /me.
    # Had it been refused, the cookie would still be a session and / would not
    # go to the login page.
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(LOGIN)
    page.goto("/")
    expect(page).to_have_url(LOGIN)
