"""STOW-RS (PS3.18 10.5) against a running gateway: dicomweb-client as the client,
raw multipart bodies for the byte-exact and the malformed cases. What must hold:
each part goes through the C-STORE ingest path (file, index row, provenance);
the data set bytes are kept exactly; one bad part never hides the others;
nothing of an unfinished or refused part stays behind."""

from __future__ import annotations

import io
import secrets
import socket
from collections.abc import Callable, Iterator

import httpx
import psycopg
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicomgw.storage.part10 import parse_file_meta
from tests.api.conftest import Client
from tests.gateway import Gateway
from tests.integration.scu import files_with_uid, make_dataset, parts

RELATED = 'multipart/related; type="application/dicom"; boundary='


def file_meta(ds: Dataset) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def part10(ds: Dataset) -> bytes:
    """``ds`` as a Part 10 file (what a STOW-RS part holds)."""
    ds.file_meta = file_meta(ds)
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def body(*parts_: bytes, boundary: str = "b0undary", close: bool = True) -> bytes:
    chunks = [
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p for p in parts_
    ]
    end = f"\r\n--{boundary}--\r\n".encode() if close else b""
    return b"\r\n".join(chunks) + end


@pytest.fixture
def operator(user_factory: Callable[[str], tuple[Client, str]]) -> Iterator[tuple[str, str]]:
    """(username, API token) of a new operator."""
    client, name = user_factory("operator")
    made = client.post("/me/tokens", json={"name": "stow", "expires_in_days": 1})
    assert made.status_code == 201, made.text
    yield name, made.json()["token"]


def stow(
    gateway: Gateway, token: str, content: bytes, path: str = "/studies", **headers: str
) -> httpx.Response:
    return httpx.post(
        f"http://127.0.0.1:{gateway.api_port}/dicom-web{path}",
        content=content,
        headers={"Authorization": f"Bearer {token}", "Content-Type": RELATED + "b0undary"}
        | headers,
        timeout=30,
    )


def rows(gateway: Gateway, uid: str) -> list[tuple[str, str | None, str]]:
    assert gateway.dsn is not None
    with psycopg.connect(gateway.dsn) as conn:
        return conn.execute(
            "SELECT source_kind, source_user, checksum FROM instances WHERE sop_instance_uid = %s",
            (uid,),
        ).fetchall()


def failure_reasons(answer: dict[str, object]) -> list[int]:
    items = answer.get("00081198", {}).get("Value", [])  # type: ignore[union-attr]
    return [item["00081197"]["Value"][0] for item in items]


def test_dicomweb_client_stores_through_the_ingest_path(
    session_gateway: Gateway, operator: tuple[str, str]
) -> None:
    name, token = operator
    client = DICOMwebClient(
        url=f"http://127.0.0.1:{session_gateway.api_port}/dicom-web",
        headers={"Authorization": f"Bearer {token}"},
    )
    study = generate_uid()
    datasets = [make_dataset(study_uid=study, instance_number=n) for n in (1, 2, 3)]
    for ds in datasets:
        # As read from a Part 10 file: dicomweb-client writes them as they are.
        ds.preamble = bytes(128)
        ds.file_meta = file_meta(ds)
    answer = client.store_instances(datasets=datasets)
    stored = {item.ReferencedSOPInstanceUID for item in answer.ReferencedSOPSequence}
    assert stored == {ds.SOPInstanceUID for ds in datasets}
    assert "FailedSOPSequence" not in answer
    for ds in datasets:
        assert [r[:2] for r in rows(session_gateway, ds.SOPInstanceUID)] == [("stow", name)]
        assert len(files_with_uid(session_gateway.storage, ds.SOPInstanceUID)) == 1


def test_the_data_set_bytes_are_kept_exactly(
    session_gateway: Gateway, operator: tuple[str, str]
) -> None:
    _, token = operator
    ds = make_dataset()
    sent = part10(ds)
    answer = stow(session_gateway, token, body(sent))
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/dicom+json"
    [stored] = files_with_uid(session_gateway.storage, ds.SOPInstanceUID)
    data = stored.read_bytes()
    kept = data[parse_file_meta(data[:4096]).dataset_offset :]
    assert kept == sent[parse_file_meta(sent[:4096]).dataset_offset :]


def test_a_bad_part_is_reported_and_the_others_are_stored(
    session_gateway: Gateway, operator: tuple[str, str]
) -> None:
    _, token = operator
    good, also_good = make_dataset(), make_dataset()
    before = parts(session_gateway.storage)
    answer = stow(
        session_gateway, token, body(part10(good), b"not DICOM at all" * 20, part10(also_good))
    )
    assert answer.status_code == 202, answer.text
    assert failure_reasons(answer.json()) == [0xC000]
    for ds in (good, also_good):
        assert len(files_with_uid(session_gateway.storage, ds.SOPInstanceUID)) == 1
    assert parts(session_gateway.storage) - before == set()


def test_a_truncated_body_keeps_the_complete_parts_only(
    session_gateway: Gateway, operator: tuple[str, str]
) -> None:
    _, token = operator
    complete, cut = make_dataset(), make_dataset()
    before = parts(session_gateway.storage)
    content = body(part10(complete), part10(cut)[:-500], close=False)
    answer = stow(session_gateway, token, content)
    assert answer.status_code == 202, answer.text
    assert failure_reasons(answer.json()) == [0xC000]
    assert len(files_with_uid(session_gateway.storage, complete.SOPInstanceUID)) == 1
    assert files_with_uid(session_gateway.storage, cut.SOPInstanceUID) == []
    assert rows(session_gateway, cut.SOPInstanceUID) == []
    assert parts(session_gateway.storage) - before == set()


def test_an_instance_of_another_study_is_refused(
    session_gateway: Gateway, operator: tuple[str, str]
) -> None:
    _, token = operator
    ds = make_dataset()
    answer = stow(session_gateway, token, body(part10(ds)), path=f"/studies/{generate_uid()}")
    assert answer.status_code == 409, answer.text
    assert failure_reasons(answer.json()) == [0xA900]
    assert files_with_uid(session_gateway.storage, ds.SOPInstanceUID) == []


def test_bad_requests_say_what_is_wrong(
    session_gateway: Gateway, operator: tuple[str, str]
) -> None:
    _, token = operator
    content = body(part10(make_dataset()))
    json_type = stow(session_gateway, token, content, **{"Content-Type": "application/json"})
    assert json_type.status_code == 415
    assert json_type.headers["content-type"] == "application/problem+json"
    no_boundary = stow(session_gateway, token, content, **{"Content-Type": "multipart/related"})
    assert no_boundary.status_code == 400
    nothing = stow(session_gateway, token, b"no delimiter anywhere")
    assert nothing.status_code == 400
    assert "close delimiter" in nothing.json()["detail"]


def test_who_may_store(
    session_gateway: Gateway,
    operator: tuple[str, str],
    user_factory: Callable[[str], tuple[Client, str]],
) -> None:
    name, token = operator
    content = body(part10(make_dataset()))
    url = f"http://127.0.0.1:{session_gateway.api_port}/dicom-web/studies"
    headers = {"Content-Type": RELATED + "b0undary"}
    assert httpx.post(url, content=content, headers=headers).status_code == 401
    # HTTP Basic with the API token as the password, as DICOMweb clients send it.
    assert httpx.post(url, content=content, headers=headers, auth=(name, token)).status_code == 200
    # Never the account password over Basic, and never another user's token.
    password = f"pw-{name}-long"
    assert (
        httpx.post(url, content=content, headers=headers, auth=(name, password)).status_code == 401
    )
    assert (
        httpx.post(url, content=content, headers=headers, auth=("admin", token)).status_code == 401
    )
    viewer, _ = user_factory("viewer")
    viewer_token = viewer.post("/me/tokens", json={"name": "v", "expires_in_days": 1}).json()[
        "token"
    ]
    refused = stow(session_gateway, viewer_token, body(part10(make_dataset())))
    assert refused.status_code == 403


def test_a_body_over_the_limit_is_refused_before_it_is_read(
    session_gateway: Gateway, operator: tuple[str, str]
) -> None:
    _, token = operator
    head = (
        "POST /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: {RELATED}b0undary\r\n"
        f"Content-Length: {16 << 30}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", session_gateway.api_port), 10) as sock:
        sock.settimeout(10)
        sock.sendall(head.encode() + secrets.token_bytes(64))
        status_line = sock.recv(4096).split(b"\r\n", 1)[0]
    assert status_line.split()[1] == b"413", status_line
