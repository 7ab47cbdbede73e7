"""The upload page on a phone-sized Chromium: a clinic's uploader picks a study,
the form fills itself from the DICOM tags, the upload (tus-js-client, through a
slow link) survives the network dropping and a page reload, the study is
forwarded to a PACS, and sending it again asks before storing a duplicate."""

from __future__ import annotations

import io
import re
import time
import uuid
from pathlib import Path

import pydicom
from playwright.sync_api import Browser, expect
from pydicom.uid import generate_uid

from dicomgw.storage.part10 import parse_file_meta
from tests.api.conftest import Client
from tests.e2e.conftest import StoreSCP, base_url, log_in, screenshot
from tests.gateway import Gateway
from tests.integration.scu import files_with_uid, make_dataset

PHONE = {"width": 390, "height": 844}
# Errors the browser logs for what this test provokes: a network that drops, the
# 409 of a duplicate, a 423 while a cut-off request's lease lapses.
EXPECTED = (
    r"ERR_INTERNET_DISCONNECTED",
    r"ERR_NETWORK_CHANGED",
    r"status of 40[19]",
    r"status of 423",
    r"tus: failed",
)


def study(tmp_path: Path, patient_id: str) -> list[tuple[Path, str, bytes]]:
    """Three ~1 MB instances of one study: (path, SOP Instance UID, data set bytes)."""
    study_uid = generate_uid()
    made = []
    for n in range(3):
        ds = make_dataset(study_uid=study_uid, instance_number=n + 1, patient_name="Upload^Phone")
        ds.PatientID = patient_id
        # NOTE: a modality no other e2e test routes ("ct-to-ruled" would add a job
        # to a destination that is down, and the upload would never be forwarded).
        ds.Modality = "XC"
        ds.Rows = ds.Columns = 724
        ds.PixelData = bytes((n * 7 + i) % 256 for i in range(256)) * (724 * 724 * 2 // 256)
        out = io.BytesIO()
        pydicom.dcmwrite(out, ds, enforce_file_format=True)
        data = out.getvalue()
        path = tmp_path / f"IM{n}.dcm"
        path.write_bytes(data)
        made.append((path, ds.SOPInstanceUID, data[parse_file_meta(data[:4096]).dataset_offset :]))
    return made


def stored_dataset(gateway: Gateway, uid: str) -> bytes:
    [path] = files_with_uid(gateway.storage, uid)
    data = path.read_bytes()
    return data[parse_file_meta(data[:4096]).dataset_offset :]


def test_a_clinic_uploads_from_a_phone_over_a_link_that_drops_and_it_is_forwarded(
    browser: Browser, gateway: Gateway, api: Client, storescp: StoreSCP, tmp_path: Path
) -> None:
    name = f"clinic-{uuid.uuid4().hex[:6]}"
    password = f"pw-{name}-long-enough"
    assert (
        api.post(
            "/users", json={"username": name, "role": "uploader", "password": password}
        ).status_code
        == 201
    )
    made = api.post(
        "/destinations",
        json={"name": f"pacs-{name}", "type": "dimse", "ae_title": storescp.ae_title,
              "host": "127.0.0.1", "port": storescp.port},
    )  # fmt: skip
    assert made.status_code == 201, made.text
    rule = api.post(
        "/rules",
        json={"name": f"uploads-{name}", "match": {"user": name}, "destinations": [f"pacs-{name}"]},
    )
    assert rule.status_code == 201, rule.text
    patient_id = f"PID-{uuid.uuid4().hex[:8]}"
    files = study(tmp_path, patient_id)

    context = browser.new_context(base_url=base_url(gateway), viewport=PHONE, has_touch=True)
    errors: list[str] = []
    page = context.new_page()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        log_in(page, name, password)
        expect(page).to_have_url(re.compile(r"/upload$"))
        # An uploader sees the upload page and its account, nothing of the archive.
        page.get_by_role("button", name="Menu").click()
        nav = page.get_by_role("navigation", name="Main")
        expect(nav.get_by_role("link")).to_have_text(["Upload", "My account"])
        page.get_by_role("button", name="Menu").click()

        # A slow uplink (300 kB/s): 3 MB take ~10 s, time to drop and reload.
        cdp = context.new_cdp_session(page)
        cdp.send("Network.enable")
        throttle = {
            "offline": False,
            "latency": 20,
            "downloadThroughput": -1,
            "uploadThroughput": 300_000,
        }
        cdp.send("Network.emulateNetworkConditions", throttle)

        page.get_by_test_id("files").set_input_files([str(p) for p, _, _ in files])
        # The form is filled from the files' own tags (dcmjs, in the browser).
        expect(page.get_by_test_id("patient_id")).to_have_value(patient_id)
        expect(page.get_by_test_id("patient_name")).to_have_value("Upload^Phone")
        expect(page.get_by_test_id("modality")).to_have_value("XC")
        upload = page.get_by_test_id("upload")
        box = upload.bounding_box()
        assert box is not None and box["height"] >= 44  # a thumb can hit it
        upload.click()
        run = page.get_by_test_id("run")
        expect(run.get_by_test_id("phase")).to_have_text("uploading")
        expect(run.get_by_test_id("progress")).to_contain_text("left")
        screenshot(page, "20-upload-progress-phone")

        # The network drops: the upload pauses by itself, and resumes when it is back.
        time.sleep(1.5)
        context.set_offline(True)
        expect(page.get_by_test_id("offline")).to_be_visible()
        expect(run.get_by_test_id("phase")).to_contain_text("offline")
        screenshot(page, "21-upload-offline-phone")
        time.sleep(1)
        context.set_offline(False)
        cdp.send("Network.emulateNetworkConditions", throttle)
        expect(run.get_by_test_id("phase")).to_have_text("uploading")

        # A reload mid-way: the upload goes on from what the browser kept.
        time.sleep(1.5)
        page.reload()
        expect(page.get_by_test_id("run").get_by_test_id("phase")).to_have_text(
            re.compile("uploading|finishing|sent")
        )
        cdp = context.new_cdp_session(page)
        cdp.send("Network.enable")
        cdp.send("Network.emulateNetworkConditions", {**throttle, "uploadThroughput": -1})
        expect(page.get_by_test_id("run").get_by_test_id("phase")).to_have_text(
            "sent", timeout=60_000
        )

        # My uploads follows it through to forwarded (every job done at the PACS).
        mine = page.get_by_test_id("my-uploads")
        expect(mine.locator('[data-upload-state="forwarded"]')).to_have_count(1, timeout=60_000)
        screenshot(page, "22-upload-forwarded-phone")
        for _, uid, dataset in files:
            assert stored_dataset(gateway, uid) == dataset
        assert storescp.received() >= 3

        # The same study again: the gateway asks first; sent anyway, it is stored.
        page.get_by_test_id("files").set_input_files([str(p) for p, _, _ in files])
        page.get_by_test_id("upload").click()
        dialog = page.get_by_test_id("duplicate")
        expect(dialog).to_be_visible(timeout=60_000)
        expect(dialog).to_contain_text(f"by {name}")
        screenshot(page, "23-upload-duplicate-phone")
        dialog.get_by_test_id("force").click()
        expect(page.get_by_test_id("run").first.get_by_test_id("phase")).to_have_text("sent")
    finally:
        context.close()
    unexpected = [e for e in errors if not any(re.search(p, e) for p in EXPECTED)]
    assert unexpected == []
