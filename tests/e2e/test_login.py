"""Logging in and out of the console."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from tests.api.conftest import Client
from tests.e2e.conftest import log_in, screenshot
from tests.gateway import ADMIN_PASSWORD, Gateway

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


def test_lockout_says_how_long_to_wait(page: Page, api: Client) -> None:
    password = "locked-out-password"
    assert (
        api.post(
            "/users", json={"username": "lou", "role": "viewer", "password": password}
        ).status_code
        == 201
    )
    page.goto("/login")
    page.get_by_label("User name").fill("lou")
    for _ in range(3):
        page.get_by_label("Password").fill("wrong-password")
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("alert")).to_contain_text("Wrong user name or password")
    # Then each attempt from here waits a little, the right password too ...
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text(re.compile(r"Too many failed logins: try again in \d+ s"))
    button = page.get_by_role("button", name="Log in")
    expect(button).to_be_disabled()
    screenshot(page, "15-login-lockout")
    # ... and only a little: the owner is slowed, not locked out.
    expect(button).to_be_enabled(timeout=15_000)
    button.click()
    expect(page).not_to_have_url(LOGIN)


def test_an_ended_session_sends_back_to_login_saying_so(
    page: Page, api: Client, gateway: Gateway
) -> None:
    password = "expiring-password-1"
    assert (
        api.post(
            "/users", json={"username": "eve", "role": "viewer", "password": password}
        ).status_code
        == 201
    )
    log_in(page, "eve", password)
    # The same user elsewhere ends this browser's session.
    other = Client(gateway)
    assert other.login("eve", password).status_code == 200
    sessions = other.get("/me/sessions").json()["items"]
    for session in sessions:
        if not session["current"]:
            assert other.delete(f"/me/sessions/{session['id']}").status_code == 204
    other.http.close()
    page.get_by_role("link", name="Studies").click()
    expect(page).to_have_url(LOGIN)
    expect(page.get_by_role("status")).to_contain_text("Your session has ended")
    log_in(page, "eve", password)
