"""The acceptor's PS3.8 state machine with a scripted transport (no sockets, no
database): each event in each state gets the PDU the standard says, and the
DIMSE messages reach the layer above in order."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest
from pynetdicom.pdu import A_ASSOCIATE_AC

from dicomgw.association.acceptor import AssociationAcceptor, AssociationLimits, ListenerCounters
from dicomgw.config import DimseConfig
from dicomgw.dimse.commands import C_ECHO_RSP, decode_command, encode_c_echo_rq
from dicomgw.services.echo import VerificationService
from dicomgw.services.provider import ServiceProvider
from dicomgw.ul.pdu import A_RELEASE_RP_PDU, A_RELEASE_RQ_PDU, MCH_COMMAND, MCH_LAST
from tests.support.pdus import (
    ABORT_UNEXPECTED_PDU,
    ABORT_UNRECOGNIZED_PDU,
    RJ_CALLED_AE,
    associate_rq,
    p_data,
    pdv,
)

VERIFICATION_CONTEXT = 3


class ScriptedTransport:
    """What the acceptor writes, and whether it closed or aborted the connection."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False
        self.aborted = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000)}.get(name, default)

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def take(self) -> bytes:
        data, self.written = bytes(self.written), bytearray()
        return data


class Connection:
    def __init__(self, config: DimseConfig) -> None:
        provider = ServiceProvider([VerificationService()], head_bytes=1024, fsync=False)
        self.limits = AssociationLimits(config)
        self.counters = ListenerCounters()
        self.acceptor = AssociationAcceptor(config, self.limits, provider, self.counters)
        self.transport = ScriptedTransport()
        self.acceptor.connection_made(self.transport)  # type: ignore[arg-type]

    def feed(self, data: bytes, step: int | None = None) -> None:
        """As uvloop would: into the acceptor's buffer, ``step`` bytes at a time."""
        step = step or len(data)
        for start in range(0, len(data), step):
            chunk = data[start : start + step]
            buffer = self.acceptor.get_buffer(len(chunk))
            buffer[: len(chunk)] = chunk
            self.acceptor.buffer_updated(len(chunk))

    def associate(self) -> None:
        self.feed(associate_rq())
        answer = self.transport.take()
        assert answer[0] == 0x02, answer[:10].hex()
        ac = A_ASSOCIATE_AC()
        ac.decode(answer)
        accepted = {cx.context_id for cx in ac.presentation_context if cx.result == 0}
        assert VERIFICATION_CONTEXT in accepted


@pytest.fixture
def config() -> DimseConfig:
    return DimseConfig(acse_timeout_s=5, network_timeout_s=5)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def echo_response(pdu: bytes) -> int:
    """The Message ID Being Responded To of a C-ECHO-RSP in one P-DATA-TF."""
    assert pdu[0] == 0x04, pdu[:10].hex()
    item_length, context_id, mch = struct.unpack(">IBB", pdu[6:12])
    assert (context_id, mch) == (VERIFICATION_CONTEXT, MCH_COMMAND | MCH_LAST)
    command = decode_command(pdu[12 : 12 + item_length - 2])
    assert command.command_field == C_ECHO_RSP
    assert command.status == 0
    return command.message_id_being_responded_to or 0


async def test_sta2_associate_then_echo_then_release(config: DimseConfig) -> None:
    conn = Connection(config)
    conn.associate()
    assert conn.limits.active == 1
    echo = p_data(pdv(VERIFICATION_CONTEXT, MCH_COMMAND | MCH_LAST, encode_c_echo_rq(7)))
    conn.feed(echo, step=5)  # split anywhere, answered once whole
    await settle()
    assert echo_response(conn.transport.take()) == 7
    conn.feed(A_RELEASE_RQ_PDU)
    assert conn.transport.take() == A_RELEASE_RP_PDU
    # Sta13: what arrives now is ignored; the peer closes.
    conn.feed(echo)
    await settle()
    assert conn.transport.take() == b""
    conn.acceptor.connection_lost(None)
    assert conn.limits.active == 0


async def test_release_waits_for_the_answers_in_flight(config: DimseConfig) -> None:
    conn = Connection(config)
    conn.associate()
    conn.feed(
        p_data(pdv(VERIFICATION_CONTEXT, MCH_COMMAND | MCH_LAST, encode_c_echo_rq(1)))
        + A_RELEASE_RQ_PDU
    )
    # PS3.8 Sta8 for the acceptor: the response first, then A-RELEASE-RP.
    await settle()
    written = conn.transport.take()
    assert echo_response(written[: -len(A_RELEASE_RP_PDU)]) == 1
    assert written.endswith(A_RELEASE_RP_PDU)


async def test_p_data_in_sta2_is_an_unexpected_pdu(config: DimseConfig) -> None:
    conn = Connection(config)
    conn.feed(p_data(pdv(1, MCH_COMMAND | MCH_LAST, b"\x00" * 8)))
    assert conn.transport.take() == ABORT_UNEXPECTED_PDU


async def test_a_second_associate_rq_in_sta6_is_unexpected(config: DimseConfig) -> None:
    conn = Connection(config)
    conn.associate()
    conn.feed(associate_rq())
    assert conn.transport.take() == ABORT_UNEXPECTED_PDU


async def test_not_a_pdu_is_unrecognized(config: DimseConfig) -> None:
    conn = Connection(config)
    conn.feed(b"GET / HTTP/1.1\r\n\r\n")
    assert conn.transport.take() == ABORT_UNRECOGNIZED_PDU


async def test_wrong_called_ae_is_rejected_and_counted(config: DimseConfig) -> None:
    conn = Connection(config)
    conn.feed(associate_rq(called="NOTME"))
    assert conn.transport.take() == RJ_CALLED_AE
    assert conn.counters.rejected == {(1, 7): 1}
    assert conn.limits.active == 0


async def test_artim_closes_a_silent_connection() -> None:
    conn = Connection(DimseConfig(acse_timeout_s=0.05))
    await asyncio.sleep(0.2)
    assert conn.transport.aborted
    assert conn.transport.take() == b""


async def test_peer_abort_closes_without_an_answer(config: DimseConfig) -> None:
    conn = Connection(config)
    conn.associate()
    conn.feed(bytes.fromhex("07 00 00000004 00 00 00 00"))
    assert conn.transport.take() == b""
    assert conn.transport.closed
