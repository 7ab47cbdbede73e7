"""Hypothesis fuzzing of dicomgw._core.scan_metadata: pydicom as the oracle on random
data sets, and no crash (nothing but MalformedDataSet) on random or mutated bytes."""

from __future__ import annotations

import struct
from datetime import date

from hypothesis import event, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomgw._core import METADATA_TAGS, scan_metadata
from dicomgw.errors import MalformedDataSet

# GUARDED: a guard page after the buffer makes any read past the end of head a crash.
from tests.unit.test_metadata_scan import GUARDED, encode, pydicom_read

fuzz_settings = settings(max_examples=300, deadline=None)

# (explicit_vr, little_endian): Implicit VR LE, Explicit VR LE, Explicit VR BE.
ENCODINGS = [(False, True), (True, True), (True, False)]
encodings = st.sampled_from(ENCODINGS)

UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQ_END = 0xE000, 0xE00D, 0xE0DD

# Values drawn per VR so that pydicom accepts them without complaint.
DIGITS = "0123456789"
UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
TEXT = UPPER + "abcdefghijklmnopqrstuvwxyz" + DIGITS + " ^-."
UIDS = st.lists(st.integers(0, 99999), min_size=2, max_size=10).map(
    lambda parts: ".".join(map(str, parts))
)
VALUES = {
    "CS": st.text(UPPER + DIGITS + " _", max_size=16),
    "UI": UIDS,
    "DA": st.one_of(
        st.just(""),
        st.dates(date(1900, 1, 1), date(2099, 12, 31)).map(lambda d: d.strftime("%Y%m%d")),
    ),
    "TM": st.one_of(st.just(""), st.times().map(lambda t: t.strftime("%H%M%S"))),
    "SH": st.text(TEXT, max_size=16),
    "LO": st.text(TEXT, max_size=64),
    "PN": st.text(TEXT, max_size=64),
    "IS": st.one_of(st.just(""), st.integers(-(2**31), 2**31 - 1).map(str)),
    "charset": st.sampled_from(["", "ISO_IR 100", "ISO_IR 192", "ISO_IR 6"]),
}
WANTED_VR = {
    0x00080005: "CS",
    0x00080016: "UI",
    0x00080018: "UI",
    0x00080020: "DA",
    0x00080030: "TM",
    0x00080050: "SH",
    0x00080060: "CS",
    0x00080090: "PN",
    0x00081030: "LO",
    0x0008103E: "LO",
    0x00100010: "PN",
    0x00100020: "LO",
    0x00100030: "DA",
    0x00100040: "CS",
    0x0020000D: "UI",
    0x0020000E: "UI",
    0x00200011: "IS",
    0x00200013: "IS",
    0x00280008: "IS",
}
# Standard sequences placed among the wanted tags, and a private one.
SEQUENCE_TAGS = [0x00080082, 0x00081110, 0x00081140, 0x00091010, 0x00101002]


@st.composite
def datasets(draw: st.DrawFn, depth: int, with_un: bool, top: bool = False) -> Dataset:
    """A data set with some wanted attributes, sequences, private and pixel data."""
    ds = Dataset()
    # Items get few wanted tags: they only have to be ignored, and generation is slow.
    wanted = st.sets(st.sampled_from(list(WANTED_VR)), max_size=len(WANTED_VR) if top else 2)
    for tag in draw(wanted):
        values = VALUES["charset" if tag == 0x00080005 else WANTED_VR[tag]]
        ds.add_new(tag, WANTED_VR[tag], draw(values))
    if depth > 0:
        for tag in draw(st.lists(st.sampled_from(SEQUENCE_TAGS), max_size=2, unique=True)):
            items = draw(st.lists(datasets(depth - 1, with_un=False), max_size=2))
            for item in items:
                item.is_undefined_length_sequence_item = draw(st.booleans())
            if tag == 0x00091010:
                ds.add_new(0x00090010, "LO", "DICOMGW FUZZ")
            ds.add_new(tag, "SQ", Sequence(items))
            ds[tag].is_undefined_length = draw(st.booleans())
    if draw(st.booleans()):
        ds.add_new(0x00090010, "LO", "DICOMGW FUZZ")
        ds.add_new(0x00091001, "OB", draw(st.binary(max_size=40)))
        ds.add_new(0x00191001, "LO", draw(VALUES["LO"]))
    if with_un and depth > 0 and draw(st.booleans()):
        # PS3.5 6.2.2: an undefined-length UN holds a sequence in Implicit VR LE.
        inner = draw(datasets(depth - 1, with_un=False))
        content = encode(inner, False, True)
        ds.add_new(0x00090010, "LO", "DICOMGW FUZZ")
        ds.add_new(
            0x00091002,
            "UN",
            struct.pack("<HHL", 0xFFFE, ITEM, len(content)) + content,
        )
        ds[0x00091002].is_undefined_length = True
    if depth > 0 and draw(st.booleans()):
        ds.Rows = 1
        ds.add_new(0x7FE00010, "OW", draw(st.binary(max_size=8)) * 2)
    return ds


@st.composite
def encoded_datasets(draw: st.DrawFn) -> tuple[bytes, bool, bool]:
    explicit_vr, little_endian = draw(encodings)
    # NOTE: pydicom writes the UN delimiter in the file's byte order, so UN only in LE.
    ds = draw(datasets(3, with_un=little_endian, top=True))
    return encode(ds, explicit_vr, little_endian), explicit_vr, little_endian


def outcome(head: bytes | memoryview, encoding: tuple[bool, bool], complete: bool) -> object:
    """The result, or the MalformedDataSet raised; anything else fails the test."""
    try:
        found = scan_metadata(head, *encoding, complete)
    except MalformedDataSet as exc:
        assert 0 <= exc.offset <= len(head)
        return ("malformed", exc.offset)
    assert set(found) <= set(METADATA_TAGS)
    for value in found.values():
        assert type(value) is bytes
        assert not value.endswith((b" ", b"\x00"))
    return found


def check_no_crash(data: bytes, encoding: tuple[bool, bool]) -> None:
    whole = outcome(GUARDED.holding(data), encoding, True)
    prefix = outcome(GUARDED.holding(data), encoding, False)
    event(f"complete: {'malformed' if isinstance(whole, tuple) else 'ok'}")
    # A prefix scan stops where a whole one fails; both see the same structure.
    if isinstance(prefix, tuple):
        assert whole == prefix
    else:
        assert whole == prefix or isinstance(whole, tuple)
    assert outcome(data, encoding, True) == whole


# -- hand-made structure: element headers, items and delimiters in any order ------


@st.composite
def tokens(draw: st.DrawFn, little_endian: bool) -> bytes:
    e = "<" if little_endian else ">"
    kind = draw(st.sampled_from(["element", "long", "marker", "raw"]))
    length = draw(st.one_of(st.integers(0, 24), st.just(UNDEFINED), st.integers(0, UNDEFINED)))
    if kind == "marker":
        element = draw(st.sampled_from([ITEM, ITEM_END, SEQ_END, 0xE001]))
        return struct.pack(f"{e}HHL", 0xFFFE, element, length)
    if kind == "raw":
        return draw(st.binary(max_size=12))
    tag = draw(
        st.one_of(
            st.sampled_from([*WANTED_VR, *SEQUENCE_TAGS, 0x7FE00010]), st.integers(0, 2**32 - 1)
        )
    )
    head = struct.pack(f"{e}HH", tag >> 16, tag & 0xFFFF)
    value = draw(st.binary(max_size=24))
    if kind == "long":  # explicit VR with a 4-byte length, or implicit VR
        vr = draw(st.sampled_from([b"SQ", b"UN", b"OB", b"UT", b""]))
        return head + vr + (b"\x00\x00" if vr else b"") + struct.pack(f"{e}L", length) + value
    vr = draw(st.sampled_from([b"LO", b"CS", b"UI", b"PN", b"zz", b"\x00\x01"]))
    return head + vr + struct.pack(f"{e}H", length & 0xFFFF) + value


@st.composite
def structured_garbage(draw: st.DrawFn) -> tuple[bytes, tuple[bool, bool]]:
    encoding = draw(encodings)
    parts = draw(st.lists(tokens(encoding[1]), max_size=24))
    return b"".join(parts), encoding


@fuzz_settings
@given(st.binary(max_size=600), encodings)
def test_random_bytes_never_crash(data: bytes, encoding: tuple[bool, bool]) -> None:
    check_no_crash(data, encoding)


@fuzz_settings
@given(structured_garbage())
def test_random_structure_never_crashes(case: tuple[bytes, tuple[bool, bool]]) -> None:
    data, encoding = case
    check_no_crash(data, encoding)


# -- valid data sets: the same values as pydicom, and mutations of them ------------------


@settings(max_examples=200, deadline=None)
@given(encoded_datasets())
def test_random_datasets_match_pydicom(case: tuple[bytes, bool, bool]) -> None:
    encoded, explicit_vr, little_endian = case
    got = scan_metadata(encoded, explicit_vr, little_endian, True)
    assert got == pydicom_read(encoded, explicit_vr, little_endian)
    event(f"{len(got)} wanted values")
    # Every prefix of a well-formed data set: never malformed, a subset of the whole.
    for cut in range(len(encoded)):
        part = scan_metadata(GUARDED.holding(encoded[:cut]), explicit_vr, little_endian, False)
        assert all(got.get(tag) == value for tag, value in part.items()), cut


MUTATION_WORDS = [
    b"\xff\xff\xff\xff",
    b"\x00\x00\x00\x00",
    b"\xfe\xff\x00\xe0",
    b"\xfe\xff\x0d\xe0",
    b"\xfe\xff\xdd\xe0",
    b"\xff\xfe\xe0\x00",
    b"\xff\xfe\xe0\xdd",
    b"SQ\x00\x00",
    b"UN\x00\x00",
    b"\xff\xff\xff\x7f",
]


@st.composite
def mutated(draw: st.DrawFn) -> tuple[bytes, tuple[bool, bool]]:
    encoded, explicit_vr, little_endian = draw(encoded_datasets())
    data = bytearray(encoded)
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        how = draw(st.sampled_from(["flip", "word", "delete", "insert", "truncate"]))
        if how == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif how == "word":
            data[at : at + 4] = draw(st.sampled_from(MUTATION_WORDS))
        elif how == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif how == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[at:]
    return bytes(data), (explicit_vr, little_endian)


@fuzz_settings
@given(mutated())
def test_mutated_datasets_never_crash(case: tuple[bytes, tuple[bool, bool]]) -> None:
    data, encoding = case
    check_no_crash(data, encoding)
