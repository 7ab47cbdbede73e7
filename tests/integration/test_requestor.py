"""The association requestor against real peers and scripted misbehaving ones.

Real peers: pynetdicom's byte-exact sink and pynetdicom acceptors configured to
refuse. Scripted peers: a few lines of asyncio that answer the A-ASSOCIATE-RQ
with dicom-gw's own acceptor negotiation, then break the protocol on purpose.
Everything runs on uvloop, the forwarder's loop."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop
from pydicom.uid import JPEGBaseline8Bit
from pynetdicom import AE, evt

from dicomgw.association.negotiation import Request, negotiate
from dicomgw.association.requestor import (
    AssociationAborted,
    AssociationLost,
    AssociationRejected,
    PeerProtocolError,
    PeerUnreachable,
    Requestor,
    command_pdus,
)
from dicomgw.config import DimseConfig
from dicomgw.dimse.commands import decode_command, encode_c_echo_rsp
from dicomgw.storage.part10 import parse_file_meta
from tests.gateway import free_port
from tests.interop.corpus import (
    CT_IMAGE,
    EXPLICIT_LE,
    IMPLICIT_LE,
    MR_IMAGE,
    NODELAY,
    VERIFICATION,
    Sink,
    image_dataset,
    running_sink,
    small_images,
)
from tests.support.pdus import p_data, pdv

T = TypeVar("T")
CONTEXTS = [(CT_IMAGE, [EXPLICIT_LE, IMPLICIT_LE]), (VERIFICATION, [IMPLICIT_LE])]
ECHO_ONLY = [(VERIFICATION, [IMPLICIT_LE])]
# PS3.8 9.3.8: A-ABORT from the service-user (source 0), reason 0.
ABORT_BY_USER = bytes.fromhex("07 00 00000004 00 00 00 00")
RELEASE_RQ = bytes.fromhex("05 00 00000004 00000000")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Runs on uvloop: the requestor's socket handling must work on the loop it ships with."""
    return uvloop.run(coro)


async def connect(port: int, contexts: Any = CONTEXTS, **kw: Any) -> Requestor:
    options: dict[str, Any] = {
        "called_ae": "IOPSINK",
        "calling_ae": "REQTEST",
        "contexts": contexts,
        "max_pdu": 65536,
        "connect_timeout_s": 5,
        "network_timeout_s": 10,
        **kw,
    }
    return await Requestor.open("127.0.0.1", port, **options)


def dataset_region(path: Path) -> tuple[int, int]:
    """(offset, length) of the data set after the File Meta group."""
    data = path.read_bytes()
    offset = parse_file_meta(data[:65536]).dataset_offset
    return offset, len(data) - offset


async def store_file(requestor: Requestor, context_id: int, path: Path) -> tuple[int, str | None]:
    meta = parse_file_meta(path.read_bytes()[:65536])
    offset, length = dataset_region(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        return await requestor.c_store_file(
            context_id,
            meta.media_storage_sop_class_uid,
            meta.media_storage_sop_instance_uid,
            fd=fd,
            offset=offset,
            length=length,
        )
    finally:
        os.close(fd)


@contextlib.contextmanager
def pynetdicom_scp(
    contexts: list[tuple[str, list[str]]], max_pdu: int = 16382, **ae_options: Any
) -> Iterator[int]:
    """A pynetdicom acceptor supporting ``contexts``; yields its port."""
    ae = AE(ae_title="IOPSINK")
    ae.maximum_pdu_size = max_pdu
    for attribute, value in ae_options.items():
        setattr(ae, attribute, value)
    for abstract, syntaxes in contexts:
        ae.add_supported_context(abstract, syntaxes)
    server = ae.start_server(
        ("127.0.0.1", 0),
        block=False,
        evt_handlers=[*NODELAY, (evt.EVT_C_STORE, lambda event: 0x0000)],
    )
    assert server is not None
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()


# -- against pynetdicom ----------------------------------------------------------------


@pytest.fixture(scope="module")
def sink() -> Iterator[Sink]:
    with running_sink() as running:
        yield running


@pytest.mark.parametrize("peer_max_pdu", [0, 4096, 16382, 262144])
def test_stores_byte_exact(sink: Sink, tmp_path: Path, peer_max_pdu: int) -> None:
    """Data sets arrive exactly as stored (SHA-256), small and large, whatever the
    peer's maximum PDU; Explicit and Implicit VR each on their own context."""
    items = small_images(tmp_path / "small", 3)
    big = small_images(tmp_path / "big", 1, rows=1024)[0]  # 2 MiB of pixels
    implicit = tmp_path / "implicit.dcm"
    image_dataset("CT", IMPLICIT_LE).save_as(implicit, enforce_file_format=True)
    files = [(EXPLICIT_LE, item.path) for item in [*items, big]] + [(IMPLICIT_LE, implicit)]
    sink.received.clear()

    async def scenario() -> list[tuple[int, str | None]]:
        sink._ae.maximum_pdu_size = peer_max_pdu
        requestor = await connect(sink.port)
        assert requestor.negotiated.peer_max_pdu == peer_max_pdu
        results = []
        for ts, path in files:
            context_id = requestor.negotiated.context_id(CT_IMAGE, ts)
            assert context_id is not None
            results.append(await store_file(requestor, context_id, path))
        assert await requestor.c_echo() == 0
        await requestor.release()
        assert not requestor.is_established
        return results

    try:
        assert run(scenario()) == [(0, None)] * len(files)
    finally:
        sink._ae.maximum_pdu_size = 0
    for ts, path in files:
        meta = parse_file_meta(path.read_bytes()[:65536])
        offset, _ = dataset_region(path)
        got = sink.received[meta.media_storage_sop_instance_uid]
        assert got.transfer_syntax == ts
        assert got.sha256 == hashlib.sha256(path.read_bytes()[offset:]).hexdigest()


def test_store_bytes(sink: Sink, tmp_path: Path) -> None:
    """The converted-data-set path: a bytes object goes out exactly."""
    item = small_images(tmp_path, 1)[0]
    data = item.dataset_bytes()

    async def scenario() -> tuple[int, str | None]:
        requestor = await connect(sink.port)
        context_id = requestor.negotiated.context_id(CT_IMAGE, EXPLICIT_LE)
        assert context_id is not None
        try:
            return await requestor.c_store_bytes(context_id, CT_IMAGE, item.sop_instance_uid, data)
        finally:
            await requestor.release()

    assert run(scenario()) == (0, None)
    assert sink.received[item.sop_instance_uid].dataset == data


def test_one_context_per_transfer_syntax() -> None:
    """Each (SOP class, transfer syntax) pair is its own context; the peer's answer to
    each is kept, and only the ones it accepted can be used."""
    contexts = [
        (CT_IMAGE, [EXPLICIT_LE, IMPLICIT_LE, str(JPEGBaseline8Bit)]),
        (MR_IMAGE, [EXPLICIT_LE]),
        (VERIFICATION, [IMPLICIT_LE]),
    ]
    peer = [(CT_IMAGE, [IMPLICIT_LE, str(JPEGBaseline8Bit)]), (VERIFICATION, [IMPLICIT_LE])]

    async def scenario() -> Requestor:
        requestor = await connect(port, contexts)
        await requestor.release()
        return requestor

    with pynetdicom_scp(peer) as port:
        negotiated = run(scenario()).negotiated
    assert set(negotiated.contexts) == {
        (CT_IMAGE, IMPLICIT_LE),
        (CT_IMAGE, str(JPEGBaseline8Bit)),
        (VERIFICATION, IMPLICIT_LE),
    }
    assert negotiated.context_id(CT_IMAGE, EXPLICIT_LE) is None
    assert negotiated.why_not(CT_IMAGE, EXPLICIT_LE).startswith("transfer-syntaxes-not-supported")
    assert negotiated.why_not(MR_IMAGE, EXPLICIT_LE).startswith("abstract-syntax-not-supported")
    assert negotiated.peer_max_pdu == 16382
    # Odd IDs in proposal order (PS3.8 9.3.2.2).
    assert negotiated.contexts[(CT_IMAGE, IMPLICIT_LE)] == 3


def test_rejected_called_ae_title() -> None:
    async def scenario() -> None:
        await connect(port, called_ae="SOMEONEELSE")

    with (
        pynetdicom_scp(ECHO_ONLY, require_called_aet=True) as port,
        pytest.raises(AssociationRejected) as raised,
    ):
        run(scenario())
    rejection = raised.value
    assert (rejection.result, rejection.source, rejection.reason) == (1, 1, 7)
    assert rejection.transient is False
    assert "called-AE-title-not-recognized" in str(rejection)


def test_peer_down() -> None:
    with pytest.raises(PeerUnreachable, match="refused"):
        run(connect(free_port()))


def test_connect_timeout() -> None:
    """A listener whose accept queue is full drops our SYN: connect_timeout_s bounds it."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(4):
                filler = socket.socket()
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(("127.0.0.1", port))
                fillers.append(filler)
            with pytest.raises(PeerUnreachable, match="connect_timeout_s"):
                run(connect(port, connect_timeout_s=0.5))
        finally:
            for filler in fillers:
                filler.close()


# -- against scripted peers ------------------------------------------------------------

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_pdu(reader: asyncio.StreamReader) -> bytes:
    header = await reader.readexactly(6)
    return header + await reader.readexactly(struct.unpack(">I", header[2:])[0])


async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer the A-ASSOCIATE-RQ as dicom-gw's acceptor would (max PDU 16384)."""
    request = Request.decode(await read_pdu(reader))
    config = DimseConfig(require_called_ae_title=False)
    writer.write(negotiate(request, config, 16384).ac_pdu)
    await writer.drain()


@contextlib.asynccontextmanager
async def scripted_peer(script: Script) -> AsyncIterator[tuple[int, list[bytes]]]:
    """A peer running ``script`` per connection; yields its port and what it read
    after the script ended (an A-ABORT, ...)."""
    leftovers: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await script(reader, writer)
            leftovers.append(await asyncio.wait_for(reader.read(), 5))
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], leftovers
    finally:
        server.close()
        await server.wait_closed()


def answer_echo(mutate: Callable[[int], bytes]) -> Script:
    """Accept, then answer the C-ECHO-RQ with P-DATA built by ``mutate(message_id)``."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accept(reader, writer)
        rq = await read_pdu(reader)
        message_id = decode_command(rq[12:]).message_id or 0
        writer.write(mutate(message_id))
        await writer.drain()

    return script


def echo_against(script: Script, network_timeout_s: float = 5) -> tuple[BaseException, bytes]:
    """The exception a C-ECHO raises against ``script``, and what the peer read after."""

    async def scenario() -> tuple[BaseException, bytes]:
        async with scripted_peer(script) as (port, leftovers):
            requestor = await connect(port, ECHO_ONLY, network_timeout_s=network_timeout_s)
            with pytest.raises(Exception) as raised:
                await requestor.c_echo()
            assert not requestor.is_established
            for _ in range(100):
                if leftovers:
                    break
                await asyncio.sleep(0.05)
        return raised.value, b"".join(leftovers)

    return run(scenario())


def test_rejected_transient() -> None:
    """A-ASSOCIATE-RJ result 2 (rejected-transient), source 3, reason 1 (congestion)."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_pdu(reader)
        writer.write(bytes.fromhex("03 00 00000004 00 02 03 01"))
        await writer.drain()

    async def scenario() -> None:
        async with scripted_peer(script) as (port, _):
            await connect(port, ECHO_ONLY)

    with pytest.raises(AssociationRejected) as raised:
        run(scenario())
    assert raised.value.transient is True
    assert "temporary-congestion" in str(raised.value)


def test_aborted_instead_of_accepted() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_pdu(reader)
        writer.write(bytes.fromhex("07 00 00000004 00 00 02 01"))
        await writer.drain()

    async def scenario() -> None:
        async with scripted_peer(script) as (port, _):
            await connect(port, ECHO_ONLY)

    with pytest.raises(AssociationAborted) as raised:
        run(scenario())
    assert (raised.value.source, raised.value.reason) == (2, 1)
    assert "unrecognized-PDU" in str(raised.value)


def test_echo_against_dicomgw_negotiation() -> None:
    """The scripted acceptor itself works: a proper C-ECHO-RSP is success."""

    async def scenario() -> int:
        script = answer_echo(lambda mid: command_pdus(1, encode_c_echo_rsp(mid, 0), 16384))
        async with scripted_peer(script) as (port, _):
            requestor = await connect(port, ECHO_ONLY)
            status = await requestor.c_echo()
            requestor.abort()
            return status

    assert run(scenario()) == 0


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        pytest.param(
            lambda mid: p_data(pdv(1, 0x02, b"\x08\x00\x16\x00\x02\x00\x00\x00ab")),
            "sent a data set",
            id="data-set-in-response",
        ),
        pytest.param(
            lambda mid: command_pdus(1, encode_c_echo_rsp(mid + 1, 0), 16384),
            "answered message ID",
            id="wrong-message-id",
        ),
        pytest.param(
            lambda mid: command_pdus(7, encode_c_echo_rsp(mid, 0), 16384),
            "presentation context 7",
            id="unknown-context",
        ),
        pytest.param(lambda mid: RELEASE_RQ, "A-RELEASE-RQ", id="release-instead"),
        pytest.param(lambda mid: p_data(pdv(1, 0x03, b"\x00" * 20)), "malformed", id="bad-command"),
    ],
)
def test_protocol_errors_abort(reply: Callable[[int], bytes], problem: str) -> None:
    error, after = echo_against(answer_echo(reply))
    assert isinstance(error, PeerProtocolError), error
    assert problem in str(error)
    assert after[:1] == b"\x07", "the peer got no A-ABORT"


def test_abort_instead_of_response() -> None:
    error, after = echo_against(answer_echo(lambda mid: ABORT_BY_USER))
    assert isinstance(error, AssociationAborted)
    assert after == b"", "nothing is sent in reply to an A-ABORT"


def test_no_response_times_out() -> None:
    error, after = echo_against(answer_echo(lambda mid: b""), network_timeout_s=0.3)
    assert isinstance(error, AssociationLost)
    assert "network_timeout_s" in str(error)
    assert after[:1] == b"\x07"


def test_peer_closes_mid_dataset(tmp_path: Path) -> None:
    """The peer aborts while a large data set is on its way: the requestor says so."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accept(reader, writer)
        await reader.readexactly(100_000)
        writer.write(ABORT_BY_USER)
        await writer.drain()
        writer.close()

    path = small_images(tmp_path, 1, rows=2048)[0].path  # 8 MiB of pixels

    async def scenario() -> BaseException:
        async with scripted_peer(script) as (port, _):
            requestor = await connect(port)
            context_id = requestor.negotiated.context_id(CT_IMAGE, EXPLICIT_LE)
            assert context_id is not None
            with pytest.raises((AssociationAborted, AssociationLost)) as raised:
                await store_file(requestor, context_id, path)
            assert not requestor.is_established
            return raised.value

    error = run(scenario())
    assert "while sending a C-STORE-RQ" in str(error) or "awaiting the C-STORE-RSP" in str(error)


def test_check_open_sees_the_peer_leave() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accept(reader, writer)
        writer.write(RELEASE_RQ)
        await writer.drain()

    async def scenario() -> tuple[bool, bool]:
        async with scripted_peer(script) as (port, leftovers):
            requestor = await connect(port, ECHO_ONLY)
            await asyncio.sleep(0.2)
            alive = requestor.check_open()
            for _ in range(100):
                if leftovers:
                    break
                await asyncio.sleep(0.05)
            # An idle-release by the peer (PS3.8 7.2) is answered with A-RELEASE-RP.
            return alive, leftovers == [bytes.fromhex("06 00 00000004 00000000")]

    assert run(scenario()) == (False, True)


def test_command_pdus_fragment_for_small_peers() -> None:
    """A command set larger than the peer's PDU goes as several command PDVs; only
    the last has the last-fragment bit (MCH 03H, the others 01H)."""
    command = bytes(range(50))
    stream = command_pdus(3, command, 26)
    fragments, pos, mchs = [], 0, []
    while pos < len(stream):
        pdu_type, _, length, item_length, context_id, mch = struct.unpack_from(
            ">BBIIBB", stream, pos
        )
        assert (pdu_type, context_id, length) == (0x04, 3, item_length + 4)
        assert length <= 26
        fragments.append(stream[pos + 12 : pos + 6 + length])
        mchs.append(mch)
        pos += 6 + length
    assert b"".join(fragments) == command
    assert mchs == [0x01] * (len(mchs) - 1) + [0x03]


def test_too_many_contexts() -> None:
    contexts = [(f"1.2.3.{n}", [EXPLICIT_LE]) for n in range(129)]
    with pytest.raises(ValueError, match="at most 128"):
        run(connect(free_port(), contexts))
