"""Role-aware: a viewer sees studies, destinations and the queue but no button it
cannot use, and cannot open the admin pages."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote

from playwright.sync_api import Page, expect

from tests.api.conftest import Client
from tests.e2e.conftest import StoreSCP, log_in, send_study
from tests.gateway import Gateway


def test_a_viewer_sees_no_admin_or_operator_actions(
    page: Page, api: Client, gateway: Gateway, dcmtk: Path, storescp: StoreSCP
) -> None:
    study_uid = send_study(dcmtk, gateway, storescp.directory.parent / "study", count=1)[
        0
    ].study_instance_uid
    made = api.post(
        "/destinations",
        json={"name": "archive", "type": "dimse", "ae_title": storescp.ae_title,
              "host": "127.0.0.1", "port": storescp.port},
    )  # fmt: skip
    assert made.status_code == 201, made.text
    password = "viewer-password-1"
    assert (
        api.post(
            "/users", json={"username": "vera", "role": "viewer", "password": password}
        ).status_code
        == 201
    )

    log_in(page, "vera", password)
    nav = page.get_by_role("navigation", name="Main")
    for visible in ("Dashboard", "Studies", "Destinations", "Routing rules", "Queue", "My account"):
        expect(nav.get_by_role("link", name=visible)).to_be_visible()
    for hidden in ("Users & roles", "Audit log", "Settings"):
        expect(nav.get_by_role("link", name=hidden)).to_have_count(0)

    page.goto(f"/studies/{quote(study_uid, safe='')}")
    expect(page.get_by_role("heading", name="Series")).to_be_visible()
    expect(page.get_by_role("link", name="Download ZIP")).to_be_visible()
    expect(page.get_by_role("button", name="Delete study")).to_have_count(0)
    expect(page.get_by_role("button", name="Forward")).to_have_count(0)

    page.goto("/destinations")
    expect(page.locator('tr[data-destination="archive"]')).to_be_visible()
    for button in ("Add destination", "Test", "Pause", "Edit", "Delete"):
        expect(page.get_by_role("button", name=button, exact=True)).to_have_count(0)
    page.goto("/rules")
    expect(page.get_by_role("button", name="Add rule")).to_have_count(0)
    expect(page.get_by_role("heading", name="Dry run")).to_have_count(0)
    page.goto("/queue")
    expect(page.get_by_role("heading", name="Jobs")).to_be_visible()
    expect(page.get_by_role("button", name=re.compile("Retry|Cancel"))).to_have_count(0)

    # Pages of other roles send the viewer home.
    for path in ("/users", "/audit", "/settings"):
        page.goto(path)
        expect(page).to_have_url(re.compile(r"/$"))
        expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()


def test_an_auditor_lands_on_the_audit_log(page: Page, api: Client) -> None:
    password = "auditor-password-1"
    assert (
        api.post(
            "/users", json={"username": "audrey", "role": "auditor", "password": password}
        ).status_code
        == 201
    )
    log_in(page, "audrey", password)
    expect(page).to_have_url(re.compile(r"/audit$"))
    expect(page.get_by_test_id("audit-table")).to_contain_text("auth.login")
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="Studies")).to_have_count(0)
