"""The Dashboard's live figures (rates between two readings of /stats/live, the
"1 h" view) and the TLS certificate on the Settings page: an admin uploads one
(a refusal says what is wrong), an operator only sees it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.api.conftest import Client
from tests.certs import make_pki, self_signed
from tests.e2e.conftest import log_in, screenshot, send_study
from tests.gateway import ADMIN_PASSWORD, Gateway

# "12.3 inst/s" but not "0 inst/s" nor "— inst/s".
SOME_RATE = re.compile(r"^\s*(0\.\d*[1-9]\d*|[1-9][\d,.]*)\s+inst/s")


@pytest.fixture
def expected_console() -> list[str]:
    # The refused upload is a 422 on purpose.
    return [r"status of 401", r"status of 429", r"status of 422"]


def test_the_dashboard_shows_images_arriving_now(
    page: Page, gateway: Gateway, dcmtk: Path, tmp_path: Path
) -> None:
    log_in(page, "admin", ADMIN_PASSWORD)
    page.goto("/")
    rate = page.get_by_test_id("received-rate")
    expect(rate).to_have_text(re.compile(r"^\s*—"))  # one reading: no rate yet
    expect(rate).not_to_have_text(re.compile(r"^\s*—"), timeout=15_000)
    expect(page.get_by_test_id("associations")).to_have_text("0")
    send_study(dcmtk, gateway, tmp_path / "study", count=3)
    # The reading after the study came in is compared with one before it.
    expect(rate).to_have_text(SOME_RATE, timeout=15_000)
    page.get_by_role("button", name="1 h", exact=True).click()
    expect(page.get_by_test_id("last-hour")).to_contain_text("the last hour has no chart")
    expect(page.get_by_role("link", name="Export CSV")).to_have_count(0)
    screenshot(page, "13-dashboard-last-hour")


def test_an_admin_installs_a_certificate_an_operator_sees_it(
    page: Page, api: Client, tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path / "pki", "e2e-gw", days=200)
    other = make_pki(tmp_path / "other")
    log_in(page, "admin", ADMIN_PASSWORD)
    page.goto("/settings")
    panel = page.get_by_role("region", name="TLS certificate")
    expect(panel.get_by_test_id("certificate-https")).to_contain_text("None installed.")

    # The wrong key: refused, saying why, next to the form; nothing changes.
    panel.get_by_label("Certificate (PEM): read from a file").set_input_files(str(cert))
    expect(panel.get_by_label("Certificate (PEM)", exact=True)).to_have_value(
        re.compile("BEGIN CERTIFICATE")
    )
    panel.get_by_label("Private key (PEM, unencrypted)", exact=True).fill(
        other.server_key.read_text()
    )
    panel.get_by_role("button", name="Validate and install").click()
    expect(panel.get_by_role("alert")).to_have_text(
        "The key is not the private key of the certificate (key)"
    )
    expect(panel.get_by_label("Private key (PEM, unencrypted)", exact=True)).to_have_attribute(
        "aria-invalid", "true"
    )
    expect(panel.get_by_test_id("certificate-https")).to_contain_text("None installed.")

    panel.get_by_label("Private key (PEM, unencrypted)", exact=True).fill(key.read_text())
    panel.get_by_role("button", name="Validate and install").click()
    expect(panel.get_by_test_id("cert-installed")).to_contain_text("dicom-gw-tls-reload.path")
    expect(panel.get_by_test_id("cert-subject")).to_have_text("CN=e2e-gw")
    expect(panel.get_by_test_id("certificate-https")).to_contain_text("127.0.0.1")
    screenshot(page, "14-settings-certificate")

    password = "operator-password-1"
    made = api.post("/users", json={"username": "otto", "role": "operator", "password": password})
    assert made.status_code == 201, made.text
    page.get_by_role("button", name="Log out").click()
    log_in(page, "otto", password)
    page.goto("/settings")
    expect(panel.get_by_test_id("cert-subject")).to_have_text("CN=e2e-gw")
    expect(panel.get_by_role("button", name="Validate and install")).to_have_count(0)
