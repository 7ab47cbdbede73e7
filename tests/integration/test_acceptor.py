"""The association acceptor on a real socket: what goes over the wire, byte for byte."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from dicomgw.association.acceptor import AssociationAcceptor, start_listener
from dicomgw.config import DimseConfig
from tests.unit.test_pdu_framer import A_ASSOCIATE_RQ_PDU

# PS3.8 9.3.4: A-ASSOCIATE-RJ, length 4, result 1 (permanent), source 1 (service-user), reason 1.
RJ_PERMANENT_NO_REASON = bytes.fromhex("03 00 00000004 00 01 01 01")
# PS3.8 9.3.8: A-ABORT, source 2 (service-provider), reason 1 (unrecognized PDU).
ABORT_UNRECOGNIZED_PDU = bytes.fromhex("07 00 00000004 00 00 02 01")
# ... reason 2 (unexpected PDU).
ABORT_UNEXPECTED_PDU = bytes.fromhex("07 00 00000004 00 00 02 02")
# ... reason 6 (invalid PDU parameter value): a length over the cap.
ABORT_INVALID_PARAMETER = bytes.fromhex("07 00 00000004 00 00 02 06")


@pytest.fixture
async def port() -> AsyncIterator[int]:
    config = DimseConfig(host="127.0.0.1", port=1, acse_timeout_s=2.0)
    server = await asyncio.get_running_loop().create_server(
        lambda: AssociationAcceptor(config),
        "127.0.0.1",
        0,
    )
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def exchange(port: int, data: bytes) -> tuple[bytes, bool]:
    """Send ``data``, read the reply; True if the server waited for us to close (Sta13)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    reply = await asyncio.wait_for(reader.readexactly(10), 5)
    waited = not reader.at_eof()
    await asyncio.sleep(0.05)
    waited = waited and not reader.at_eof()
    writer.close()
    await writer.wait_closed()
    return reply, waited


async def test_associate_rq_gets_rj_and_server_waits_for_close(port: int) -> None:
    reply, waited = await exchange(port, A_ASSOCIATE_RQ_PDU)
    assert reply == RJ_PERMANENT_NO_REASON
    assert waited


async def test_http_get_is_aborted_as_unrecognized(port: int) -> None:
    reply, _ = await exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply == ABORT_UNRECOGNIZED_PDU


async def test_huge_associate_length_is_aborted(port: int) -> None:
    reply, _ = await exchange(port, bytes.fromhex("01 00 FFFFFFFF"))
    assert reply == ABORT_INVALID_PARAMETER


async def test_pdata_before_association_is_unexpected(port: int) -> None:
    reply, _ = await exchange(port, bytes.fromhex("04 00 00000006 00000002 01 03"))
    assert reply == ABORT_UNEXPECTED_PDU


async def test_silent_peer_is_dropped_by_artim(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = await asyncio.wait_for(reader.read(), 5)
    assert data == b""
    writer.close()


async def test_listener_serves_a_good_client_next_to_a_bad_one(port: int) -> None:
    _, bad_writer = await asyncio.open_connection("127.0.0.1", port)
    bad_writer.write(bytes.fromhex("01 00 0000FFFF") + b"\x00" * 100)  # promises more, stalls
    await bad_writer.drain()
    reply, _ = await exchange(port, A_ASSOCIATE_RQ_PDU)
    assert reply == RJ_PERMANENT_NO_REASON
    bad_writer.close()


async def test_start_listener_binds_configured_port() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    free = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    server = await start_listener(DimseConfig(host="127.0.0.1", port=free))
    try:
        reply, _ = await exchange(free, A_ASSOCIATE_RQ_PDU)
        assert reply == RJ_PERMANENT_NO_REASON
    finally:
        server.close()
        await server.wait_closed()
