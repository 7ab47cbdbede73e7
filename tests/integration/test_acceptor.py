"""Bad input on the DIMSE port, byte for byte: each gets A-ASSOCIATE-RJ or A-ABORT,
nothing is stored, and the gateway keeps serving a good client next to it."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable

import pytest
from pynetdicom import AE
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context

from tests.gateway import Gateway, running

VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"

# PS3.8 9.3.8: A-ABORT, source 2 (service-provider), reason 1 (unrecognized PDU).
ABORT_UNRECOGNIZED_PDU = bytes.fromhex("07 00 00000004 00 00 02 01")
# ... reason 2 (unexpected PDU).
ABORT_UNEXPECTED_PDU = bytes.fromhex("07 00 00000004 00 00 02 02")
# ... reason 6 (invalid PDU parameter value).
ABORT_INVALID_PARAMETER = bytes.fromhex("07 00 00000004 00 00 02 06")
# PS3.8 9.3.4: A-ASSOCIATE-RJ, permanent (1), service-user (1), called AE not recognized (7).
RJ_CALLED_AE = bytes.fromhex("03 00 00000004 00 01 01 07")


def associate_rq(called: str = "DICOMGW", calling: str = "RAWSCU") -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    cx = build_context(CT_IMAGE_STORAGE, [EXPLICIT_LE])
    cx.context_id = 1
    echo = build_context(VERIFICATION, [EXPLICIT_LE])
    echo.context_id = 3
    primitive.presentation_context_definition_list = [cx, echo]
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16384
    primitive.user_information = [max_length]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def p_data(context_id: int, mch: int, payload: bytes, extra_pdu_length: int = 0) -> bytes:
    item = struct.pack(">IBB", len(payload) + 2, context_id, mch) + payload
    return struct.pack(">BBI", 0x04, 0, len(item) + extra_pdu_length) + item


def exchange(gateway: Gateway, *chunks: bytes, reply: int = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", gateway.dimse_port), 5) as sock:
        sock.settimeout(10)
        for chunk in chunks:
            sock.sendall(chunk)
        data = b""
        while len(data) < reply:
            got = sock.recv(65536)
            if not got:
                break
            data += got
        return data


def established(gateway: Gateway, *chunks: bytes) -> bytes:
    """Associate, then send chunks; returns what came after the A-ASSOCIATE-AC."""
    with socket.create_connection(("127.0.0.1", gateway.dimse_port), 5) as sock:
        sock.settimeout(10)
        sock.sendall(associate_rq())
        header = sock.recv(6, socket.MSG_WAITALL)
        assert header[0] == 0x02, header
        sock.recv(struct.unpack(">I", header[2:6])[0], socket.MSG_WAITALL)
        for chunk in chunks:
            sock.sendall(chunk)
        return sock.recv(10, socket.MSG_WAITALL)


def test_http_get_is_aborted_as_unrecognized(session_gateway: Gateway) -> None:
    assert exchange(session_gateway, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == ABORT_UNRECOGNIZED_PDU


def test_pdu_length_ffffffff_is_aborted(session_gateway: Gateway) -> None:
    assert exchange(session_gateway, bytes.fromhex("01 00 FFFFFFFF")) == ABORT_INVALID_PARAMETER


def test_lying_item_lengths_in_associate_rq(session_gateway: Gateway) -> None:
    rq = bytearray(associate_rq())
    rq[74 + 2 : 74 + 4] = b"\xff\xf0"  # the first item's length, far past the PDU
    assert exchange(session_gateway, bytes(rq)) == ABORT_INVALID_PARAMETER


def test_wrong_called_ae_title_is_rejected(session_gateway: Gateway) -> None:
    assert exchange(session_gateway, associate_rq(called="NOTME")) == RJ_CALLED_AE


def test_pdata_before_association_is_unexpected(session_gateway: Gateway) -> None:
    assert exchange(session_gateway, p_data(1, 0x03, b"\x00" * 8)) == ABORT_UNEXPECTED_PDU


def test_pdv_longer_than_its_pdu(session_gateway: Gateway) -> None:
    pdu = bytearray(p_data(1, 0x03, b"\x00" * 8))
    pdu[6:10] = struct.pack(">I", 4000)
    assert established(session_gateway, bytes(pdu)) == ABORT_INVALID_PARAMETER


def test_undeclared_presentation_context(session_gateway: Gateway) -> None:
    assert established(session_gateway, p_data(5, 0x03, b"\x00" * 8)) == ABORT_INVALID_PARAMETER


def test_data_set_without_command(session_gateway: Gateway) -> None:
    assert established(session_gateway, p_data(1, 0x02, b"\x00" * 8)) == ABORT_INVALID_PARAMETER


def test_silent_peer_is_dropped_by_artim(session_gateway: Gateway) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", session_gateway.dimse_port), 5) as sock:
        sock.settimeout(30)
        assert sock.recv(10) == b""
    assert time.monotonic() - started < 15  # the fixture sets acse_timeout_s to 5


def test_good_client_is_served_next_to_a_stalled_one(session_gateway: Gateway) -> None:
    with socket.create_connection(("127.0.0.1", session_gateway.dimse_port), 5) as stalled:
        stalled.sendall(bytes.fromhex("01 00 0000FFFF") + b"\x00" * 100)  # promises more
        ae = AE(ae_title="GOODSCU")
        ae.add_requested_context(VERIFICATION)
        assoc = ae.associate("127.0.0.1", session_gateway.dimse_port, ae_title="DICOMGW")
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        assoc.release()


@pytest.mark.parametrize("calling", ["A" * 16, " LEADING", "TRAILING "])
def test_unusual_but_valid_calling_ae_titles_are_accepted(
    session_gateway: Gateway, calling: str
) -> None:
    ae = AE(ae_title=calling)
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", session_gateway.dimse_port, ae_title="DICOMGW")
    assert assoc.is_established
    assoc.release()


# PS3.8 9.3.4: rejected-transient (2), service-provider presentation (3), local limit exceeded (2).
RJ_LOCAL_LIMIT = bytes.fromhex("03 00 00000004 00 02 03 02")
# ... rejected-permanent (1), service-user (1), calling AE title not recognized (3).
RJ_CALLING_AE = bytes.fromhex("03 00 00000004 00 01 01 03")


def test_association_limit_is_a_transient_rejection(
    gateway_factory: Callable[..., Gateway],
) -> None:
    gateway = gateway_factory(
        DICOMGW_DIMSE__MAX_ASSOCIATIONS="2", DICOMGW_DIMSE__MAX_ASSOCIATIONS_PER_PEER="2"
    )
    with running(gateway):
        held = []
        for _ in range(2):
            ae = AE(ae_title="HOLDER")
            ae.add_requested_context(VERIFICATION)
            assoc = ae.associate("127.0.0.1", gateway.dimse_port, ae_title="DICOMGW")
            assert assoc.is_established
            held.append(assoc)
        assert exchange(gateway, associate_rq()) == RJ_LOCAL_LIMIT
        held.pop().release()
        # The slot is free again once the release is through.
        deadline = time.monotonic() + 10
        while exchange(gateway, associate_rq(), reply=6)[:1] != b"\x02":
            assert time.monotonic() < deadline, "the released slot was not given back"
            time.sleep(0.1)
        for assoc in held:
            assoc.release()


def test_calling_ae_allow_list(gateway_factory: Callable[..., Gateway]) -> None:
    gateway = gateway_factory(DICOMGW_DIMSE__ALLOWED_CALLING_AE_TITLES="[MODALITY1]")
    with running(gateway):
        assert exchange(gateway, associate_rq(calling="INTRUDER")) == RJ_CALLING_AE
        assert exchange(gateway, associate_rq(calling="MODALITY1"), reply=6)[:1] == b"\x02"
