"""Transfer syntax conversion: the forwarder's slow path.

When a peer accepts the stored transfer syntax the forwarder sends the stored bytes
untouched. Otherwise it asks :func:`conversion_targets` what it may propose instead and,
once a target is negotiated, :func:`convert_dataset` re-encodes the stored data set.
Both are pure and synchronous; the caller runs them in a worker thread.

Values are copied byte for byte: only element headers change (plus byte swapping from
Explicit VR Big Endian, and the Image Pixel module when compressed Pixel Data is decoded).
Text is never decoded and re-encoded, because a round trip through ``str`` can change
the bytes of ISO 2022 or malformed text that the peer would otherwise have received as sent.
"""

from __future__ import annotations

import os
import struct
import zlib
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.charset import convert_encodings
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import data_element_generator
from pydicom.filewriter import correct_ambiguous_vr_element, write_data_element
from pydicom.hooks import raw_element_vr
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import decompress, get_expected_length
from pydicom.tag import BaseTag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pydicom.valuerep import AMBIGUOUS_VR, EXPLICIT_VR_LENGTH_32, VR

# In order of preference: explicit VRs tell the peer what private elements are; deflate
# costs CPU on both sides for a syntax every peer that accepts it also accepts uncompressed.
_TARGETS = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)
_UNCOMPRESSED = frozenset((*_TARGETS, ExplicitVRBigEndian))

_PIXEL_DATA = BaseTag(0x7FE00010)
# Offsets into encapsulated fragments that no longer exist once decoded (PS3.5 A.4).
_EXTENDED_OFFSET_TABLE = (BaseTag(0x7FE00001), BaseTag(0x7FE00002))

_UNDEFINED_LENGTH = 0xFFFFFFFF
# PS3.5 7.5: sequences and items are written with undefined length, so nothing has to
# be measured before it is written.
_ITEM = struct.pack("<HHI", 0xFFFE, 0xE000, _UNDEFINED_LENGTH)
_ITEM_END = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
_SEQUENCE_END = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)

# Byte order only matters for binary VRs; AT is a pair of 16-bit numbers (PS3.5 6.2).
_SWAP_WIDTH = {
    "AT": 2, "OW": 2, "SS": 2, "US": 2,
    "FL": 4, "OF": 4, "OL": 4, "SL": 4, "UL": 4,
    "FD": 8, "OD": 8, "OV": 8, "SV": 8, "UV": 8,
}  # fmt: skip


class ConversionError(Exception):
    """The stored data set cannot be converted to the transfer syntax a peer accepts.

    Retrying will not help; ``reason`` says why in words a PACS administrator knows.
    """

    def __init__(self, source_ts: str, target_ts: str, problem: str) -> None:
        self.source_ts = source_ts
        self.target_ts = target_ts
        self.reason = f"{UID(source_ts).name} → {UID(target_ts).name}: {problem}"
        super().__init__(self.reason)


class _Unconvertible(Exception):
    """Raised below :func:`convert_dataset`, which adds the syntaxes to the message."""


def conversion_targets(source_ts: str) -> tuple[str, ...]:
    """The transfer syntaxes :func:`convert_dataset` can produce from ``source_ts``, best first."""
    source = UID(source_ts)
    if _source_problem(source) is not None:
        return ()
    return tuple(str(target) for target in _TARGETS if target != source)


def convert_dataset(path: Path, dataset_size: int, source_ts: str, target_ts: str) -> bytes:
    """The stored data set (the last ``dataset_size`` bytes of ``path``) encoded in
    ``target_ts``: no preamble, no file meta, the bytes that go into P-DATA.

    Raises :class:`ConversionError` when it cannot be done, and ``ValueError`` when
    ``source_ts`` is ``target_ts`` (there is nothing to convert).
    """
    source, target = UID(source_ts), UID(target_ts)
    if source == target:
        raise ValueError(f"the data set is already in {source.name}")
    problem = _target_problem(target) or _source_problem(source)
    if problem is not None:
        raise ConversionError(source_ts, target_ts, problem)
    try:
        data = _stored_dataset(path, dataset_size)
        if source == DeflatedExplicitVRLittleEndian:
            data = _inflate(data)
        implicit = target == ImplicitVRLittleEndian
        if source in _TARGETS and source.is_implicit_VR == implicit:
            # Only deflate differs: the (inflated) bytes are already in the target encoding.
            chunks = [data]
        else:
            chunks = _reencode(data, source, implicit)
    except _Unconvertible as exc:
        raise ConversionError(source_ts, target_ts, str(exc)) from exc.__cause__
    if target == DeflatedExplicitVRLittleEndian:
        return _deflate(chunks)
    return b"".join(chunks)


def _target_problem(target: UID) -> str | None:
    if target in _TARGETS:
        return None
    if target == ExplicitVRBigEndian:
        return "conversion to Explicit VR Big Endian (retired) is not supported"
    if target.is_transfer_syntax and target.is_compressed:
        return "conversion to compressed syntaxes is not supported"
    return f"{target} is not a transfer syntax dicom-gw knows"


def _source_problem(source: UID) -> str | None:
    if source in _UNCOMPRESSED:
        return None
    try:
        decoder = get_decoder(source)
    except NotImplementedError:
        return f"no decoder for transfer syntax {source.name}"
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies)
        return f"no decoder for transfer syntax {source.name} is installed ({missing})"
    return None


def _stored_dataset(path: Path, dataset_size: int) -> bytes:
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        if dataset_size > size:
            raise _Unconvertible(
                f"stored file {path} is {size} bytes, shorter than its data set ({dataset_size})"
            )
        f.seek(size - dataset_size)
        return f.read(dataset_size)


def _inflate(data: bytes) -> bytes:
    # PS3.5 A.5: raw deflate (RFC 1951), no zlib header.
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        return inflater.decompress(data) + inflater.flush()
    except zlib.error as exc:
        raise _Unconvertible(f"cannot inflate the stored data set: {exc}") from exc


def _deflate(chunks: list[bytes]) -> bytes:
    deflater = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    out = [deflater.compress(chunk) for chunk in chunks]
    out.append(deflater.flush())
    return b"".join(out)


def _reencode(data: bytes, source: UID, implicit: bool) -> list[bytes]:
    try:
        ds = _parse(data, source)
    except Exception as exc:
        # pydicom reports malformed input with whatever exception its parser hits.
        raise _Unconvertible(f"cannot parse the stored data set: {_one_line(exc)}") from exc
    if source.is_compressed:
        _decode_pixel_data(ds, source)
    writer = _Writer(implicit, swap=not source.is_little_endian)
    try:
        writer.dataset(ds, [ds])
    except _Unconvertible:
        raise
    except Exception as exc:
        # Sequences are parsed lazily, so a malformed item surfaces only here.
        raise _Unconvertible(f"cannot re-encode the stored data set: {_one_line(exc)}") from exc
    return writer.chunks


def _parse(data: bytes, source: UID) -> Dataset:
    """The top level of the data set, values left as read.

    NOTE: not pydicom's ``read_dataset``, which guesses another encoding when the data
    looks wrong and returns an empty data set when it meets the end of the data early.
    """
    implicit, little = source.is_implicit_VR, source.is_little_endian
    found = data_element_generator(BytesIO(data), implicit, little)
    ds = Dataset({elem.tag: elem for elem in found})
    ds.set_original_encoding(implicit, little, convert_encodings(ds.get("SpecificCharacterSet")))
    return ds


def _decode_pixel_data(ds: Dataset, source: UID) -> None:
    """Decode the encapsulated Pixel Data of ``ds`` and of its items (an Icon Image
    Sequence may be encapsulated too), as pydicom's ``decompress`` does."""
    for elem in list(ds.elements()):
        if elem.VR == VR.SQ:
            for item in ds[elem.tag].value:
                _decode_pixel_data(item, source)
    if _PIXEL_DATA not in ds or not ds[_PIXEL_DATA].is_undefined_length:
        return
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = source
    try:
        # NOTE: the SOP Instance UID is kept: the C-STORE names the instance the sender
        # sent, and decoding adds no loss of its own. Lossy Image Compression stays as sent.
        decompress(ds, as_rgb=True, generate_instance_uid=False)
    except Exception as exc:
        # Decoder plugins raise whatever their codec library reports.
        raise _Unconvertible(f"cannot decode: {_one_line(exc)}") from exc
    for tag in _EXTENDED_OFFSET_TABLE:
        if tag in ds:
            del ds[tag]
    expected = get_expected_length(ds)
    decoded = len(ds.PixelData)
    if decoded != expected + expected % 2:
        raise _Unconvertible(
            f"cannot decode: the decoded pixel data is {decoded} bytes, but the Image Pixel "
            f"module describes {expected}"
        )


class _Writer:
    """Encodes a parsed data set in Implicit or Explicit VR Little Endian into ``chunks``,
    copying raw values as they were read (swapped when the source is big endian)."""

    def __init__(self, implicit: bool, swap: bool) -> None:
        self.implicit = implicit
        self.swap = swap
        self.chunks: list[bytes] = []

    def dataset(self, ds: Dataset, ancestors: list[Dataset]) -> None:
        """``ancestors`` runs from ``ds`` itself to the top-level data set."""
        for tag in sorted(ds.keys()):
            if tag.element == 0:
                # Group lengths are retired (PS3.5 7.2) and would no longer be right.
                continue
            elem = ds.get_item(tag)
            vr = _resolved_vr(ds, elem, ancestors)
            if vr == VR.SQ:
                self._sequence(tag, ds[tag].value, ancestors)
            elif isinstance(elem, RawDataElement):
                self._raw(ds, elem, vr)
            else:
                self._converted(ds, elem, vr)

    def _sequence(self, tag: BaseTag, items: list[Dataset], ancestors: list[Dataset]) -> None:
        self._header(tag, VR.SQ, _UNDEFINED_LENGTH)
        for item in items:
            self.chunks.append(_ITEM)
            self.dataset(item, [item, *ancestors])
            self.chunks.append(_ITEM_END)
        self.chunks.append(_SEQUENCE_END)

    def _raw(self, ds: Dataset, elem: RawDataElement, vr: str) -> None:
        if elem.length == _UNDEFINED_LENGTH:
            raise _Unconvertible(f"element {elem.tag} has an undefined length, not a sequence's")
        value = elem.value or b""
        if len(value) != elem.length:
            raise _Unconvertible(
                f"element {elem.tag} is cut short: {len(value)} of its {elem.length} bytes"
            )
        if self.swap:
            value = _swapped(value, _swap_width(ds, elem.tag, vr), elem.tag)
        self._header(elem.tag, vr, len(value))
        self.chunks.append(value)

    def _converted(self, ds: Dataset, elem: DataElement, vr: str) -> None:
        """An element pydicom has already decoded (or decompress replaced): pydicom
        encodes it, from its Python value."""
        elem.VR = vr
        if self.swap and isinstance(elem.value, bytes):
            elem.value = _swapped(elem.value, _swap_width(ds, elem.tag, vr), elem.tag)
        fp = DicomBytesIO()
        fp.is_little_endian = True
        fp.is_implicit_VR = self.implicit
        charset = ds.original_character_set
        write_data_element(fp, elem, charset if isinstance(charset, str) else list(charset))
        self.chunks.append(fp.getvalue())

    def _header(self, tag: BaseTag, vr: str, length: int) -> None:
        if self.implicit:
            header = struct.pack("<HHI", tag.group, tag.element, length)
        elif vr in EXPLICIT_VR_LENGTH_32:
            header = struct.pack("<HH2sHI", tag.group, tag.element, vr.encode(), 0, length)
        elif length > 0xFFFF:
            # PS3.5 6.2.2: a value too long for a 16-bit length field is sent as UN.
            header = struct.pack("<HH2sHI", tag.group, tag.element, b"UN", 0, length)
        else:
            header = struct.pack("<HH2sH", tag.group, tag.element, vr.encode(), length)
        self.chunks.append(header)


def _resolved_vr(ds: Dataset, elem: RawDataElement | DataElement, ancestors: list[Dataset]) -> str:
    vr = elem.VR
    if isinstance(elem, RawDataElement) and vr is None:
        # Read from Implicit VR: the data dictionaries know it, or it is UN.
        found: dict[str, Any] = {}
        raw_element_vr(elem, found, ds=ds)
        vr = found["VR"]
    if vr in AMBIGUOUS_VR:
        probe = DataElement(elem.tag, vr, elem.value)
        try:
            vr = correct_ambiguous_vr_element(probe, ds, True, ancestors).VR
        except AttributeError:
            # The element that decides is missing; UN is always a valid explicit VR.
            vr = VR.UN
    return vr if isinstance(vr, str) and len(vr) == 2 else VR.UN


def _swap_width(ds: Dataset, tag: BaseTag, vr: str) -> int:
    if tag == _PIXEL_DATA and vr == VR.OW:
        # 32- and 64-bit pixel cells are swapped whole, as pydicom reads them.
        return max(2, int(ds.get("BitsAllocated", 16)) // 8)
    # NOTE: UN is copied unswapped: without its real VR there is no knowing its width.
    return _SWAP_WIDTH.get(vr, 1)


def _swapped(value: bytes, width: int, tag: BaseTag) -> bytes:
    if width == 1:
        return value
    if len(value) % width:
        raise _Unconvertible(
            f"element {tag} is {len(value)} bytes, not a whole number of {width}-byte values"
        )
    return np.frombuffer(value, dtype=f"u{width}").byteswap().tobytes()


def _one_line(exc: Exception) -> str:
    # Plugin messages span lines; the reason ends up in one log line and one status message.
    return " ".join(str(exc).split()) or type(exc).__name__
