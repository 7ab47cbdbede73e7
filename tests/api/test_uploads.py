"""Uploads over HTTP against a running gateway: tuspy (the tus protocol's Python
client) and raw tus requests, the upload session API, what an upload becomes
(instances through the ingest path, byte-identical data sets), and bad input.

The gateway here has 64 KiB chunks, so a half-megabyte file takes many."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pydicom
import pytest
from pydicom.uid import generate_uid
from tusclient import client as tus_client

from dicomgw.storage.part10 import parse_file_meta
from tests.conftest import _create_database, with_database
from tests.gateway import ADMIN_PASSWORD, Gateway, running
from tests.integration.scu import files_with_uid, make_dataset

CHUNK = 65536
TUS = {"Tus-Resumable": "1.0.0"}


@pytest.fixture(scope="module")
def gateway(workdir: Path, pg_server: str) -> Iterator[Gateway]:
    name = f"gw_{uuid.uuid4().hex[:8]}"
    asyncio.run(_create_database(pg_server, name))
    state = workdir / f"uploads-{name}"
    state.mkdir(mode=0o755)
    env = {
        "DICOMGW_UPLOADS__CHUNK_SIZE": str(CHUNK),
        "DICOMGW_UPLOADS__MAX_UPLOAD_BYTES": str(8 << 20),
        "DICOMGW_UPLOADS__MAX_USER_BYTES_IN_FLIGHT": str(24 << 20),
    }
    with running(Gateway(state, with_database(pg_server, name), extra_env=env)) as gw:
        yield gw


@pytest.fixture(scope="module")
def admin_http(gateway: Gateway) -> Iterator[httpx.Client]:
    http = httpx.Client(base_url=f"http://127.0.0.1:{gateway.api_port}/api/v1", timeout=30)
    login = http.post("/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
    assert login.status_code == 200, login.text
    http.headers["X-CSRF-Token"] = login.json()["csrf_token"]
    yield http
    http.close()


@pytest.fixture
def account(gateway: Gateway, admin_http: httpx.Client) -> Callable[[str], tuple[str, str]]:
    """A new account of a role: (username, API token)."""

    def make(role: str) -> tuple[str, str]:
        name = f"{role}-{uuid.uuid4().hex[:8]}"
        password = f"pw-{name}-long"
        made = admin_http.post(
            "/users", json={"username": name, "role": role, "password": password}
        )
        assert made.status_code == 201, made.text
        with httpx.Client(base_url=admin_http.base_url, timeout=30) as http:
            login = http.post("/auth/login", json={"username": name, "password": password})
            token = http.post(
                "/me/tokens",
                json={"name": "upload", "expires_in_days": 1},
                headers={"X-CSRF-Token": login.json()["csrf_token"]},
            )
        assert token.status_code == 201, token.text
        return name, token.json()["token"]

    return make


@pytest.fixture
def uploader(account: Callable[[str], tuple[str, str]]) -> tuple[str, str]:
    return account("uploader")


def api(gateway: Gateway, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=f"http://127.0.0.1:{gateway.api_port}/api/v1",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def big_dicom(study: str | None = None, size: int = 512) -> tuple[bytes, str]:
    """A Part 10 file of about size*size*2 bytes; (bytes, SOP Instance UID)."""
    ds = make_dataset(study_uid=study or generate_uid())
    ds.Rows = ds.Columns = size
    ds.PixelData = bytes(range(256)) * (size * size * 2 // 256)
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue(), ds.SOPInstanceUID


def stored_dataset(gateway: Gateway, uid: str) -> bytes:
    [path] = files_with_uid(gateway.storage, uid)
    data = path.read_bytes()
    return data[parse_file_meta(data[:4096]).dataset_offset :]


def dataset_of(part10: bytes) -> bytes:
    """The data set bytes of a Part 10 file (after its File Meta)."""
    meta_end = parse_file_meta(part10[:4096]).dataset_offset
    return part10[meta_end:]


def instance_rows(gateway: Gateway, uid: str) -> list[tuple[str, str | None]]:
    assert gateway.dsn is not None
    with psycopg.connect(gateway.dsn) as conn:
        return conn.execute(
            "SELECT source_kind, source_user FROM instances WHERE sop_instance_uid = %s", (uid,)
        ).fetchall()


def wait_state(
    http: httpx.Client, batch_id: str, *states: str, timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status = http.get(f"/upload/{batch_id}/status")
        assert status.status_code == 200, status.text
        body: dict[str, Any] = status.json()
        if body["state"] in states:
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.2)


def batch_of(gateway: Gateway, upload_url: str) -> str:
    assert gateway.dsn is not None
    with psycopg.connect(gateway.dsn) as conn:
        row = conn.execute(
            "SELECT batch_id FROM uploads WHERE id = %s", (upload_url.rsplit("/", 1)[-1],)
        ).fetchone()
    assert row is not None
    return str(row[0])


# -- tus, with tuspy ---------------------------------------------------------------------


def test_tuspy_uploads_a_dicom_file_in_checksummed_chunks_and_it_is_stored_as_received(
    gateway: Gateway, uploader: tuple[str, str], tmp_path: Path
) -> None:
    name, token = uploader
    data, uid = big_dicom()
    path = tmp_path / "image.dcm"
    path.write_bytes(data)
    tus = tus_client.TusClient(
        f"http://127.0.0.1:{gateway.api_port}/api/v1/uploads",
        headers={"Authorization": f"Bearer {token}"},
    )
    up = tus.uploader(
        str(path), chunk_size=100_000, metadata={"filename": "image.dcm"}, upload_checksum=True
    )
    up.upload()
    assert up.offset == len(data)
    with api(gateway, token) as http:
        done = wait_state(http, batch_of(gateway, up.url), "received", "failed")
    assert done["state"] == "received", done
    assert done["instances"] == 1
    assert instance_rows(gateway, uid) == [("upload", name)]
    assert stored_dataset(gateway, uid) == dataset_of(data)
    # The upload's own copy is gone once taken in.
    assert not (gateway.storage / "uploads" / up.url.rsplit("/", 1)[-1]).exists()


def test_tuspy_resumes_where_the_server_says_the_upload_stopped(
    gateway: Gateway, uploader: tuple[str, str], tmp_path: Path
) -> None:
    _, token = uploader
    data, uid = big_dicom()
    path = tmp_path / "resume.dcm"
    path.write_bytes(data)
    tus = tus_client.TusClient(
        f"http://127.0.0.1:{gateway.api_port}/api/v1/uploads",
        headers={"Authorization": f"Bearer {token}"},
    )
    first = tus.uploader(str(path), chunk_size=CHUNK)
    first.upload(stop_at=3 * CHUNK)
    head = httpx.head(first.url, headers=TUS | {"Authorization": f"Bearer {token}"})
    assert head.status_code == 200
    assert int(head.headers["Upload-Offset"]) == 3 * CHUNK
    assert head.headers["Upload-Length"] == str(len(data))
    # A new client (a restarted app) asks the server and sends only the rest.
    again = tus.uploader(str(path), url=first.url, chunk_size=CHUNK)
    assert again.offset == 3 * CHUNK
    again.upload()
    with api(gateway, token) as http:
        assert wait_state(http, batch_of(gateway, first.url), "received")["instances"] == 1
    assert stored_dataset(gateway, uid) == dataset_of(data)


# -- tus, request by request -----------------------------------------------------------


def tus_create(gateway: Gateway, token: str, length: int | None, **headers: str) -> httpx.Response:
    sent = TUS | {"Authorization": f"Bearer {token}"} | headers
    if length is not None:
        sent["Upload-Length"] = str(length)
    return httpx.post(
        f"http://127.0.0.1:{gateway.api_port}/api/v1/uploads", headers=sent, timeout=30
    )


def tus_patch(url: str, token: str, offset: int, content: bytes, **headers: str) -> httpx.Response:
    return httpx.patch(
        url,
        content=content,
        headers=TUS
        | {
            "Authorization": f"Bearer {token}",
            "Upload-Offset": str(offset),
            "Content-Type": "application/offset+octet-stream",
        }
        | headers,
        timeout=30,
    )


def test_options_says_what_the_server_supports(gateway: Gateway) -> None:
    answer = httpx.options(f"http://127.0.0.1:{gateway.api_port}/api/v1/uploads")
    assert answer.status_code == 204
    assert answer.headers["Tus-Version"] == "1.0.0"
    extensions = set(answer.headers["Tus-Extension"].split(","))
    assert extensions == {
        "creation",
        "creation-with-upload",
        "creation-defer-length",
        "expiration",
        "termination",
        "checksum",
        "concatenation",
    }
    assert set(answer.headers["Tus-Checksum-Algorithm"].split(",")) == {"sha1", "md5", "sha256"}
    assert answer.headers["Tus-Max-Size"] == str(8 << 20)


def test_protocol_errors_are_clear_and_keep_nothing(
    gateway: Gateway, uploader: tuple[str, str]
) -> None:
    _, token = uploader
    data, _ = big_dicom(size=128)
    no_version = httpx.post(
        f"http://127.0.0.1:{gateway.api_port}/api/v1/uploads",
        headers={"Authorization": f"Bearer {token}", "Upload-Length": "10"},
    )
    assert no_version.status_code == 400
    assert no_version.headers["Tus-Version"] == "1.0.0"
    other = tus_create(gateway, token, 10, **{"Tus-Resumable": "0.2.2"})
    assert other.status_code == 412
    assert other.headers["Tus-Version"] == "1.0.0"
    assert tus_create(gateway, token, None).status_code == 400
    too_big = tus_create(gateway, token, (8 << 20) + 1)
    assert too_big.status_code == 413
    assert too_big.headers["content-type"] == "application/problem+json"

    created = tus_create(gateway, token, len(data))
    assert created.status_code == 201, created.text
    url = created.headers["Location"]
    assert "Upload-Expires" in created.headers
    # Wrong offset: 409, and the upload is unchanged.
    assert tus_patch(url, token, 5, data[5:100]).status_code == 409
    # Wrong content type: 415.
    assert (
        tus_patch(url, token, 0, data, **{"Content-Type": "application/octet-stream"}).status_code
        == 415
    )
    # A checksum that does not match: 460, and the bytes do not count.
    wrong = base64.b64encode(hashlib.sha1(b"other").digest()).decode()
    mismatch = tus_patch(url, token, 0, data[:1000], **{"Upload-Checksum": f"sha1 {wrong}"})
    assert mismatch.status_code == 460, mismatch.text
    head = httpx.head(url, headers=TUS | {"Authorization": f"Bearer {token}"})
    assert head.headers["Upload-Offset"] == "0"
    # The right one, with md5 and sha256 as well.
    for n, algorithm in enumerate(("md5", "sha256", "sha1")):
        part = data[n * 1000 : (n + 1) * 1000]
        digest = base64.b64encode(hashlib.new(algorithm, part).digest()).decode()
        sent = tus_patch(url, token, n * 1000, part, **{"Upload-Checksum": f"{algorithm} {digest}"})
        assert sent.status_code == 204, sent.text
        assert sent.headers["Upload-Offset"] == str((n + 1) * 1000)
    # Past the upload's length: 413.
    assert tus_patch(url, token, 3000, data[3000:] + b"extra").status_code == 413
    # Termination: gone, bytes removed.
    gone = httpx.delete(url, headers=TUS | {"Authorization": f"Bearer {token}"})
    assert gone.status_code == 204
    assert httpx.head(url, headers=TUS | {"Authorization": f"Bearer {token}"}).status_code == 404
    assert not (gateway.storage / "uploads" / url.rsplit("/", 1)[-1]).exists()


def test_a_file_that_is_not_dicom_image_pdf_or_zip_is_refused_at_its_first_bytes(
    gateway: Gateway, uploader: tuple[str, str]
) -> None:
    _, token = uploader
    junk = b"MZ" + bytes(500)
    url = tus_create(gateway, token, len(junk)).headers["Location"]
    refused = tus_patch(url, token, 0, junk)
    assert refused.status_code == 415
    assert "not a DICOM, JPEG, PNG, PDF or ZIP file" in refused.json()["detail"]
    assert httpx.head(url, headers=TUS | {"Authorization": f"Bearer {token}"}).status_code == 410
    assert not (gateway.storage / "uploads" / url.rsplit("/", 1)[-1]).exists()


def test_creation_with_upload_and_deferred_length(
    gateway: Gateway, uploader: tuple[str, str]
) -> None:
    _, token = uploader
    data, uid = big_dicom(size=128)
    created = httpx.post(
        f"http://127.0.0.1:{gateway.api_port}/api/v1/uploads",
        content=data[:5000],
        headers=TUS
        | {
            "Authorization": f"Bearer {token}",
            "Upload-Defer-Length": "1",
            "Content-Type": "application/offset+octet-stream",
        },
    )
    assert created.status_code == 201, created.text
    assert created.headers["Upload-Offset"] == "5000"
    url = created.headers["Location"]
    head = httpx.head(url, headers=TUS | {"Authorization": f"Bearer {token}"})
    assert head.headers["Upload-Defer-Length"] == "1"
    rest = tus_patch(url, token, 5000, data[5000:], **{"Upload-Length": str(len(data))})
    assert rest.status_code == 204, rest.text
    with api(gateway, token) as http:
        wait_state(http, batch_of(gateway, url), "received")
    assert stored_dataset(gateway, uid) == dataset_of(data)


def test_concatenation_joins_parallel_partial_uploads(
    gateway: Gateway, uploader: tuple[str, str]
) -> None:
    _, token = uploader
    data, uid = big_dicom(size=256)
    cut = len(data) // 3
    urls = []
    for piece in (data[:cut], data[cut : 2 * cut], data[2 * cut :]):
        created = tus_create(gateway, token, len(piece), **{"Upload-Concat": "partial"})
        assert created.status_code == 201, created.text
        urls.append(created.headers["Location"])
        assert tus_patch(urls[-1], token, 0, piece).status_code == 204
    final = httpx.post(
        f"http://127.0.0.1:{gateway.api_port}/api/v1/uploads",
        headers=TUS
        | {"Authorization": f"Bearer {token}", "Upload-Concat": "final;" + " ".join(urls)},
    )
    assert final.status_code == 201, final.text
    head = httpx.head(final.headers["Location"], headers=TUS | {"Authorization": f"Bearer {token}"})
    assert head.headers["Upload-Offset"] == str(len(data))
    with api(gateway, token) as http:
        wait_state(http, batch_of(gateway, final.headers["Location"]), "received")
    assert stored_dataset(gateway, uid) == dataset_of(data)
    for url in urls:
        assert not (gateway.storage / "uploads" / url.rsplit("/", 1)[-1]).exists()


# -- the upload session API ------------------------------------------------------------------


def init(http: httpx.Client, files: list[tuple[str, bytes]], **form: str) -> dict[str, Any]:
    made = http.post(
        "/upload/init",
        json={"files": [{"name": n, "size": len(d)} for n, d in files]} | form,
    )
    assert made.status_code == 201, made.text
    answer: dict[str, Any] = made.json()
    return answer


def put_chunk(
    http: httpx.Client, batch_id: str, file: int, index: int, data: bytes, *, md5: bool = True
) -> httpx.Response:
    piece = data[index * CHUNK : (index + 1) * CHUNK]
    headers = {"Content-Type": "application/octet-stream"}
    if md5:
        headers["Content-MD5"] = base64.b64encode(hashlib.md5(piece).digest()).decode()
    return http.put(
        f"/upload/{batch_id}/chunk", params={"file": file, "index": index}, content=piece,
        headers=headers,
    )  # fmt: skip


def test_session_api_chunks_in_any_order_missing_chunks_and_an_idempotent_chunk(
    gateway: Gateway, uploader: tuple[str, str]
) -> None:
    name, token = uploader
    study = generate_uid()
    a, uid_a = big_dicom(study)
    b, uid_b = big_dicom(study, size=100)
    with api(gateway, token) as http:
        made = init(http, [("a.dcm", a), ("b.dcm", b)], patient_name="X", modality="CT")
        batch_id = made["upload_id"]
        assert made["chunk_size"] == CHUNK
        chunks_a = made["files"][0]["chunks"]
        assert chunks_a == -(-len(a) // CHUNK)
        assert "/api/v1/uploads/" in made["files"][0]["tus_url"]
        # Every other chunk of a, backwards; nothing of b.
        for index in reversed(range(0, chunks_a, 2)):
            assert put_chunk(http, batch_id, 0, index, a).status_code == 204
        status = http.get(f"/upload/{batch_id}/status").json()
        assert status["state"] == "uploading"
        assert status["files"][0]["missing_chunks"] == list(range(1, chunks_a, 2))
        assert status["files"][1]["missing_chunks"] == [0]
        # A chunk already stored: 204, and it is not written again.
        file_a = gateway.storage / "uploads" / made["files"][0]["tus_url"].rsplit("/", 1)[-1]
        before = file_a.stat().st_mtime_ns
        time.sleep(0.01)
        assert put_chunk(http, batch_id, 0, 0, a).status_code == 204
        assert file_a.stat().st_mtime_ns == before
        # MD5 mismatch: 460 and the chunk is still missing.
        bad = http.put(
            f"/upload/{batch_id}/chunk",
            params={"file": 0, "index": 1},
            content=a[CHUNK : 2 * CHUNK],
            headers={"Content-MD5": base64.b64encode(hashlib.md5(b"x").digest()).decode()},
        )
        assert bad.status_code == 460, bad.text
        assert 1 in http.get(f"/upload/{batch_id}/status").json()["files"][0]["missing_chunks"]
        # Complete too early: 409 with what is missing.
        early = http.post(f"/upload/{batch_id}/complete")
        assert early.status_code == 409
        assert early.json()["missing_chunks"]["b.dcm"] == [0]
        for index in range(1, chunks_a, 2):
            assert put_chunk(http, batch_id, 0, index, a).status_code == 204
        for index in range(-(-len(b) // CHUNK)):
            assert put_chunk(http, batch_id, 1, index, b).status_code == 204
        status = http.get(f"/upload/{batch_id}/status").json()
        assert status["bytes_received"] == status["bytes_total"] == len(a) + len(b)
        done = http.post(f"/upload/{batch_id}/complete")
        assert done.status_code == 202, done.text
        final = wait_state(http, batch_id, "received", "failed")
    assert final["state"] == "received"
    assert [f["result"]["stored"] for f in final["files"]] == [1, 1]
    for uid, data in ((uid_a, a), (uid_b, b)):
        assert instance_rows(gateway, uid) == [("upload", name)]
        assert stored_dataset(gateway, uid) == dataset_of(data)


def test_a_study_received_recently_is_a_409_with_when_and_by_whom_unless_forced(
    gateway: Gateway, uploader: tuple[str, str]
) -> None:
    name, token = uploader
    study = generate_uid()
    first, _ = big_dicom(study, size=64)
    second, uid2 = big_dicom(study, size=64)
    with api(gateway, token) as http:
        for data in (first,):
            made = init(http, [("1.dcm", data)])
            assert put_chunk(http, made["upload_id"], 0, 0, data).status_code == 204
            assert http.post(f"/upload/{made['upload_id']}/complete").status_code == 202
            wait_state(http, made["upload_id"], "received")
        again = init(http, [("2.dcm", second)])
        assert put_chunk(http, again["upload_id"], 0, 0, second).status_code == 204
        refused = http.post(f"/upload/{again['upload_id']}/complete")
        assert refused.status_code == 409, refused.text
        problem = refused.json()
        assert problem["type"].endswith(":duplicate")
        [found] = problem["duplicates"]
        assert found["study_instance_uid"] == study
        assert found["by"] == name
        assert "force=true" in problem["detail"]
        forced = http.post(f"/upload/{again['upload_id']}/complete", params={"force": "true"})
        assert forced.status_code == 202, forced.text
        wait_state(http, again["upload_id"], "received")
    assert instance_rows(gateway, uid2) == [("upload", name)]


def test_a_zip_is_expanded_and_a_zip_with_a_path_out_of_it_is_refused(
    gateway: Gateway, uploader: tuple[str, str]
) -> None:
    _, token = uploader
    study = generate_uid()
    files = [big_dicom(study, size=64) for _ in range(3)]
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for n, (data, _) in enumerate(files):
            z.writestr(f"STUDY/SERIES/IM{n}", data)
        z.writestr("DICOMDIR", b"not looked at")
    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../../etc/cron.d/x", files[0][0])
    with api(gateway, token) as http:
        made = init(http, [("study.zip", archive.getvalue())])
        data = archive.getvalue()
        for index in range(-(-len(data) // CHUNK)):
            assert put_chunk(http, made["upload_id"], 0, index, data).status_code == 204
        assert http.post(f"/upload/{made['upload_id']}/complete").status_code == 202
        done = wait_state(http, made["upload_id"], "received", "failed")
        assert done["state"] == "received"
        assert done["files"][0]["result"]["stored"] == 3
        bad = init(http, [("evil.zip", evil.getvalue())])
        for index in range(-(-len(evil.getvalue()) // CHUNK)):
            assert put_chunk(http, bad["upload_id"], 0, index, evil.getvalue()).status_code == 204
        refused = http.post(f"/upload/{bad['upload_id']}/complete")
        assert refused.status_code == 415, refused.text
        assert "evil.zip" in refused.json()["detail"]
    for data, uid in files:
        assert stored_dataset(gateway, uid) == dataset_of(data)


def test_a_jpeg_and_a_pdf_become_instances_of_the_forms_study(
    gateway: Gateway, uploader: tuple[str, str]
) -> None:
    from PIL import Image

    _, token = uploader
    photo = io.BytesIO()
    Image.new("RGB", (320, 240), (200, 30, 30)).save(photo, "JPEG", quality=90)
    pdf = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
    pid = f"PID-{uuid.uuid4().hex[:8]}"
    with api(gateway, token) as http:
        made = init(
            http,
            [("wound.jpg", photo.getvalue()), ("referral.pdf", pdf)],
            patient_name="Doe^Jane",
            patient_id=pid,
            study_date="2026-12-01",
            modality="XC",
        )
        for n, data in enumerate((photo.getvalue(), pdf)):
            for index in range(-(-len(data) // CHUNK)):
                assert put_chunk(http, made["upload_id"], n, index, data).status_code == 204
        assert http.post(f"/upload/{made['upload_id']}/complete").status_code == 202
        done = wait_state(http, made["upload_id"], "received", "failed")
        assert done["state"] == "received", done
    assert gateway.dsn is not None
    with psycopg.connect(gateway.dsn) as conn:
        rows = conn.execute(
            "SELECT st.study_instance_uid, i.sop_class_uid, se.modality FROM instances i "
            "JOIN series se ON se.id = i.series_id JOIN studies st ON st.id = se.study_id "
            "WHERE st.patient_id = %s ORDER BY i.sop_class_uid",
            (pid,),
        ).fetchall()
    assert len({r[0] for r in rows}) == 1, rows
    assert [r[1] for r in rows] == ["1.2.840.10008.5.1.4.1.1.104.1", "1.2.840.10008.5.1.4.1.1.7"]


# -- who may ---------------------------------------------------------------------------------


def test_an_uploader_sees_its_own_uploads_and_nothing_of_the_archive(
    gateway: Gateway, account: Callable[[str], tuple[str, str]]
) -> None:
    _, one = account("uploader")
    _, other = account("uploader")
    _, operator = account("operator")
    data, _ = big_dicom(size=64)
    with api(gateway, one) as http:
        made = init(http, [("x.dcm", data)])
        assert http.get("/upload").json()["items"][0]["upload_id"] == made["upload_id"]
        assert http.get("/studies").status_code == 403
    dicomweb = httpx.get(
        f"http://127.0.0.1:{gateway.api_port}/dicom-web/studies",
        headers={"Authorization": f"Bearer {one}"},
    )
    assert dicomweb.status_code == 403
    with api(gateway, other) as http:
        assert http.get(f"/upload/{made['upload_id']}/status").status_code == 404
        assert made["upload_id"] not in {
            i["upload_id"] for i in http.get("/upload").json()["items"]
        }
        assert put_chunk(http, made["upload_id"], 0, 0, data).status_code == 404
    tus_url = made["files"][0]["tus_url"]
    assert (
        httpx.head(tus_url, headers=TUS | {"Authorization": f"Bearer {other}"}).status_code == 404
    )
    with api(gateway, operator) as http:
        assert http.get(f"/upload/{made['upload_id']}/status").status_code == 200
    with api(gateway, account("viewer")[1]) as http:
        assert (
            http.post("/upload/init", json={"files": [{"name": "x", "size": 1}]}).status_code == 403
        )


def test_quota_of_bytes_in_flight(gateway: Gateway, uploader: tuple[str, str]) -> None:
    _, token = uploader
    with api(gateway, token) as http:
        first = http.post("/upload/init", json={"files": [{"name": "a", "size": 8 << 20}] * 2})
        assert first.status_code == 201, first.text
        over = http.post("/upload/init", json={"files": [{"name": "b", "size": 8 << 20}] * 2})
        assert over.status_code == 413
        assert "max_user_bytes_in_flight" in over.json()["detail"]
        assert http.delete(f"/upload/{first.json()['upload_id']}").status_code == 204
        assert (
            http.post("/upload/init", json={"files": [{"name": "b", "size": 1024}]}).status_code
            == 201
        )


def test_files_of_one_study_sent_one_by_one_with_tus_are_not_duplicates_but_a_resend_is(
    gateway: Gateway, uploader: tuple[str, str]
) -> None:
    """A client that sends a study file by file (Uppy on a folder) makes an upload
    of each: the second file of the study is not a duplicate of the first, but
    the same file again is (with when and by whom), and waits for force."""
    name, token = uploader
    study = generate_uid()
    files = [big_dicom(study, size=64) for _ in range(3)]
    batches = []
    for data, _ in files:
        url = tus_create(gateway, token, len(data)).headers["Location"]
        assert tus_patch(url, token, 0, data).status_code == 204
        batches.append(batch_of(gateway, url))
    with api(gateway, token) as http:
        for batch_id in batches:
            assert wait_state(http, batch_id, "received", "failed")["state"] == "received"
        again = tus_create(gateway, token, len(files[0][0])).headers["Location"]
        assert tus_patch(again, token, 0, files[0][0]).status_code == 204
        waiting = http.get(f"/upload/{batch_of(gateway, again)}/status").json()
        assert waiting["state"] == "uploading"
        assert f"instance {files[0][1]}" in waiting["error"]
        assert f"by {name}" in waiting["error"]
        forced = http.post(f"/upload/{batch_of(gateway, again)}/complete", params={"force": "true"})
        assert forced.status_code == 202, forced.text
    for _, uid in files:
        assert instance_rows(gateway, uid) == [("upload", name)]
