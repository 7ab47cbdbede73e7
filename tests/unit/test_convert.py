"""dicomgw.send.convert against pydicom as the oracle, on pydicom's bundled test files
stored the way dicom-gw stores them (our header, then the data set bytes as sent)."""

from __future__ import annotations

import socket
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.charset import convert_encodings
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate_extended, generate_frames
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_data_element
from pydicom.tag import Tag
from pydicom.uid import (
    MPEG2MPML,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

from dicomgw.send.convert import ConversionError, conversion_targets, convert_dataset
from dicomgw.storage.part10 import build_header, parse_file_meta

EXPLICIT, IMPLICIT, DEFLATED = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
)

UNCOMPRESSED_FILES = [
    "CT_small.dcm",  # explicit LE, private elements of known VR
    "MR_small_implicit.dcm",
    "rtplan.dcm",  # implicit, nested sequences
    "priv_SQ.dcm",  # implicit, a private sequence of unknown VR
    "nested_priv_SQ.dcm",
    "MR_small_bigendian.dcm",
    "rtdose_expb.dcm",  # big endian, 32-bit pixels, 15 frames
    "SC_rgb_small_odd_big_endian.dcm",  # big endian, 8-bit pixels as OW
    "liver_expb_1frame.dcm",  # big endian, 1-bit pixels
    "image_dfl.dcm",  # deflated
    "examples_overlay.dcm",  # overlay data (OW)
    "waveform_ecg.dcm",  # waveform data (OB or OW)
]
COMPRESSED_FILES = [
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, YBR_FULL
    "examples_ybr_color.dcm",  # JPEG baseline, YBR_FULL_422, 30 frames
    "JPGExtended.dcm",  # JPEG extended, 12-bit
    "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless SV1
    "MR_small_jpeg_ls_lossless.dcm",
    "JPEGLSNearLossless_16.dcm",
    "MR_small_jp2klossless.dcm",
    "GDCMJ2K_TextGBR.dcm",  # JPEG 2000 lossless, YBR_RCT
    "JPEG2000.dcm",  # JPEG 2000 (lossy allowed)
    "MR_small_RLE.dcm",
    "SC_rgb_rle_2frame.dcm",
    "rtdose_rle.dcm",  # RLE, 32-bit, 15 frames
    "UN_sequence.dcm",  # a compressed syntax, but no pixel data; a UN sequence
]
# What decoding may change (PS3.3 C.7.6.3): the rest of the data set must not.
PIXEL_DESCRIPTION = tuple(
    str(Tag(keyword))
    for keyword in ("PhotometricInterpretation", "PlanarConfiguration", "NumberOfFrames")
)
PIXEL_DATA = 0x7FE00010
# For test files without a file meta SOP Class or Instance UID.
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Conversion and the test files are local; pydicom would otherwise try downloads."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the conversion tried to use the network")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@dataclass(frozen=True)
class Stored:
    path: Path
    dataset_size: int
    transfer_syntax: UID
    original: Dataset
    """The test file as pydicom reads it: the oracle."""


def bundled(name: str) -> Path:
    found = get_testdata_file(name, download=False)
    assert isinstance(found, str), f"{name} is not bundled with pydicom"
    return Path(found)


def dataset_offset(data: bytes) -> int:
    """Where the data set starts: after the group 0002 that (0002,0000) measures (PS3.10 7.1)."""
    assert data[128:132] == b"DICM"
    group, element, vr, length = struct.unpack_from("<HH2sH", data, 132)
    assert (group, element, vr, length) == (0x0002, 0x0000, b"UL", 4)
    (group_length,) = struct.unpack_from("<I", data, 140)
    return 144 + int(group_length)


def store(tmp_path: Path, name: str, edit: Callable[[Dataset], None] | None = None) -> Stored:
    """The test file as dicom-gw stores it: our Part 10 header, then the data set as sent;
    ``edit`` changes it first."""
    data = bundled(name).read_bytes()
    if edit is not None:
        edited = pydicom.dcmread(BytesIO(data))
        edit(edited)
        buffer = BytesIO()
        edited.save_as(buffer, enforce_file_format=True)
        data = buffer.getvalue()
    original = pydicom.dcmread(BytesIO(data))
    ts = UID(original.file_meta.TransferSyntaxUID)
    header = build_header(*sop_uids(original), ts, "TEST")
    path = tmp_path / f"{name}.dcm"
    path.write_bytes(header + data[dataset_offset(data) :])
    stored = path.read_bytes()
    dataset_size = len(stored) - parse_file_meta(stored[:4096]).dataset_offset
    assert dataset_size == len(stored) - dataset_offset(stored)
    return Stored(path, dataset_size, ts, original)


def sop_uids(ds: Dataset) -> tuple[str, str]:
    meta = ds.file_meta
    return (
        meta.get("MediaStorageSOPClassUID") or SECONDARY_CAPTURE,
        meta.get("MediaStorageSOPInstanceUID") or "1.2.3.4",
    )


def as_part10(stored: Stored, encoded: bytes, ts: str) -> Dataset:
    """Parse ``encoded`` as a data set in ``ts``, then as a Part 10 file with new meta."""
    raw = zlib.decompress(encoded, -zlib.MAX_WBITS) if ts == DEFLATED else encoded
    fp = BytesIO(raw)
    read_dataset(fp, is_implicit_VR=ts == IMPLICIT, is_little_endian=True)
    assert fp.tell() == len(raw), "trailing bytes after the data set"
    header = build_header(*sop_uids(stored.original), ts, "TEST")
    ds = pydicom.dcmread(BytesIO(header + encoded))
    assert ds.file_meta.TransferSyntaxUID == ts
    return ds


def elements(ds: Dataset, as_sent: bool, path: str = "") -> Iterator[tuple[str, Any]]:
    """(path, value) of every element but group lengths and Pixel Data, items expanded.

    ``as_sent``: values are the Little Endian bytes of the value, so data sets compare
    byte for byte, whatever VR the private dictionaries guess for an implicit element.
    """
    for tag in sorted(ds.keys()):
        if tag.element == 0 or tag == PIXEL_DATA:
            continue
        raw = ds.get_item(tag)
        elem = ds[tag]
        where = f"{path}{tag}"
        if elem.VR == "SQ":
            yield where, len(elem.value)
            for index, item in enumerate(elem.value):
                yield from elements(item, as_sent, f"{where}[{index}]")
        elif not as_sent:
            yield where, elem.value
        elif isinstance(raw, RawDataElement):
            yield where, raw.value or b""
        else:
            # pydicom decodes some values as it reads (which depends on the encoding).
            fp = DicomBytesIO()
            fp.is_little_endian, fp.is_implicit_VR = True, True
            write_data_element(fp, elem, list(convert_encodings(ds.original_character_set)))
            yield where, fp.getvalue()[8:]


def conversions(names: list[str]) -> list[tuple[str, str]]:
    cases: list[tuple[str, str]] = []
    for name in names:
        ts = pydicom.dcmread(bundled(name), stop_before_pixels=True).file_meta.TransferSyntaxUID
        cases.extend((name, target) for target in conversion_targets(ts))
    return cases


def case_id(case: tuple[str, str]) -> str:
    return f"{case[0]}->{UID(case[1]).keyword}"


@pytest.mark.parametrize("case", conversions(UNCOMPRESSED_FILES + COMPRESSED_FILES), ids=case_id)
def test_converts_to_each_target(tmp_path: Path, case: tuple[str, str]) -> None:
    name, target = case
    stored = store(tmp_path, name)
    encoded = convert_dataset(stored.path, stored.dataset_size, stored.transfer_syntax, target)
    converted = as_part10(stored, encoded, target)
    original = stored.original

    skip = PIXEL_DESCRIPTION if stored.transfer_syntax.is_compressed else ()
    as_sent = stored.transfer_syntax != ExplicitVRBigEndian
    assert {p: v for p, v in elements(converted, as_sent) if not p.endswith(skip)} == {
        p: v for p, v in elements(original, as_sent) if not p.endswith(skip)
    }
    if "PixelData" not in original:
        assert "PixelData" not in converted
        return
    if as_sent and not stored.transfer_syntax.is_compressed:
        assert converted.PixelData == original.PixelData
        return
    assert "ExtendedOffsetTable" not in converted
    # Lossy sources too: the conversion decodes with the decoder pydicom uses for the oracle.
    expected = original.pixel_array
    assert converted.pixel_array.dtype == expected.dtype.newbyteorder("=")
    assert np.array_equal(converted.pixel_array, expected)


@pytest.mark.parametrize(
    ("name", "photometric"),
    [
        ("SC_rgb_jpeg_dcmtk.dcm", "RGB"),
        ("examples_ybr_color.dcm", "RGB"),
        ("GDCMJ2K_TextGBR.dcm", "RGB"),
        ("MR_small_RLE.dcm", "MONOCHROME2"),
    ],
)
def test_decoding_describes_the_decoded_pixels(tmp_path: Path, name: str, photometric: str) -> None:
    stored = store(tmp_path, name)
    encoded = convert_dataset(stored.path, stored.dataset_size, stored.transfer_syntax, EXPLICIT)
    converted = as_part10(stored, encoded, EXPLICIT)
    assert converted.PhotometricInterpretation == photometric
    assert converted.get("PlanarConfiguration", 0) == 0
    assert converted.get("LossyImageCompression") == stored.original.get("LossyImageCompression")


def add_extended_offset_table(ds: Dataset) -> None:
    frames = list(generate_frames(ds.PixelData, number_of_frames=ds.NumberOfFrames))
    ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(
        frames
    )
    ds["PixelData"].is_undefined_length = True


def test_the_extended_offset_table_goes_with_the_fragments(tmp_path: Path) -> None:
    stored = store(tmp_path, "SC_rgb_rle_2frame.dcm", add_extended_offset_table)
    assert "ExtendedOffsetTable" in stored.original
    args = (stored.path, stored.dataset_size, RLELossless, EXPLICIT)
    converted = as_part10(stored, convert_dataset(*args), EXPLICIT)
    assert "ExtendedOffsetTable" not in converted
    assert "ExtendedOffsetTableLengths" not in converted
    assert np.array_equal(converted.pixel_array, stored.original.pixel_array)


def add_icon(ds: Dataset) -> None:
    """An Icon Image Sequence item holding the same JPEG as the image itself."""
    icon = Dataset()
    for elem in ds.group_dataset(0x0028):
        icon.add(elem)
    icon.add_new(PIXEL_DATA, "OB", ds.PixelData)
    icon["PixelData"].is_undefined_length = True
    ds.IconImageSequence = [icon]


def test_an_encapsulated_icon_is_decoded_too(tmp_path: Path) -> None:
    stored = store(tmp_path, "SC_rgb_jpeg_dcmtk.dcm", add_icon)
    args = (stored.path, stored.dataset_size, JPEGBaseline8Bit, IMPLICIT)
    converted = as_part10(stored, convert_dataset(*args), IMPLICIT)
    assert stored.original.IconImageSequence[0]["PixelData"].is_undefined_length
    icon = converted.IconImageSequence[0]
    assert icon.PhotometricInterpretation == "RGB"
    assert icon.PixelData == converted.PixelData
    assert np.array_equal(converted.pixel_array, stored.original.pixel_array)


def implicit_element(group: int, element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", group, element, len(value)) + value


def explicit_element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH2sHI", group, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def stored_bytes(tmp_path: Path, dataset: bytes, ts: str) -> Path:
    path = tmp_path / "stored.dcm"
    header = build_header(SECONDARY_CAPTURE, "1.2.3.4", ts, "TEST")
    path.write_bytes(header + dataset)
    return path


# Invalid UTF-8 (C3 28) under ISO_IR 192, which a decode/encode round trip would replace.
CHARSET = b"ISO_IR 192"
NAME = b"\xc3\x28bad^name "
GROUP_LENGTH = struct.pack("<I", 999)
US_VALUE = struct.pack("<H", 7)


def test_text_is_copied_byte_for_byte_and_group_lengths_dropped(tmp_path: Path) -> None:
    implicit = b"".join(
        (
            implicit_element(0x0008, 0x0000, GROUP_LENGTH),
            implicit_element(0x0008, 0x0005, CHARSET),
            implicit_element(0x0010, 0x0010, NAME),
            implicit_element(0x0028, 0x0010, US_VALUE),
        )
    )
    explicit = b"".join(
        (
            explicit_element(0x0008, 0x0005, b"CS", CHARSET),
            explicit_element(0x0010, 0x0010, b"PN", NAME),
            explicit_element(0x0028, 0x0010, b"US", US_VALUE),
        )
    )
    path = stored_bytes(tmp_path, implicit, IMPLICIT)
    assert convert_dataset(path, len(implicit), IMPLICIT, EXPLICIT) == explicit

    path = stored_bytes(tmp_path, explicit, EXPLICIT)
    assert convert_dataset(path, len(explicit), EXPLICIT, IMPLICIT) == implicit[12:]


def test_a_long_value_in_a_short_vr_becomes_un(tmp_path: Path) -> None:
    long_value = b"A" * 0x10000
    implicit = implicit_element(0x0008, 0x1030, long_value)  # Study Description, LO
    path = stored_bytes(tmp_path, implicit, IMPLICIT)
    encoded = convert_dataset(path, len(implicit), IMPLICIT, EXPLICIT)
    assert encoded == struct.pack("<HH2sHI", 0x0008, 0x1030, b"UN", 0, 0x10000) + long_value


def test_deflated_and_explicit_are_the_same_bytes_inflated(tmp_path: Path) -> None:
    stored = store(tmp_path, "image_dfl.dcm")
    inflated = zlib.decompress(stored.path.read_bytes()[-stored.dataset_size :], -zlib.MAX_WBITS)
    args = (stored.path, stored.dataset_size, DEFLATED)
    assert convert_dataset(*args, EXPLICIT) == inflated


def test_conversion_targets() -> None:
    assert conversion_targets(EXPLICIT) == (IMPLICIT, DEFLATED)
    assert conversion_targets(IMPLICIT) == (EXPLICIT, DEFLATED)
    assert conversion_targets(DEFLATED) == (EXPLICIT, IMPLICIT)
    assert conversion_targets(ExplicitVRBigEndian) == (EXPLICIT, IMPLICIT, DEFLATED)
    for compressed in (JPEGBaseline8Bit, JPEG2000Lossless, RLELossless, "1.2.840.10008.1.2.4.80"):
        assert conversion_targets(compressed) == (EXPLICIT, IMPLICIT, DEFLATED)
    assert conversion_targets(MPEG2MPML) == ()
    assert conversion_targets("1.2.3.4.5") == ()


def test_same_syntax_is_a_caller_bug(tmp_path: Path) -> None:
    stored = store(tmp_path, "CT_small.dcm")
    with pytest.raises(ValueError, match="already in Explicit VR Little Endian"):
        convert_dataset(stored.path, stored.dataset_size, EXPLICIT, EXPLICIT)


@pytest.mark.parametrize(
    ("name", "target"),
    [
        ("CT_small.dcm", JPEGBaseline8Bit),
        ("CT_small.dcm", JPEG2000Lossless),
        ("CT_small.dcm", RLELossless),
        ("MR_small_jp2klossless.dcm", JPEGBaseline8Bit),
        ("MR_small_RLE.dcm", JPEG2000Lossless),
    ],
)
def test_no_conversion_to_compressed_syntaxes(tmp_path: Path, name: str, target: str) -> None:
    stored = store(tmp_path, name)
    with pytest.raises(ConversionError) as raised:
        convert_dataset(stored.path, stored.dataset_size, stored.transfer_syntax, target)
    assert raised.value.reason.endswith(": conversion to compressed syntaxes is not supported")


def test_no_conversion_to_big_endian(tmp_path: Path) -> None:
    stored = store(tmp_path, "CT_small.dcm")
    with pytest.raises(ConversionError, match="Big Endian"):
        convert_dataset(stored.path, stored.dataset_size, EXPLICIT, ExplicitVRBigEndian)


@pytest.mark.parametrize(
    ("source", "why"),
    [
        (MPEG2MPML, "no decoder for transfer syntax MPEG2 Main Profile / Main Level"),
        ("1.2.3.4.5", "no decoder for transfer syntax 1.2.3.4.5"),
    ],
)
def test_no_decoder(tmp_path: Path, source: str, why: str) -> None:
    stored = store(tmp_path, "CT_small.dcm")
    with pytest.raises(ConversionError) as raised:
        convert_dataset(stored.path, stored.dataset_size, source, EXPLICIT)
    assert raised.value.reason == f"{UID(source).name} → Explicit VR Little Endian: {why}"
    assert (raised.value.source_ts, raised.value.target_ts) == (source, EXPLICIT)


def test_pixel_data_the_decoder_rejects(tmp_path: Path) -> None:
    # pydicom cannot decode this file with pylibjpeg either (it needs GDCM).
    stored = store(tmp_path, "JPEG-lossy.dcm")
    with pytest.raises(ConversionError) as raised:
        convert_dataset(stored.path, stored.dataset_size, stored.transfer_syntax, IMPLICIT)
    assert raised.value.reason.startswith(
        "JPEG Extended (Process 2 and 4) → Implicit VR Little Endian: cannot decode: "
    )
    assert "libjpeg" in raised.value.reason
    assert "\n" not in raised.value.reason


def test_corrupt_pixel_data(tmp_path: Path) -> None:
    stored = store(tmp_path, "MR_small_jp2klossless.dcm")
    data = bytearray(stored.path.read_bytes())
    # Wreck the codestream's SIZ marker segment (after SOC FF4F) but keep every length.
    siz = data.index(b"\xff\x4f\xff\x51") + 2
    data[siz : siz + 40] = b"\xff" * 40
    stored.path.write_bytes(data)
    with pytest.raises(ConversionError) as raised:
        convert_dataset(stored.path, stored.dataset_size, JPEG2000Lossless, EXPLICIT)
    assert raised.value.reason.startswith(
        "JPEG 2000 Image Compression (Lossless Only) → Explicit VR Little Endian: cannot decode: "
    )


def test_a_data_set_cut_short(tmp_path: Path) -> None:
    stored = store(tmp_path, "CT_small.dcm")
    # CT_small.dcm ends with 32768 bytes of Pixel Data and 138 of Data Set Trailing Padding.
    stored.path.write_bytes(stored.path.read_bytes()[:-1000])
    with pytest.raises(ConversionError) as raised:
        convert_dataset(stored.path, stored.dataset_size - 1000, EXPLICIT, IMPLICIT)
    assert raised.value.reason.endswith(
        ": element (7FE0,0010) is cut short: 31906 of its 32768 bytes"
    )


def test_a_malformed_data_set(tmp_path: Path) -> None:
    stored = store(tmp_path, "CT_small.dcm")
    data = bytearray(stored.path.read_bytes())
    start = len(data) - stored.dataset_size
    data[start + 300 : start + 310] = b"\xff" * 10
    stored.path.write_bytes(data)
    with pytest.raises(ConversionError, match="cannot parse the stored data set"):
        convert_dataset(stored.path, stored.dataset_size, EXPLICIT, IMPLICIT)


def test_a_truncated_file(tmp_path: Path) -> None:
    stored = store(tmp_path, "CT_small.dcm")
    with pytest.raises(ConversionError, match="shorter than its data set"):
        convert_dataset(stored.path, 10**9, EXPLICIT, IMPLICIT)
