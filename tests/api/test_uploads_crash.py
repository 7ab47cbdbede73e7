"""Uploads on a gateway of the test's own: killed (SIGKILL) mid-upload and
restarted, and with rate limits low enough to reach."""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from dicomgw.storage.part10 import parse_file_meta
from tests.gateway import ADMIN_PASSWORD, Gateway
from tests.integration.scu import files_with_uid, make_dataset

CHUNK = 65536
TUS = {"Tus-Resumable": "1.0.0"}


def login(gateway: Gateway) -> httpx.Client:
    http = httpx.Client(base_url=f"http://127.0.0.1:{gateway.api_port}/api/v1", timeout=30)
    made = http.post("/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
    assert made.status_code == 200, made.text
    http.headers["X-CSRF-Token"] = made.json()["csrf_token"]
    return http


def dicom_file(size: int = 512) -> tuple[bytes, str]:
    ds = make_dataset(study_uid=generate_uid())
    ds.Rows = ds.Columns = size
    ds.PixelData = bytes(range(256)) * (size * size * 2 // 256)
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue(), ds.SOPInstanceUID


def patch(url: str, http: httpx.Client, offset: int, content: object) -> httpx.Response:
    return http.patch(
        url,
        content=content,  # type: ignore[arg-type]
        headers=TUS
        | {"Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"},
    )


@pytest.mark.slow
def test_kill_9_mid_upload_loses_no_acknowledged_byte_and_resumes_byte_identical(
    gateway_factory: Callable[..., Gateway],
) -> None:
    gateway = gateway_factory(DICOMGW_UPLOADS__CHUNK_SIZE=str(CHUNK))
    gateway.start()
    data, uid = dicom_file()
    http = login(gateway)
    created = http.post("/uploads", headers=TUS | {"Upload-Length": str(len(data))})
    assert created.status_code == 201, created.text
    url = created.headers["Location"]
    acked = 0
    for _ in range(3):
        sent = patch(url, http, acked, data[acked : acked + CHUNK])
        assert sent.status_code == 204, sent.text
        acked = int(sent.headers["Upload-Offset"])

    # A fourth chunk is on its way when the server dies: half its bytes sent, then
    # SIGKILL, then the rest never comes.
    half_sent = threading.Event()
    killed = threading.Event()

    def body() -> Iterator[bytes]:
        yield data[acked : acked + CHUNK // 2]
        half_sent.set()
        killed.wait(30)
        yield data[acked + CHUNK // 2 : acked + CHUNK]

    def send() -> None:
        with contextlib.suppress(httpx.HTTPError):
            patch(url, http, acked, body())

    sender = threading.Thread(target=send)
    sender.start()
    assert half_sent.wait(30)
    time.sleep(0.3)
    gateway.kill()
    killed.set()
    sender.join(30)
    http.close()

    gateway.start()
    http = login(gateway)
    head = http.head(url, headers=TUS)
    assert head.status_code == 200, head.text
    offset = int(head.headers["Upload-Offset"])
    # Every acknowledged byte is there; at most the chunk in flight is sent again.
    assert acked <= offset <= acked + CHUNK
    while offset < len(data):
        sent = patch(url, http, offset, data[offset : offset + CHUNK])
        assert sent.status_code == 204, sent.text
        offset = int(sent.headers["Upload-Offset"])
    deadline = time.monotonic() + 60
    while not files_with_uid(gateway.storage, uid):
        assert time.monotonic() < deadline, gateway.log()[-3000:]
        time.sleep(0.2)
    [path] = files_with_uid(gateway.storage, uid)
    stored = path.read_bytes()
    assert (
        stored[parse_file_meta(stored[:4096]).dataset_offset :]
        == data[parse_file_meta(data[:4096]).dataset_offset :]
    )
    http.close()


@pytest.mark.slow
def test_chunks_past_the_rate_limit_get_429_with_retry_after(
    gateway_factory: Callable[..., Gateway],
) -> None:
    gateway = gateway_factory(
        config_yaml=(
            "uploads:\n"
            "  chunk_size: 65536\n"
            "  chunk_rate: {per_user: 3, per_address: 100, window_s: 600}\n"
            "  create_rate: {per_user: 2, per_address: 100, window_s: 600}\n"
        )
    )
    gateway.start()
    data, _ = dicom_file()
    http = login(gateway)
    created = http.post("/uploads", headers=TUS | {"Upload-Length": str(len(data))})
    url = created.headers["Location"]
    offset = 0
    for _ in range(3):
        sent = patch(url, http, offset, data[offset : offset + CHUNK])
        assert sent.status_code == 204, sent.text
        offset = int(sent.headers["Upload-Offset"])
    refused = patch(url, http, offset, data[offset : offset + CHUNK])
    assert refused.status_code == 429
    assert 500 <= int(refused.headers["Retry-After"]) <= 601
    assert refused.json()["type"].endswith(":too-many-requests")
    # Nothing of the refused chunk counts.
    assert http.head(url, headers=TUS).headers["Upload-Offset"] == str(offset)
    # Creation has its own limit (one upload made above, one more allowed).
    assert http.post("/uploads", headers=TUS | {"Upload-Length": "10"}).status_code == 201
    third = http.post("/uploads", headers=TUS | {"Upload-Length": "10"})
    assert third.status_code == 429
    assert "Retry-After" in third.headers
    http.close()
