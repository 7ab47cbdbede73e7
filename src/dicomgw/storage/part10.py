"""DICOM Part 10 files (PS3.10 7.1): 128-byte preamble, ``DICM``, the File Meta
group (0002,xxxx) in Explicit VR Little Endian, then the data set bytes exactly
as received.

The header is built once per instance in Python (a few hundred bytes); the data
set bytes that follow are streamed by the compiled core. :func:`parse_file_meta`
reads a header back: it verifies what was written and what recovery finds.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from dicomgw._core import crc32c
from dicomgw.errors import DicomGwError
from dicomgw.ul.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, is_valid_uid

PREAMBLE_LENGTH = 128
MAGIC = b"DICM"
FILE_META_VERSION = b"\x00\x01"


class InvalidPart10(DicomGwError):
    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(f"not a valid DICOM Part 10 header: {problem}")


@dataclass(frozen=True, slots=True)
class FileMeta:
    media_storage_sop_class_uid: str
    media_storage_sop_instance_uid: str
    transfer_syntax_uid: str
    implementation_class_uid: str
    source_ae_title: str | None
    dataset_offset: int
    """Where the data set starts in the file."""


def _short(tag_element: int, vr: bytes, value: bytes) -> bytes:
    """An element with a 2-byte length (PS3.5 7.1.2), group 0002."""
    return struct.pack("<HH2sH", 0x0002, tag_element, vr, len(value)) + value


def _uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def _text(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b" " if len(raw) % 2 else raw


def build_header(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, source_ae_title: str
) -> bytes:
    """Preamble + DICM + File Meta for one instance (PS3.10 7.1 Table 7.1-1)."""
    for name, uid in (
        ("SOP Class UID", sop_class_uid),
        ("SOP Instance UID", sop_instance_uid),
        ("Transfer Syntax UID", transfer_syntax_uid),
    ):
        if not is_valid_uid(uid):
            raise InvalidPart10(f"{name} {uid!r} is not a valid UID")
    body = b"".join(
        (
            # (0002,0001) OB has a 4-byte length after two reserved bytes.
            struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2) + FILE_META_VERSION,
            _short(0x0002, b"UI", _uid(sop_class_uid)),
            _short(0x0003, b"UI", _uid(sop_instance_uid)),
            _short(0x0010, b"UI", _uid(transfer_syntax_uid)),
            _short(0x0012, b"UI", _uid(IMPLEMENTATION_CLASS_UID)),
            _short(0x0013, b"SH", _text(IMPLEMENTATION_VERSION_NAME)),
            _short(0x0016, b"AE", _text(source_ae_title.strip() or "UNKNOWN")),
        )
    )
    group_length = _short(0x0000, b"UL", struct.pack("<I", len(body)))
    return bytes(PREAMBLE_LENGTH) + MAGIC + group_length + body


_LONG_VRS = frozenset((b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"))


def parse_file_meta(data: bytes) -> FileMeta:
    """Read back a Part 10 header: preamble, DICM, a well-formed group 0002.

    ``data`` must hold at least the whole header (the first few KiB of a file).
    """
    if len(data) < PREAMBLE_LENGTH + 4 or data[PREAMBLE_LENGTH : PREAMBLE_LENGTH + 4] != MAGIC:
        raise InvalidPart10("no 'DICM' after the 128-byte preamble")
    pos = PREAMBLE_LENGTH + 4
    values: dict[int, bytes] = {}
    end: int | None = None
    while end is None or pos < end:
        if pos + 8 > len(data):
            raise InvalidPart10(f"file meta runs past the data at offset {pos}")
        group, element, vr = struct.unpack_from("<HH2s", data, pos)
        if group != 0x0002:
            if end is None:
                raise InvalidPart10("no (0002,0000) File Meta Information Group Length")
            break
        if vr in _LONG_VRS:
            if pos + 12 > len(data):
                raise InvalidPart10(f"file meta runs past the data at offset {pos}")
            (length,) = struct.unpack_from("<I", data, pos + 8)
            start = pos + 12
        else:
            (length,) = struct.unpack_from("<H", data, pos + 6)
            start = pos + 8
        if start + length > len(data):
            raise InvalidPart10(f"element (0002,{element:04X}) runs past the data")
        values[element] = data[start : start + length]
        if element == 0x0000:
            if vr != b"UL" or length != 4:
                raise InvalidPart10("(0002,0000) is not a UL of 4 bytes")
            end = start + 4 + struct.unpack_from("<I", data, start)[0]
        pos = start + length
    if end is None or pos != end:
        raise InvalidPart10("the group length does not match the elements of group 0002")
    missing = [f"(0002,{e:04X})" for e in (0x0002, 0x0003, 0x0010, 0x0012) if e not in values]
    if missing:
        raise InvalidPart10(f"required file meta elements missing: {', '.join(missing)}")

    def text(element: int) -> str:
        return values[element].rstrip(b"\x00 ").decode("ascii", "replace")

    return FileMeta(
        media_storage_sop_class_uid=text(0x0002),
        media_storage_sop_instance_uid=text(0x0003),
        transfer_syntax_uid=text(0x0010),
        implementation_class_uid=text(0x0012),
        source_ae_title=text(0x0016) if 0x0016 in values else None,
        dataset_offset=end,
    )


def dataset_crc32c(path: Path, dataset_size: int) -> int:
    """CRC-32C of a stored file's last ``dataset_size`` bytes (its data set, as
    received), mapped, not copied. ValueError if the file is shorter."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if dataset_size > size:
            raise ValueError(f"file is {size} bytes, shorter than its data set")
        if dataset_size == 0:
            return crc32c(b"")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            try:
                return crc32c(view[size - dataset_size :])
            finally:
                view.release()
