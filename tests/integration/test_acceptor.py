"""Bad input on the DIMSE port, byte for byte: each gets A-ASSOCIATE-RJ or A-ABORT,
nothing is stored, and the gateway keeps serving a good client next to it."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from dicomgw.ul.uids import VERIFICATION_SOP_CLASS as VERIFICATION
from tests.gateway import Gateway, running
from tests.integration.scu import files_with_uid, make_dataset, send
from tests.support.pdus import (
    ABORT_INVALID_PARAMETER,
    ABORT_UNEXPECTED_PDU,
    ABORT_UNRECOGNIZED_PDU,
    RJ_CALLED_AE,
    associate_rq,
    p_data,
    pdv,
)
from tests.support.peer import established, exchange


def test_http_get_is_aborted_as_unrecognized(session_gateway: Gateway) -> None:
    assert (
        exchange(session_gateway.dimse_port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        == ABORT_UNRECOGNIZED_PDU
    )


def test_pdu_length_ffffffff_is_aborted(session_gateway: Gateway) -> None:
    assert (
        exchange(session_gateway.dimse_port, bytes.fromhex("01 00 FFFFFFFF"))
        == ABORT_INVALID_PARAMETER
    )


def test_lying_item_lengths_in_associate_rq(session_gateway: Gateway) -> None:
    rq = bytearray(associate_rq())
    rq[74 + 2 : 74 + 4] = b"\xff\xf0"  # the first item's length, far past the PDU
    assert exchange(session_gateway.dimse_port, bytes(rq)) == ABORT_INVALID_PARAMETER


def test_wrong_called_ae_title_is_rejected(session_gateway: Gateway) -> None:
    assert exchange(session_gateway.dimse_port, associate_rq(called="NOTME")) == RJ_CALLED_AE


def test_pdata_before_association_is_unexpected(session_gateway: Gateway) -> None:
    assert (
        exchange(session_gateway.dimse_port, p_data(pdv(1, 0x03, b"\x00" * 8)))
        == ABORT_UNEXPECTED_PDU
    )


def test_pdv_longer_than_its_pdu(session_gateway: Gateway) -> None:
    pdu = bytearray(p_data(pdv(1, 0x03, b"\x00" * 8)))
    pdu[6:10] = struct.pack(">I", 4000)
    assert established(session_gateway.dimse_port, bytes(pdu)) == ABORT_INVALID_PARAMETER


def test_undeclared_presentation_context(session_gateway: Gateway) -> None:
    assert (
        established(session_gateway.dimse_port, p_data(pdv(5, 0x03, b"\x00" * 8)))
        == ABORT_INVALID_PARAMETER
    )


def test_data_set_without_command(session_gateway: Gateway) -> None:
    assert (
        established(session_gateway.dimse_port, p_data(pdv(1, 0x02, b"\x00" * 8)))
        == ABORT_INVALID_PARAMETER
    )


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
        assert exchange(gateway.dimse_port, associate_rq()) == RJ_LOCAL_LIMIT
        held.pop().release()
        # The slot is free again once the release is through.
        deadline = time.monotonic() + 10
        while exchange(gateway.dimse_port, associate_rq(), reply=6)[:1] != b"\x02":
            assert time.monotonic() < deadline, "the released slot was not given back"
            time.sleep(0.1)
        for assoc in held:
            assoc.release()


def test_a_flood_of_other_peers_leaves_the_priority_slots_to_the_modalities(
    gateway_factory: Callable[..., Gateway],
) -> None:
    gateway = gateway_factory(
        DICOMGW_DIMSE__MAX_ASSOCIATIONS="3",
        DICOMGW_DIMSE__MAX_ASSOCIATIONS_PER_PEER="3",
        DICOMGW_DIMSE__PRIORITY_AE_TITLES="[MODALITY]",
        DICOMGW_DIMSE__PRIORITY_ASSOCIATIONS="1",
    )

    def associate(calling: str) -> object:
        ae = AE(ae_title=calling)
        ae.add_requested_context(VERIFICATION)
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        return ae.associate("127.0.0.1", gateway.dimse_port, ae_title="DICOMGW")

    with running(gateway):
        flood = [associate("FLOOD") for _ in range(2)]
        assert all(a.is_established for a in flood)  # type: ignore[attr-defined]
        # The last slot is the modality's: another flooder is refused (transient) ...
        assert exchange(gateway.dimse_port, associate_rq(calling="FLOOD")) == RJ_LOCAL_LIMIT
        # ... and the modality gets in, and stores.
        modality = associate("MODALITY")
        assert modality.is_established  # type: ignore[attr-defined]
        ds = make_dataset()
        assert modality.send_c_store(ds).Status == 0  # type: ignore[attr-defined]
        # Past max_associations, nobody.
        assert exchange(gateway.dimse_port, associate_rq(calling="MODALITY")) == RJ_LOCAL_LIMIT
        for assoc in [*flood, modality]:
            assoc.release()  # type: ignore[attr-defined]
    assert files_with_uid(gateway.storage, ds.SOPInstanceUID)


def test_calling_ae_allow_list(gateway_factory: Callable[..., Gateway]) -> None:
    gateway = gateway_factory(DICOMGW_DIMSE__ALLOWED_CALLING_AE_TITLES="[MODALITY1]")
    with running(gateway):
        assert exchange(gateway.dimse_port, associate_rq(calling="INTRUDER")) == RJ_CALLING_AE
        assert (
            exchange(gateway.dimse_port, associate_rq(calling="MODALITY1"), reply=6)[:1] == b"\x02"
        )


def _closed_by_peer(sock: socket.socket, within_s: float = 5.0) -> bool:
    sock.settimeout(within_s)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_connections_that_do_not_negotiate_are_capped_and_cheap(
    gateway_factory: Callable[..., Gateway],
) -> None:
    gateway = gateway_factory(DICOMGW_DIMSE__MAX_UNASSOCIATED_PER_PEER="4")
    with running(gateway):
        assert gateway.proc is not None
        before = _rss_kib(gateway.proc.pid)
        idle = [socket.create_connection(("127.0.0.1", gateway.dimse_port)) for _ in range(4)]
        time.sleep(0.5)
        # Past the cap, connections are closed before they can send anything ...
        flood = [socket.create_connection(("127.0.0.1", gateway.dimse_port)) for _ in range(496)]
        # (within 2 s: the ARTIM timer, 5 s here, would close them too, later)
        assert all(_closed_by_peer(s, 2.0) for s in flood[:20])
        assert not any(_closed_by_peer(s, 0.2) for s in idle)
        # ... and 500 of them cost the gateway little.
        assert _rss_kib(gateway.proc.pid) - before < 32 * 1024
        assert "dimse.max_unassociated_per_peer" in gateway.log()
        for s in flood + idle:
            s.close()
        # Once they are gone, a modality associates as before.
        deadline = time.monotonic() + 10
        while exchange(gateway.dimse_port, associate_rq(), reply=6)[:1] != b"\x02":
            assert time.monotonic() < deadline, "the negotiation slots were not given back"
            time.sleep(0.1)


def test_an_association_open_too_long_is_aborted(
    gateway_factory: Callable[..., Gateway],
) -> None:
    gateway = gateway_factory(DICOMGW_DIMSE__MAX_ASSOCIATION_S="2")
    with running(gateway):
        ae = AE(ae_title="LINGERER")
        ae.add_requested_context(VERIFICATION)
        assoc = ae.associate("127.0.0.1", gateway.dimse_port, ae_title="DICOMGW")
        assert assoc.is_established
        for _ in range(6):  # busy, so the idle timeout is not what ends it
            if not assoc.is_established:
                break
            assert assoc.send_c_echo().Status == 0x0000
            time.sleep(0.5)
        deadline = time.monotonic() + 5
        while assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.1)
        assert assoc.is_aborted
        assert "longer than dimse.max_association_s" in gateway.log()


def test_a_data_set_past_max_instance_bytes_aborts_and_leaves_nothing(
    gateway_factory: Callable[..., Gateway],
) -> None:
    gateway = gateway_factory(DICOMGW_DIMSE__MAX_INSTANCE_BYTES="100000")
    small = make_dataset()  # 64x64x16 bits: 8 KiB of pixels
    big = make_dataset()
    big.Rows = big.Columns = 512
    big.PixelData = bytes(512 * 512 * 2)  # 512 KiB
    with running(gateway):
        assert send(gateway.dimse_port, [small]) == [0]
        assert send(gateway.dimse_port, [big]) == [None]  # A-ABORT mid data set
        assert "larger than dimse.max_instance_bytes (100000 bytes)" in gateway.log()
        assert files_with_uid(gateway.storage, small.SOPInstanceUID)
        assert not files_with_uid(gateway.storage, big.SOPInstanceUID)
        # Nothing half-written is left in the spool either (its spare files are empty).
        parts = (gateway.storage / "incoming").glob("*.part")
        assert [p for p in parts if p.stat().st_size] == []
        # And the association after it is served.
        assert send(gateway.dimse_port, [make_dataset()]) == [0]
