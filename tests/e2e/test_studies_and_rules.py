"""Routing rules edited in the console (order, enable, dry-run on a study), and an
admin deleting a study after confirming."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote

from playwright.sync_api import Page, expect

from tests.api.conftest import Client
from tests.e2e.conftest import StoreSCP, log_in, send_study
from tests.gateway import ADMIN_PASSWORD, Gateway


def add_rule(page: Page, name: str, match: str, destination: str) -> None:
    page.get_by_role("button", name="Add rule").click()
    form = page.get_by_role("form", name="New rule")
    form.get_by_label("Name").fill(name)
    form.get_by_label(re.compile(r"^Match")).fill(match)
    form.get_by_label(destination).check()
    form.get_by_role("button", name="Add rule").click()
    expect(page.locator(f'tr[data-rule="{name}"]')).to_be_visible()


def test_rules_in_order_enabled_and_tried_on_a_study(
    page: Page, api: Client, gateway: Gateway, dcmtk: Path, storescp: StoreSCP
) -> None:
    made = api.post(
        "/destinations",
        json={"name": "ruled", "type": "dimse", "ae_title": storescp.ae_title,
              "host": "127.0.0.1", "port": storescp.port},
    )  # fmt: skip
    assert made.status_code == 201, made.text
    log_in(page, "admin", ADMIN_PASSWORD)
    page.goto("/rules")
    add_rule(page, "mr-only", "modality = MR", "ruled")
    add_rule(page, "ct-to-ruled", "modality = CT | CR", "ruled")
    names = page.get_by_test_id("rules-table").locator("tr[data-rule]")
    expect(names).to_have_count(2)
    page.get_by_role("button", name="Move ct-to-ruled up").click()
    expect(names.first).to_have_attribute("data-rule", "ct-to-ruled")
    page.locator('tr[data-rule="mr-only"]').get_by_role("button", name="Disable").click()
    expect(page.locator('tr[data-rule="mr-only"]')).to_contain_text("disabled")

    # An invalid match is refused where it was typed.
    page.get_by_role("button", name="Add rule").click()
    form = page.get_by_role("form", name="New rule")
    form.get_by_label("Name").fill("broken")
    form.get_by_label(re.compile(r"^Match")).fill("modality")
    form.get_by_label("ruled").check()
    form.get_by_role("button", name="Add rule").click()
    expect(form.get_by_role("alert")).to_contain_text("line 1")
    form.get_by_role("button", name="Cancel").click()

    # The study arrives after the rules: the CT rule hits and forwards it.
    study_uid = send_study(dcmtk, gateway, storescp.directory.parent / "ruled", count=2)[
        0
    ].study_instance_uid
    page.get_by_label("Study Instance UID").fill(study_uid)
    page.get_by_role("button", name="Try the rules").click()
    result = page.get_by_role("status").filter(has_text="It would go to")
    expect(result).to_contain_text("ruled (ct-to-ruled)")
    page.reload()
    expect(page.locator('tr[data-rule="ct-to-ruled"] td').nth(5)).to_have_text("2")
    page.goto(f"/studies/{quote(study_uid, safe='')}")
    expect(page.get_by_test_id("study-jobs").locator('tr[data-state="done"]')).to_have_count(2)


def test_an_admin_deletes_a_study_after_confirming(
    page: Page, gateway: Gateway, dcmtk: Path, tmp_path: Path, expected_console: list[str]
) -> None:
    expected_console.append(r"status of 404")  # the deleted study, opened again
    study_uid = send_study(dcmtk, gateway, tmp_path / "doomed", count=1)[0].study_instance_uid
    log_in(page, "admin", ADMIN_PASSWORD)
    page.goto(f"/studies/{quote(study_uid, safe='')}")
    page.get_by_role("button", name="Delete study").click()
    dialog = page.get_by_role("dialog", name="Delete this study?")
    expect(dialog).to_be_visible()
    page.keyboard.press("Escape")  # keyboard: Esc cancels
    expect(dialog).to_be_hidden()
    page.get_by_role("button", name="Delete study").click()
    dialog.get_by_role("button", name="Delete").click()
    expect(page).to_have_url(re.compile(r"/studies$"))
    expect(page.locator(f'a[href="/studies/{quote(study_uid, safe="")}"]')).to_have_count(0)
    page.goto(f"/studies/{quote(study_uid, safe='')}")
    expect(page.get_by_role("alert")).to_contain_text("does not exist")
