"""A data set as it was streamed into its file: its checksum, size, first bytes,
and the index attributes scanned from those."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from dicomgw._core import scan_metadata
from dicomgw.errors import MalformedDataSet

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
DEFLATED_EXPLICIT_VR_LE = "1.2.840.10008.1.2.1.99"
CHECKSUM_PREFIX = "crc32c:"


@dataclass(frozen=True, slots=True)
class ReceivedDataSet:
    """What the writer of a data set (the compiled receive stream, or an HTTP
    body reader) reports once the last byte is written."""

    crc32c: int
    size: int
    head: bytes
    """The first bytes (up to index.scan_bytes), for the metadata scan."""
    write_errno: int
    """0, or the errno of a write that failed (the file is then incomplete)."""


def encoding_of(transfer_syntax: str) -> tuple[bool, bool]:
    """(explicit VR, little endian) of a transfer syntax's data set (PS3.5 10)."""
    if transfer_syntax == IMPLICIT_VR_LE:
        return False, True
    if transfer_syntax == EXPLICIT_VR_BE:
        return True, False
    return True, True


def scan(head: bytes, size: int, transfer_syntax: str) -> dict[int, bytes]:
    """The index attributes from the first bytes of a data set."""
    explicit, little = encoding_of(transfer_syntax)
    complete = size <= len(head)
    if transfer_syntax == DEFLATED_EXPLICIT_VR_LE:
        # PS3.5 A.5: raw deflate; inflate what the head holds (the slower path).
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            head = inflater.decompress(head, 4 * len(head))
        except zlib.error as exc:
            raise MalformedDataSet(0, f"deflated data set does not inflate: {exc}") from None
        complete = complete and inflater.eof
    return scan_metadata(head, explicit, little, complete)
