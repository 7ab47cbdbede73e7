"""Golden-bytes tests for dicomgw._core.PDUFramer (PS3.8 9.3 PDU framing)."""

from __future__ import annotations

import itertools

import pytest
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ, A_RELEASE_RQ, P_DATA_TF

from dicomgw._core import PDUFramer
from dicomgw.errors import InvalidPDU, PDUTooLarge, UnrecognizedPDU

# -- golden PDUs (PS3.8 9.3: type, reserved, PDU-length big endian, then the body) --

A_RELEASE_RQ_PDU = bytes.fromhex(
    "05"  # PDU-type: A-RELEASE-RQ (9.3.6)
    "00"  # reserved
    "00000004"  # PDU-length: 4
    "00000000"  # reserved
)
A_RELEASE_RP_PDU = bytes.fromhex(
    "06"  # PDU-type: A-RELEASE-RP (9.3.7)
    "00"  # reserved
    "00000004"  # PDU-length: 4
    "00000000"  # reserved
)
A_ABORT_PDU = bytes.fromhex(
    "07"  # PDU-type: A-ABORT (9.3.8)
    "00"  # reserved
    "00000004"  # PDU-length: 4
    "0000"  # reserved, reserved
    "02"  # source: 2, service-provider
    "01"  # reason/diag: 1, unrecognized-PDU
)
A_ASSOCIATE_RJ_PDU = bytes.fromhex(
    "03"  # PDU-type: A-ASSOCIATE-RJ (9.3.4)
    "00"  # reserved
    "00000004"  # PDU-length: 4
    "00"  # reserved
    "01"  # result: 1, rejected-permanent
    "01"  # source: 1, service-user
    "01"  # reason/diag: 1, no-reason-given
)
P_DATA_TF_PDU = bytes.fromhex(
    "04"  # PDU-type: P-DATA-TF (9.3.5)
    "00"  # reserved
    "00000012"  # PDU-length: 18
    "0000000e"  # PDV item-length: 14 (9.3.5.1)
    "01"  # presentation-context-ID: 1
    "03"  # message control header: command, last fragment (E.2)
    "00000000 04000000 38000000"  # (0000,0000) UL length 4, CommandGroupLength 56
)
# Encoded by pynetdicom 3.0 from an A-ASSOCIATE primitive (STORESCU -> DICOMGW, Verification).
A_ASSOCIATE_RQ_PDU = b"".join(
    (
        bytes.fromhex("01 00 000000bf"),  # A-ASSOCIATE-RQ (9.3.2), reserved, PDU-length 191
        bytes.fromhex("0001 0000"),  # protocol-version 1, reserved
        b"DICOMGW".ljust(16),  # called-AE-title (offsets 10-25)
        b"STORESCU".ljust(16),  # calling-AE-title (offsets 26-41)
        bytes(32),  # reserved (offsets 42-73)
        bytes.fromhex("10 00 0015"),  # application context item, length 21
        b"1.2.840.10008.3.1.1.1",  # DICOM application context name
        bytes.fromhex("20 00 002e 01 00 00 00"),  # presentation context item, length 46, ID 1
        bytes.fromhex("30 00 0011"),  # abstract syntax sub-item, length 17
        b"1.2.840.10008.1.1",  # Verification SOP Class
        bytes.fromhex("40 00 0011"),  # transfer syntax sub-item, length 17
        b"1.2.840.10008.1.2",  # Implicit VR Little Endian
        bytes.fromhex("50 00 002c"),  # user information item, length 44
        bytes.fromhex("51 00 0004 00004000"),  # maximum length received: 16384
        bytes.fromhex("52 00 0020"),  # implementation class UID sub-item, length 32
        b"1.2.826.0.1.3680043.9.3811.3.0.4",
    )
)

GOLDEN = [
    A_ASSOCIATE_RQ_PDU,
    P_DATA_TF_PDU,
    A_RELEASE_RQ_PDU,
    A_RELEASE_RP_PDU,
    A_ASSOCIATE_RJ_PDU,
    A_ABORT_PDU,
]
# An association as it arrives on the wire, plus trailing PDUs to cross more boundaries.
STREAM_PDUS = [A_ASSOCIATE_RQ_PDU, P_DATA_TF_PDU, P_DATA_TF_PDU, A_RELEASE_RQ_PDU, A_ABORT_PDU]
STREAM = b"".join(STREAM_PDUS)
# Stream offsets where each PDU ends, computed from the goldens, not by the framer.
ENDS = list(itertools.accumulate(len(p) for p in STREAM_PDUS))


def header(pdu_type: int, length: int) -> bytes:
    return bytes([pdu_type, 0]) + length.to_bytes(4, "big")


def test_goldens_are_valid_pdus_per_pynetdicom() -> None:
    rq = A_ASSOCIATE_RQ()
    rq.decode(A_ASSOCIATE_RQ_PDU)
    assert (rq.called_ae_title, rq.calling_ae_title) == ("DICOMGW", "STORESCU")
    assert rq.presentation_context[0].abstract_syntax == "1.2.840.10008.1.1"
    assert rq.user_information is not None
    assert rq.user_information.maximum_length == 16384
    assert len(rq) == len(A_ASSOCIATE_RQ_PDU) == 197

    pdata = P_DATA_TF()
    pdata.decode(P_DATA_TF_PDU)
    [pdv] = pdata.presentation_data_value_items
    assert pdv.presentation_context_id == 1
    assert pdv.presentation_data_value == bytes.fromhex("03 00000000 04000000 38000000")

    rj = A_ASSOCIATE_RJ()
    rj.decode(A_ASSOCIATE_RJ_PDU)
    assert (rj.result, rj.source, rj.reason_diagnostic) == (1, 1, 1)

    abort = A_ABORT_RQ()
    abort.decode(A_ABORT_PDU)
    assert (abort.source, abort.reason_diagnostic) == (2, 1)

    release = A_RELEASE_RQ()
    release.decode(A_RELEASE_RQ_PDU)
    assert len(release) == 10


@pytest.mark.parametrize("pdu", GOLDEN, ids=lambda p: f"type{p[0]:02X}")
def test_single_pdu(pdu: bytes) -> None:
    framer = PDUFramer(max_pdata_length=1024)
    out = framer.feed(pdu)
    assert out == [pdu]
    assert type(out[0]) is bytes
    assert (framer.pending, framer.pdus, framer.bytes_in) == (0, 1, len(pdu))


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview], ids=lambda w: w.__name__)
def test_accepts_buffer_types(wrap: type[bytes | bytearray | memoryview]) -> None:
    framer = PDUFramer(1024)
    assert framer.feed(wrap(STREAM)) == STREAM_PDUS


def test_memoryview_slice_and_output_is_a_copy() -> None:
    buf = bytearray(b"xx" + A_RELEASE_RQ_PDU + b"yy")
    framer = PDUFramer(1024)
    [pdu] = framer.feed(memoryview(buf)[2:-2])
    buf[2] = 0x07
    assert pdu == A_RELEASE_RQ_PDU


def test_rejects_non_contiguous_memoryview() -> None:
    with pytest.raises(BufferError, match="contiguous"):
        PDUFramer(1024).feed(memoryview(A_RELEASE_RQ_PDU * 2)[::2])


def test_empty_feed() -> None:
    framer = PDUFramer(1024)
    assert framer.feed(b"") == []
    assert framer.feed(STREAM[:3]) == []
    assert framer.feed(b"") == []
    assert (framer.pending, framer.pdus, framer.bytes_in) == (3, 0, 3)


def expected_state(offset: int) -> tuple[list[bytes], int]:
    """PDUs complete within STREAM[:offset], and the bytes pending after them."""
    done = sum(1 for end in ENDS if end <= offset)
    return STREAM_PDUS[:done], offset - ([0, *ENDS][done])


@pytest.mark.parametrize("split", range(len(STREAM) + 1))
def test_split_at_every_offset(split: int) -> None:
    framer = PDUFramer(1024)
    first = framer.feed(STREAM[:split])
    want_first, want_pending = expected_state(split)
    assert first == want_first
    assert (framer.pending, framer.pdus, framer.bytes_in) == (
        want_pending,
        len(want_first),
        split,
    )
    second = framer.feed(STREAM[split:])
    assert first + second == STREAM_PDUS
    assert (framer.pending, framer.pdus, framer.bytes_in) == (0, len(STREAM_PDUS), len(STREAM))


def test_one_byte_at_a_time() -> None:
    framer = PDUFramer(1024)
    got: list[bytes] = []
    for offset in range(1, len(STREAM) + 1):
        out = framer.feed(STREAM[offset - 1 : offset])
        # A PDU comes out exactly when its last byte arrives.
        assert out == ([STREAM_PDUS[ENDS.index(offset)]] if offset in ENDS else [])
        got += out
        want, want_pending = expected_state(offset)
        assert (framer.pending, framer.pdus, framer.bytes_in) == (want_pending, len(want), offset)
    assert got == STREAM_PDUS


def test_zero_length_pdu_split_header() -> None:
    # PDU-length 0 is framed (the codecs judge the body): complete when the header is.
    framer = PDUFramer(1024)
    assert framer.feed(header(0x04, 0)[:4]) == []
    assert framer.feed(header(0x04, 0)[4:]) == [header(0x04, 0)]
    assert framer.pending == 0


# -- errors ---------------------------------------------------------------------


@pytest.mark.parametrize("pdu_type", [0x00, 0x08, 0xFF])
def test_unrecognized_type_on_the_type_byte(pdu_type: int) -> None:
    framer = PDUFramer(1024)
    assert framer.feed(A_RELEASE_RQ_PDU) == [A_RELEASE_RQ_PDU]
    with pytest.raises(UnrecognizedPDU) as info:
        framer.feed(bytes([pdu_type]))
    assert info.value.pdu_type == pdu_type
    assert (framer.pending, framer.pdus, framer.bytes_in) == (0, 1, len(A_RELEASE_RQ_PDU) + 1)


@pytest.mark.parametrize("pdu_type", [0x00, 0x08, 0xFF])
def test_unrecognized_type_mid_chunk(pdu_type: int) -> None:
    framer = PDUFramer(1024)
    with pytest.raises(UnrecognizedPDU) as info:
        framer.feed(A_RELEASE_RQ_PDU + bytes([pdu_type]) + bytes(20))
    assert info.value.pdu_type == pdu_type
    # The A-RELEASE-RQ completed in the failing call is dropped with it.
    assert (framer.pdus, framer.bytes_in) == (0, len(A_RELEASE_RQ_PDU) + 1)


@pytest.mark.parametrize(
    ("pdu_type", "cap"), [(0x04, 1024), (0x01, 65536)], ids=["P-DATA-TF", "A-ASSOCIATE-RQ"]
)
def test_length_ffffffff_rejected_on_the_header(pdu_type: int, cap: int) -> None:
    framer = PDUFramer(1024)
    with pytest.raises(PDUTooLarge) as info:
        framer.feed(header(pdu_type, 0xFFFFFFFF))
    err = info.value
    assert (err.pdu_type, err.pdu_length, err.max_pdu_length) == (pdu_type, 0xFFFFFFFF, cap)
    assert (framer.pending, framer.bytes_in) == (0, 6)


@pytest.mark.parametrize(
    ("pdu_type", "framer_args", "cap"),
    [
        (0x04, (1000,), 1000),
        (0x01, (1000, 300), 300),
        (0x02, (1000, 300), 300),
        (0x01, (1000,), 65536),  # the default A-ASSOCIATE cap
    ],
)
def test_caps(pdu_type: int, framer_args: tuple[int, ...], cap: int) -> None:
    at_cap = header(pdu_type, cap) + bytes(cap)
    framer = PDUFramer(*framer_args)
    assert framer.feed(at_cap) == [at_cap]

    framer = PDUFramer(*framer_args)
    with pytest.raises(PDUTooLarge) as info:
        framer.feed(header(pdu_type, cap + 1) + bytes(cap + 1))
    assert (info.value.pdu_length, info.value.max_pdu_length) == (cap + 1, cap)


@pytest.mark.parametrize("pdu_type", [0x03, 0x05, 0x06, 0x07])
@pytest.mark.parametrize("length", [0, 3, 5, 0xFFFFFFFF])
def test_fixed_length_pdus(pdu_type: int, length: int) -> None:
    framer = PDUFramer(0xFFFFFFFF, 0xFFFFFFFF)
    with pytest.raises(InvalidPDU) as info:
        framer.feed(header(pdu_type, length) + bytes(min(length, 8)))
    assert info.value.pdu_type == pdu_type
    assert str(length) in info.value.problem
    assert (framer.pending, framer.pdus, framer.bytes_in) == (0, 0, 6)


def test_error_raised_on_last_header_byte_before_any_body() -> None:
    framer = PDUFramer(100)
    head = header(0x04, 101)
    for i in range(5):
        assert framer.feed(head[i : i + 1]) == []
    assert framer.pending == 5
    with pytest.raises(PDUTooLarge):
        framer.feed(head[5:])
    assert (framer.pending, framer.bytes_in) == (0, 6)


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (b"\x08", UnrecognizedPDU),
        (header(0x04, 2000), PDUTooLarge),
        (header(0x05, 3), InvalidPDU),
    ],
)
def test_poisoned_after_error(bad: bytes, error: type[Exception]) -> None:
    framer = PDUFramer(1024)
    with pytest.raises(error) as first:
        framer.feed(bad)
    bytes_in = framer.bytes_in
    for data in (A_RELEASE_RQ_PDU, b""):
        with pytest.raises(error) as again:
            framer.feed(data)
        assert again.value is first.value
    assert (framer.pdus, framer.bytes_in) == (0, bytes_in)


def test_set_max_pdata_length() -> None:
    framer = PDUFramer(100)
    held = header(0x04, 80) + bytes(40)
    assert framer.feed(held) == []
    framer.set_max_pdata_length(50)
    # The held P-DATA-TF passed the cap in force when its header arrived.
    assert framer.feed(bytes(40)) == [header(0x04, 80) + bytes(80)]
    # The A-ASSOCIATE cap is separate.
    assert framer.feed(header(0x01, 60) + bytes(60)) == [header(0x01, 60) + bytes(60)]
    with pytest.raises(PDUTooLarge) as info:
        framer.feed(header(0x04, 51))
    assert info.value.max_pdu_length == 50


@pytest.mark.parametrize("value", [-1, 2**32, 2**40])
def test_caps_must_fit_the_length_field(value: int) -> None:
    with pytest.raises(ValueError, match="max_pdata_length"):
        PDUFramer(value)
    with pytest.raises(ValueError, match="max_associate_length"):
        PDUFramer(1024, value)
    with pytest.raises(ValueError, match="max_pdata_length"):
        PDUFramer(1024).set_max_pdata_length(value)


def test_largest_cap_holds_a_maximal_header() -> None:
    framer = PDUFramer(0xFFFFFFFF)
    assert framer.feed(header(0x04, 0xFFFFFFFF) + b"abc") == []
    assert framer.pending == 9
