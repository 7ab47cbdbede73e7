"""An operator's day in the console: a study arrives, a destination is added and
tested, the study is forwarded; the destination goes down (retries, unhealthy,
dead jobs) and comes back, and the dead jobs are retried from the Queue page."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote

from playwright.sync_api import Page, expect

from tests.api.conftest import Client
from tests.e2e.conftest import StoreSCP, log_in, screenshot, send_study
from tests.gateway import ADMIN_PASSWORD, Gateway


def test_receive_forward_fail_and_retry(
    page: Page, gateway: Gateway, dcmtk: Path, storescp: StoreSCP, tmp_path: Path
) -> None:
    log_in(page, "admin", ADMIN_PASSWORD)
    items = send_study(dcmtk, gateway, tmp_path / "study")
    study_uid = items[0].study_instance_uid
    study_link = f'a[href="/studies/{quote(study_uid, safe="")}"]'

    # The study is on the Dashboard (recent studies) and in Studies.
    page.goto("/")
    expect(page.get_by_test_id("recent-studies").locator(study_link)).to_be_visible()
    screenshot(page, "02-dashboard")
    page.get_by_role("link", name="Studies", exact=True).click()
    expect(page.get_by_test_id("studies-table").locator(study_link)).to_be_visible()
    screenshot(page, "03-studies")
    page.get_by_test_id("studies-table").locator(study_link).click()
    expect(page.get_by_role("heading", name="Müller, Jörg")).to_be_visible()
    page.get_by_role("button", name=re.compile(r"#7 CT")).click()
    expect(page.get_by_role("link", name="Download", exact=True)).to_have_count(3)

    # A destination: added, tested (C-ECHO).
    page.get_by_role("link", name="Destinations").click()
    page.get_by_role("button", name="Add destination").click()
    form = page.get_by_role("form", name="New destination")
    form.get_by_label("Name").fill("pacs")
    form.get_by_label("Called AE title").fill(storescp.ae_title)
    form.get_by_label("Host").fill("127.0.0.1")
    form.get_by_label("Port").fill("99999")
    form.get_by_role("button", name="Add destination").click()
    expect(form.get_by_text("A port from 1 to 65535")).to_be_visible()
    form.get_by_label("Port").fill(str(storescp.port))
    form.get_by_role("button", name="Add destination").click()
    row = page.locator('tr[data-destination="pacs"]')
    expect(row.get_by_test_id("destination-state")).to_have_text("healthy")
    row.get_by_role("button", name="Test").click()
    expect(page.get_by_test_id("probe-result")).to_have_text("test passed")
    screenshot(page, "04-destinations")

    # Forward the study from its page; every job is done and storescp has the files.
    page.goto(f"/studies/{quote(study_uid, safe='')}")
    page.get_by_label("Send again to").select_option(label="pacs")
    page.get_by_role("button", name="Forward").click()
    expect(page.get_by_role("status").filter(has_text="3 job(s) queued for pacs")).to_be_visible()
    jobs = page.get_by_test_id("study-jobs")
    expect(jobs.locator('tr[data-state="done"]')).to_have_count(3)
    assert storescp.received() == 3
    screenshot(page, "05-study")

    # The destination goes down: the first job is retried, then dead-lettered
    # (max_attempts 2); the destination turns unhealthy (open circuit) and the
    # other jobs wait for it.
    storescp.stop()
    page.get_by_role("button", name="Forward").click()
    dead = jobs.locator('tr[data-state="dead"]')
    expect(dead.first).to_be_visible(timeout=30_000)
    dead.first.get_by_role("button").first.click()
    attempts = page.get_by_role("table", name=re.compile(r"Attempts of job"))
    expect(attempts.get_by_text("transient")).to_have_count(2)
    page.get_by_role("link", name="Destinations").click()
    expect(row.get_by_test_id("destination-state")).to_have_text("unhealthy")
    expect(row).to_contain_text("dead")
    page.get_by_role("link", name="Dashboard").click()
    health = page.get_by_test_id("destination-health").locator('tr[data-destination="pacs"]')
    expect(health).to_contain_text("unhealthy")

    # Back up: the circuit closes and the waiting jobs go; the dead ones are
    # retried from the Queue page.
    storescp.start()
    page.get_by_role("link", name="Queue").click()
    page.get_by_label("State").select_option("dead")
    queue_jobs = page.get_by_test_id("jobs-table")
    expect(queue_jobs.locator('tr[data-state="dead"]').first).to_be_visible()
    screenshot(page, "06-queue")
    stuck = queue_jobs.locator('tr[data-state="dead"]').count()
    queue_jobs.locator('tr[data-state="dead"]').first.get_by_role("button", name="Retry").click()
    expect(queue_jobs.locator('tr[data-state="dead"]')).to_have_count(stuck - 1)
    if stuck > 1:
        page.get_by_role("button", name="Retry all dead").click()
        expect(page.get_by_role("status").filter(has_text="dead job(s) of pacs")).to_be_visible()
    page.get_by_label("State").select_option("done")
    expect(queue_jobs.locator('tr[data-state="done"]')).to_have_count(6, timeout=30_000)
    assert storescp.received() == 3  # the same files again (storescp names them by UID)


def test_every_page_renders_for_an_admin(page: Page, api: Client) -> None:
    """Each page loads without an error (console errors fail the test) and is
    saved as a screenshot, also dark and at tablet width."""
    log_in(page, "admin", ADMIN_PASSWORD)
    for path, heading, name in [
        ("/rules", "Routing rules", "07-rules"),
        ("/audit", "Audit log", "08-audit"),
        ("/users", "Users & roles", "09-users"),
        ("/settings", "Settings", "10-settings"),
        ("/account", "My account", "11-account"),
    ]:
        page.goto(path)
        expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
        expect(page.get_by_text("Loading…")).to_have_count(0)
        screenshot(page, name)
    expect(page.get_by_role("alert")).to_have_count(0)
    page.goto("/audit")
    expect(page.get_by_test_id("audit-table")).to_contain_text("auth.login")
    page.goto("/settings")
    expect(page.locator('[data-key="dimse.ae_title"]')).to_have_text("DICOMGW")

    page.get_by_role("button", name="Dark mode").click()
    expect(page.locator("html")).to_have_class(re.compile(r"\bdark\b"))
    page.goto("/")
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    screenshot(page, "12-dashboard-dark")
    page.set_viewport_size({"width": 820, "height": 1180})
    page.get_by_role("button", name="Menu").click()
    expect(page.get_by_role("link", name="Queue")).to_be_visible()
    screenshot(page, "13-tablet-menu")
