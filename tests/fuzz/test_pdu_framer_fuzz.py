"""Hypothesis fuzzing of dicomgw._core.PDUFramer against a plain-Python model of PS3.8 9.3."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from hypothesis import event, given, settings
from hypothesis import strategies as st

from dicomgw._core import PDUFramer
from dicomgw.errors import InvalidPDU, PDUError, PDUTooLarge, UnrecognizedPDU

FIXED_LENGTH_TYPES = (0x03, 0x05, 0x06, 0x07)
MAX_BODY = 300  # keeps generated PDUs small; caps are drawn around it

fuzz_settings = settings(max_examples=400, deadline=None)


@dataclass
class Framed:
    pdus: list[bytes]
    pending: int
    error: PDUError | None
    consumed: int  # bytes_in after the whole stream (or after the error)


def model(data: bytes, max_pdata: int, max_associate: int) -> Framed:
    """Frames a whole stream the slow, obvious way: the oracle for the framer."""
    pdus: list[bytes] = []
    pos = 0
    while pos < len(data):
        pdu_type = data[pos]
        if not 0x01 <= pdu_type <= 0x07:
            return Framed(pdus, 0, UnrecognizedPDU(pdu_type), pos + 1)
        if len(data) - pos < 6:
            break
        length = int.from_bytes(data[pos + 2 : pos + 6], "big")
        if pdu_type in FIXED_LENGTH_TYPES:
            if length != 4:
                return Framed(pdus, 0, InvalidPDU(pdu_type, "wrong length"), pos + 6)
        else:
            cap = max_pdata if pdu_type == 0x04 else max_associate
            if length > cap:
                return Framed(pdus, 0, PDUTooLarge(pdu_type, length, cap), pos + 6)
        if pos + 6 + length > len(data):
            break
        pdus.append(data[pos : pos + 6 + length])
        pos += 6 + length
    return Framed(pdus, len(data) - pos, None, len(data))


def feed_in_chunks(
    framer: PDUFramer, data: bytes, cuts: list[int]
) -> tuple[list[bytes], PDUError | None]:
    out: list[bytes] = []
    bounds = [0, *sorted(cuts), len(data)]
    for start, end in itertools.pairwise(bounds):
        try:
            out += framer.feed(data[start:end])
        except PDUError as exc:  # anything else fails the test
            return out, exc
    return out, None


def without_problem(error: object) -> dict[str, object]:
    return {k: v for k, v in vars(error).items() if k != "problem"}


@st.composite
def valid_pdu(draw: st.DrawFn) -> bytes:
    pdu_type = draw(st.integers(0x01, 0x07))
    size = 4 if pdu_type in FIXED_LENGTH_TYPES else draw(st.integers(0, MAX_BODY))
    body = draw(st.binary(min_size=size, max_size=size))
    reserved = draw(st.integers(0, 255))  # PS3.8 9.3: not tested on receipt
    return bytes([pdu_type, reserved]) + len(body).to_bytes(4, "big") + body


@st.composite
def stream_and_cuts(draw: st.DrawFn, data: st.SearchStrategy[bytes]) -> tuple[bytes, list[int]]:
    stream = draw(data)
    cuts = draw(st.lists(st.integers(0, len(stream)), max_size=20))
    return stream, cuts


caps = st.one_of(st.integers(0, MAX_BODY + 10), st.just(0xFFFFFFFF))
# A known PDU-type with any PDU-length: reaches the length checks more often than noise.
known_header = st.builds(
    lambda pdu_type, length: bytes([pdu_type, 0]) + length.to_bytes(4, "big"),
    st.integers(0x01, 0x07),
    st.one_of(st.integers(0, MAX_BODY + 20), st.integers(0, 0xFFFFFFFF)),
)
garbage = st.one_of(
    st.binary(max_size=400),
    st.lists(
        st.one_of(valid_pdu(), valid_pdu(), known_header, st.binary(max_size=8)), max_size=8
    ).map(b"".join),
)


@fuzz_settings
@given(stream_and_cuts(garbage), caps, caps)
def test_random_bytes_match_the_model(
    case: tuple[bytes, list[int]], max_pdata: int, max_associate: int
) -> None:
    data, cuts = case
    want = model(data, max_pdata, max_associate)
    framer = PDUFramer(max_pdata, max_associate)
    out, error = feed_in_chunks(framer, data, cuts)
    event(f"{type(want.error).__name__} after {len(want.pdus)} PDUs")
    if want.error is None:
        assert error is None
        assert out == want.pdus
        assert framer.pending == want.pending
    else:
        assert type(error) is type(want.error)
        # The problem text is prose; the numeric fields are what must agree.
        assert without_problem(error) == without_problem(want.error)
        # PDUs completed in the failing call are dropped, so only a prefix comes out.
        assert out == want.pdus[: len(out)]
        assert framer.pending == 0
        again, error_again = feed_in_chunks(framer, b"\x04", [])
        assert (again, error_again) == ([], error)
    assert framer.pdus == len(out)
    assert framer.bytes_in == want.consumed


@fuzz_settings
@given(stream_and_cuts(st.lists(valid_pdu(), max_size=12).map(b"".join)))
def test_valid_pdus_round_trip(case: tuple[bytes, list[int]]) -> None:
    data, cuts = case
    pdus = model(data, MAX_BODY, MAX_BODY).pdus
    assert b"".join(pdus) == data  # the generator made only whole, valid PDUs
    framer = PDUFramer(MAX_BODY, MAX_BODY)
    out, error = feed_in_chunks(framer, data, cuts)
    assert error is None
    assert out == pdus
    assert (framer.pending, framer.pdus, framer.bytes_in) == (0, len(pdus), len(data))
