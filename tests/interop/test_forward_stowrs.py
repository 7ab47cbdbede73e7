"""The STOW-RS sender against Orthanc's DICOMweb plugin and against a stub server
that gives chosen answers (PS3.18 10.5.3) and records every request byte."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, generate_uid

from dicomgw._core import crc32c
from dicomgw.config import StowDestination
from dicomgw.errors import ConfigError
from dicomgw.send.delivery import Outcome, StoredInstance
from dicomgw.send.stowrs import CHUNK_SIZE, DestinationUnreachable, StowSender
from dicomgw.storage.part10 import parse_file_meta
from tests.interop.orthanc import Orthanc, running_orthanc

HOST = "127.0.0.1"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
MULTIPART = 'multipart/related; type="application/dicom"; boundary='


# -- instances ---------------------------------------------------------------------------------


def make_instances(directory: Path, count: int, rows: int = 64) -> list[StoredInstance]:
    """``count`` Part 10 files of one new series (``rows`` x 512 bytes of pixels each)."""
    directory.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    items = []
    for n in range(count):
        ds = Dataset()
        ds.SOPClassUID = SECONDARY_CAPTURE
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientID, ds.PatientName, ds.Modality = "STOW-1", "Stow^Test", "OT"
        ds.InstanceNumber = n + 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = rows, 512
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = hashlib.shake_256(ds.SOPInstanceUID.encode()).digest(rows * 512)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = UID(EXPLICIT_LE)
        path = directory / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        data = path.read_bytes()
        dataset = data[parse_file_meta(data).dataset_offset :]
        items.append(
            StoredInstance(
                job_id=n,
                instance_id=n,
                sop_class_uid=SECONDARY_CAPTURE,
                sop_instance_uid=str(ds.SOPInstanceUID),
                transfer_syntax_uid=EXPLICIT_LE,
                path=path,
                dataset_size=len(dataset),
                checksum=f"crc32c:{crc32c(dataset):08x}",
            )
        )
    return items


def destination(url: str, **options: Any) -> StowDestination:
    return StowDestination(name="stow-test", url=url, **options)


@contextlib.asynccontextmanager
async def sender_for(url: str, **options: Any) -> AsyncIterator[StowSender]:
    sender = StowSender(destination(url, **options))
    try:
        yield sender
    finally:
        await sender.close()


# -- servers in this process -------------------------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]]


@contextlib.asynccontextmanager
async def serving(
    handler: Handler, tls: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[int, list[int]]]:
    """A TCP server on a free port; yields (port, connection count in a list). At exit
    the connections still open are closed and their handlers awaited (3.11's
    wait_closed does neither)."""
    tasks: list[asyncio.Task[None]] = []
    writers: list[asyncio.StreamWriter] = []
    connections = [0]

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.append(task)
        writers.append(writer)
        connections[0] += 1
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(tracked, HOST, 0, ssl=tls)
    try:
        yield server.sockets[0].getsockname()[1], connections
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    """Names in lower case."""
    body: bytes


Reply = tuple[int, dict[str, str], bytes]
HANG = "hang"
"""Answer nothing, keep the connection open until the client closes it."""
CLOSE = "close"
"""Close the connection without an answer."""


@dataclass
class Stub:
    """A DICOMweb server that answers each request with ``answer(request)``."""

    answer: Callable[[Request], Reply | str]
    delay_s: float = 0.0
    requests: list[Request] = field(default_factory=list)
    port: int = 0
    connections: list[int] = field(default_factory=lambda: [0])
    in_flight: int = 0
    max_in_flight: int = 0

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/dicomweb"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            method, target, _ = line.decode("latin-1").split(" ", 2)
            headers = {}
            while (header := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = header.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            assert "transfer-encoding" not in headers, "the body should have a Content-Length"
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            request = Request(method, target, headers, body)
            self.requests.append(request)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                await asyncio.sleep(self.delay_s)
                reply = self.answer(request)
            finally:
                self.in_flight -= 1
            if reply == HANG:
                await reader.read()
            if not isinstance(reply, tuple):
                return
            code, reply_headers, payload = reply
            head = [f"HTTP/1.1 {code} {HTTPStatus(code).phrase}", f"Content-Length: {len(payload)}"]
            head += [f"{name}: {value}" for name, value in reply_headers.items()]
            writer.write("\r\n".join(head).encode() + b"\r\n\r\n" + payload)
            await writer.drain()


@contextlib.asynccontextmanager
async def stub_server(
    answer: Callable[[Request], Reply | str], delay_s: float = 0.0
) -> AsyncIterator[Stub]:
    stub = Stub(answer, delay_s)
    async with serving(stub.handle) as (port, connections):
        stub.port, stub.connections = port, connections
        yield stub


def replying(code: int, body: bytes = b"", **headers: str) -> Callable[[Request], Reply]:
    return lambda request: (code, headers, body)


def dicom_json(
    failed: dict[str, int] | None = None, stored: dict[str, int | None] | None = None
) -> bytes:
    """A Store Instances Response (PS3.18 10.5.3) in DICOM JSON."""

    def reference(uid: str, tag: str | None, reason: int | None) -> dict[str, Any]:
        item: dict[str, Any] = {
            "00081150": {"vr": "UI", "Value": [SECONDARY_CAPTURE]},
            "00081155": {"vr": "UI", "Value": [uid]},
        }
        if tag is not None and reason is not None:
            item[tag] = {"vr": "US", "Value": [reason]}
        return item

    response: dict[str, Any] = {}
    if failed is not None:
        items = [reference(uid, "00081197", reason) for uid, reason in failed.items()]
        response["00081198"] = {"vr": "SQ", "Value": items}
    if stored is not None:
        items = [reference(uid, "00081196", reason) for uid, reason in stored.items()]
        response["00081199"] = {"vr": "SQ", "Value": items}
    return json.dumps(response).encode()


DICOM_JSON = {"Content-Type": "application/dicom+json"}


def parts_of(request: Request) -> list[bytes]:
    """The parts of a STOW-RS body (RFC 2046 framing), each checked for its header."""
    content_type = request.headers["content-type"]
    assert content_type.startswith(MULTIPART)
    boundary = content_type.removeprefix(MULTIPART).encode()
    first, last = b"--" + boundary + b"\r\n", b"\r\n--" + boundary + b"--\r\n"
    assert request.body.startswith(first)
    assert request.body.endswith(last)
    parts = []
    for part in request.body[len(first) : -len(last)].split(b"\r\n--" + boundary + b"\r\n"):
        head, _, content = part.partition(b"\r\n\r\n")
        assert head == b"Content-Type: application/dicom"
        parts.append(content)
    return parts


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# -- Orthanc -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as running:
        yield running


@dataclass
class Relay:
    """Forwards TCP to Orthanc and keeps what the client sent, per connection."""

    target_port: int
    sent: list[bytearray] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(HOST, self.target_port)
        sent = bytearray()
        self.sent.append(sent)

        async def pipe(
            source: asyncio.StreamReader, sink: asyncio.StreamWriter, kept: bytearray | None
        ) -> None:
            try:
                while data := await source.read(1 << 16):
                    if kept is not None:
                        kept += data
                    sink.write(data)
                    await sink.drain()
            finally:
                sink.close()

        await asyncio.gather(
            pipe(reader, upstream_writer, sent),
            pipe(upstream_reader, writer, None),
            return_exceptions=True,
        )


async def test_orthanc_stores_every_instance_byte_exact(orthanc: Orthanc, tmp_path: Path) -> None:
    """Several instances per request, one kept-alive connection across send() calls, and
    Orthanc (1.10) keeps each part as it was sent: its file is ours byte for byte."""
    items = make_instances(tmp_path / "small", 4)
    # Larger than a few read chunks, so the streamed body crosses chunk boundaries.
    items += make_instances(tmp_path / "large", 1, rows=(3 * CHUNK_SIZE) // 512 + 7)
    relay = Relay(orthanc.http_port)
    async with (
        serving(relay.handle) as (port, connections),
        sender_for(f"http://{HOST}:{port}/dicom-web", instances_per_request=2) as sender,
    ):
        first = await sender.send(items[:3])
        second = await sender.send(items[3:])
    for outcome in first + second:
        assert outcome.kind == "delivered", outcome
        assert outcome.status == 200
        assert not outcome.warning
    assert connections[0] == 1
    posts = sum(sent.count(b"POST /dicom-web/studies HTTP/1.1\r\n") for sent in relay.sent)
    assert posts == 3  # 2 + 1, then 2
    stored = orthanc.instances()
    for item in items:
        assert item.sop_instance_uid in stored
        assert orthanc.file(stored[item.sop_instance_uid]) == item.path.read_bytes()


async def test_orthanc_echo_and_resend(orthanc: Orthanc, tmp_path: Path) -> None:
    items = make_instances(tmp_path, 2)
    async with sender_for(orthanc.dicomweb_url) as sender:
        assert 0 < await sender.echo() < 5
        assert [o.kind for o in await sender.send(items)] == ["delivered"] * 2
        # Orthanc accepts the same instances again (it keeps one copy).
        assert [o.kind for o in await sender.send(items)] == ["delivered"] * 2
    stored = orthanc.instances()
    assert {item.sop_instance_uid for item in items} <= stored.keys()


# -- answers -----------------------------------------------------------------------------------


async def test_all_stored_request_is_exactly_the_files(tmp_path: Path) -> None:
    items = make_instances(tmp_path, 3)
    items += make_instances(tmp_path / "large", 1, rows=(2 * CHUNK_SIZE) // 512 + 3)
    async with (
        stub_server(replying(200, dicom_json(stored={}), **DICOM_JSON)) as stub,
        sender_for(stub.url) as sender,
    ):
        outcomes = await sender.send(items)
    assert outcomes == [Outcome("delivered", 200, "stored (HTTP 200 OK)")] * 4
    [request] = stub.requests
    assert (request.method, request.target) == ("POST", "/dicomweb/studies")
    assert request.headers["accept"].startswith("application/dicom+json")
    assert "authorization" not in request.headers
    assert parts_of(request) == [item.path.read_bytes() for item in items]


async def test_202_classifies_each_instance(tmp_path: Path) -> None:
    items = make_instances(tmp_path, 7)
    uids = [item.sop_instance_uid for item in items]
    answer = dicom_json(
        failed={uids[2]: 0xA700, uids[3]: 0xC000, uids[4]: 0x0111, uids[6]: 0xA9F0},
        stored={uids[0]: None, uids[1]: 0xB000},
    )
    async with (
        stub_server(replying(202, answer, **DICOM_JSON)) as stub,
        sender_for(stub.url) as sender,
    ):
        outcomes = await sender.send(items)
    got = [(o.kind, o.status, o.warning) for o in outcomes]
    assert got == [
        ("delivered", 202, False),
        ("delivered", 0xB000, True),
        ("transient", 0xA700, False),
        ("permanent", 0xC000, False),
        ("delivered", 0x0111, True),
        ("transient", 202, False),  # not named in the answer: sent again
        ("permanent", 0xA9F0, False),
    ]
    assert outcomes[1].message == (
        "stored with warning 0xB000 (coercion of data elements) (HTTP 202 Accepted)"
    )
    assert outcomes[2].message == (
        "refused for now: 0xA700 (out of resources) (HTTP 202 Accepted); will retry"
    )
    assert outcomes[3].message == "refused: 0xC000 (cannot understand) (HTTP 202 Accepted)"
    assert "already has this instance" in outcomes[4].message
    assert "did not say whether this instance was stored" in outcomes[5].message
    assert "0xA9F0 (data set does not match SOP class)" in outcomes[6].message


async def test_409_with_and_without_reasons(tmp_path: Path) -> None:
    items = make_instances(tmp_path, 2)
    answer = dicom_json(failed={items[0].sop_instance_uid: 0xC122})
    async with (
        stub_server(replying(409, answer, **DICOM_JSON)) as stub,
        sender_for(stub.url) as sender,
    ):
        with_reason, without = await sender.send(items)
    assert (with_reason.kind, with_reason.status) == ("permanent", 0xC122)
    assert "transfer syntax not supported" in with_reason.message
    assert (without.kind, without.status) == ("permanent", 409)
    assert without.message.startswith("HTTP 409 Conflict: {")


@pytest.mark.parametrize(
    ("code", "headers", "expected"),
    [
        (500, {}, "HTTP 500 Internal Server Error: database is down; will retry"),
        (503, {"Retry-After": "120"}, "HTTP 503 Service Unavailable (Retry-After: 120): "),
        (429, {}, "HTTP 429 Too Many Requests: database is down; will retry"),
        (408, {}, "HTTP 408 Request Timeout: "),
    ],
)
async def test_http_answers_that_are_retried(
    tmp_path: Path, code: int, headers: dict[str, str], expected: str
) -> None:
    items = make_instances(tmp_path, 2)
    async with (
        stub_server(replying(code, b"database\n  is down", **headers)) as stub,
        sender_for(stub.url) as sender,
    ):
        outcomes = await sender.send(items)
    for outcome in outcomes:
        assert (outcome.kind, outcome.status) == ("transient", code)
        assert outcome.message.startswith(expected)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (401, "HTTP 401 Unauthorized: no; check the destination's credentials"),
        (400, "HTTP 400 Bad Request: no"),
        (404, "HTTP 404 Not Found: no; check the destination URL"),
        (413, "HTTP 413 Request Entity Too Large: no; the request is too large"),
    ],
)
async def test_http_answers_that_are_refusals(tmp_path: Path, code: int, expected: str) -> None:
    items = make_instances(tmp_path, 1)
    async with stub_server(replying(code, b"no")) as stub, sender_for(stub.url) as sender:
        [outcome] = await sender.send(items)
    assert (outcome.kind, outcome.status) == ("permanent", code)
    assert outcome.message.startswith(expected)


@pytest.mark.parametrize(
    ("code", "body", "kind"),
    [
        (200, b'{"00081199": {"vr": "SQ", "Value": [', "delivered"),
        (202, b"<NativeDicomModel/>", "transient"),
        (409, b"not json", "permanent"),
    ],
)
async def test_unreadable_answer_falls_back_to_the_http_status(
    tmp_path: Path, code: int, body: bytes, kind: str
) -> None:
    items = make_instances(tmp_path, 2)
    async with stub_server(replying(code, body)) as stub, sender_for(stub.url) as sender:
        outcomes = await sender.send(items)
    assert [(o.kind, o.status) for o in outcomes] == [(kind, code)] * 2


async def test_connection_refused_is_transient(tmp_path: Path) -> None:
    items = make_instances(tmp_path, 2)
    async with sender_for(f"http://{HOST}:{free_port()}/dicomweb") as sender:
        outcomes = await sender.send(items)
        with pytest.raises(DestinationUnreachable, match="cannot connect"):
            await sender.echo()
    for outcome in outcomes:
        assert (outcome.kind, outcome.status) == ("transient", None)
        assert outcome.message.startswith("cannot connect (")


async def test_no_answer_within_timeout_is_transient(tmp_path: Path) -> None:
    items = make_instances(tmp_path, 1)
    async with (
        stub_server(lambda request: HANG) as stub,
        sender_for(stub.url, timeout_s=0.3) as sender,
    ):
        [outcome] = await sender.send(items)
    assert (outcome.kind, outcome.status) == ("transient", None)
    assert outcome.message.startswith("no answer within 0.3 s")


async def test_connection_closed_without_answer_is_transient(tmp_path: Path) -> None:
    items = make_instances(tmp_path, 1)
    async with stub_server(lambda request: CLOSE) as stub, sender_for(stub.url) as sender:
        [outcome] = await sender.send(items)
    assert (outcome.kind, outcome.status) == ("transient", None)
    assert outcome.message.startswith("connection lost (")


# -- what is sent ------------------------------------------------------------------------------


async def test_corrupted_or_missing_files_are_not_sent(tmp_path: Path) -> None:
    items = make_instances(tmp_path, 4)
    data = bytearray(items[1].path.read_bytes())
    data[-1] ^= 0xFF
    items[1].path.write_bytes(data)
    items[3].path.unlink()
    async with (
        stub_server(replying(200, dicom_json(stored={}), **DICOM_JSON)) as stub,
        sender_for(stub.url) as sender,
    ):
        outcomes = await sender.send(items)
    assert [(o.kind, o.status) for o in outcomes] == [
        ("delivered", 200),
        ("permanent", None),
        ("delivered", 200),
        ("permanent", None),
    ]
    assert "data set checksum" in outcomes[1].message
    assert "No such file or directory" in outcomes[3].message
    [request] = stub.requests
    assert parts_of(request) == [items[0].path.read_bytes(), items[2].path.read_bytes()]


async def test_withdrawn_items_are_left_out_and_answers_told(tmp_path: Path) -> None:
    items = make_instances(tmp_path, 4)
    told: list[tuple[str, str]] = []

    class Progress:
        def wanted(self, item: StoredInstance) -> bool:
            return item is not items[2]

        def answered(self, item: StoredInstance, outcome: Outcome) -> None:
            told.append((item.sop_instance_uid, outcome.kind))

    async with (
        stub_server(replying(200, dicom_json(stored={}), **DICOM_JSON)) as stub,
        sender_for(stub.url, instances_per_request=2) as sender,
    ):
        outcomes = await sender.send(items, Progress())
    assert [o.kind for o in outcomes] == ["delivered", "delivered", "withdrawn", "delivered"]
    assert [len(parts_of(r)) for r in stub.requests] == [2, 1]
    assert told == [(items[n].sop_instance_uid, "delivered") for n in (0, 1, 3)]


async def test_nothing_left_to_send_makes_no_request(tmp_path: Path) -> None:
    [item] = make_instances(tmp_path, 1)
    item.path.write_bytes(item.path.read_bytes()[:-1])
    async with stub_server(replying(200)) as stub, sender_for(stub.url) as sender:
        assert [o.kind for o in await sender.send([item])] == ["permanent"]
        assert await sender.send([]) == []
    assert stub.requests == []


async def test_batch_is_split_and_connections_are_kept_alive(tmp_path: Path) -> None:
    items = make_instances(tmp_path, 7)
    async with (
        stub_server(replying(200)) as stub,
        sender_for(stub.url, instances_per_request=3) as sender,
    ):
        first = await sender.send(items[:5])
        second = await sender.send(items[5:])
    assert [o.kind for o in first + second] == ["delivered"] * 7
    assert [len(parts_of(request)) for request in stub.requests] == [3, 2, 2]
    sent = [part for request in stub.requests for part in parts_of(request)]
    assert sent == [item.path.read_bytes() for item in items]
    assert stub.connections[0] == 1


async def test_one_request_in_flight_per_sender(tmp_path: Path) -> None:
    """The forwarder runs max_parallel senders per destination: each sends serially."""
    items = make_instances(tmp_path, 4)
    async with (
        stub_server(replying(200), delay_s=0.05) as stub,
        sender_for(stub.url, instances_per_request=1, max_parallel=4) as sender,
    ):
        outcomes = await sender.send(items)
    assert [o.kind for o in outcomes] == ["delivered"] * 4
    assert len(stub.requests) == 4
    assert stub.max_in_flight == 1


async def test_after_a_server_failure_the_rest_of_the_batch_is_not_tried(tmp_path: Path) -> None:
    items = make_instances(tmp_path, 5)
    async with (
        stub_server(replying(503)) as stub,
        sender_for(stub.url, instances_per_request=2) as sender,
    ):
        outcomes = await sender.send(items)
    assert [(o.kind, o.status) for o in outcomes] == [("transient", 503)] * 5
    assert len(stub.requests) == 1


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"auth": "basic", "username": "gw", "password": "s3cr:t"}, "Basic "),
        ({"auth": "bearer", "token": "tok.en-1"}, "Bearer tok.en-1"),
    ],
)
async def test_auth_headers(tmp_path: Path, options: dict[str, str], expected: str) -> None:
    if options["auth"] == "basic":
        expected += base64.b64encode(b"gw:s3cr:t").decode()
    items = make_instances(tmp_path, 1)
    async with stub_server(replying(404)) as stub, sender_for(stub.url, **options) as sender:
        await sender.send(items)
        await sender.echo()
    assert [request.headers["authorization"] for request in stub.requests] == [expected] * 2


# -- probe -------------------------------------------------------------------------------------


async def test_echo_is_a_qido_request_and_any_answer_below_500_is_reachable() -> None:
    async with stub_server(replying(404)) as stub, sender_for(stub.url) as sender:
        assert 0 < await sender.echo() < 5
    [request] = stub.requests
    assert (request.method, request.target) == ("GET", "/dicomweb/studies?limit=1")


async def test_echo_with_a_5xx_answer_raises() -> None:
    async with (
        stub_server(replying(503, b"maintenance")) as stub,
        sender_for(stub.url) as sender,
    ):
        with pytest.raises(DestinationUnreachable) as raised:
            await sender.echo()
    assert str(raised.value) == (
        f"DICOMweb server {stub.url} is not reachable: HTTP 503 Service Unavailable: maintenance"
    )


# -- TLS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (made by the openssl tool)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", f"/CN={HOST}", "-addext", f"subjectAltName=IP:{HOST}",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.mark.parametrize(
    ("trust", "kind"),
    [("ca-file", "delivered"), ("no-verify", "delivered"), ("system", "transient")],
)
async def test_tls(tmp_path: Path, certificate: tuple[Path, Path], trust: str, kind: str) -> None:
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    choices: dict[str, dict[str, Any]] = {
        "ca-file": {"tls_ca_file": str(cert)},
        "no-verify": {"verify_tls": False},
        "system": {},
    }
    options = choices[trust]
    stub = Stub(replying(200))
    items = make_instances(tmp_path, 1)
    async with (
        serving(stub.handle, tls=context) as (port, _),
        sender_for(f"https://{HOST}:{port}/dicomweb", **options) as sender,
    ):
        [outcome] = await sender.send(items)
    assert outcome.kind == kind, outcome
    if kind == "transient":
        assert "CERTIFICATE_VERIFY_FAILED" in outcome.message


def test_unreadable_ca_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(ConfigError, match=r"tls_ca_file.*destination 'stow-test'"):
        StowSender(destination("https://pacs.example/dicomweb", tls_ca_file=str(missing)))
