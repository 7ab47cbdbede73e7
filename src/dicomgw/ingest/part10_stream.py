"""A Part 10 file arriving as a byte stream (a STOW-RS part, an uploaded file)
into ingest: its File Meta read once it is whole, then the data set streamed
into the admitted file as it comes, checksummed on the way, with its first
bytes kept for the metadata scan. Memory stays flat whatever the file's size.

The sender's File Meta is not kept: dicom-gw writes its own (as for C-STORE);
the data set bytes are stored exactly as received.
"""

from __future__ import annotations

import errno
import os
import struct

from dicomgw._core import crc32c
from dicomgw.dimse.status import CANNOT_UNDERSTAND, OUT_OF_RESOURCES
from dicomgw.ingest.dataset import ReceivedDataSet
from dicomgw.ingest.service import Admission, Ingest, Refused, Result
from dicomgw.ingest.source import Source
from dicomgw.storage.part10 import MAGIC, PREAMBLE_LENGTH

_GROUP_LENGTH_AT = PREAMBLE_LENGTH + 4
"""Where the File Meta starts: after the preamble and DICM."""
MAX_META_BYTES = 65536
"""A File Meta group longer than this is refused: real ones are a few hundred bytes."""
# PS3.5 7.1.2: VRs with a 4-byte length after two reserved bytes.
_LONG_VRS = frozenset((b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"))


class Part10Stream:
    """One Part 10 file, fed in pieces: :meth:`feed`, then :meth:`finish` (or
    :meth:`abandon` when the stream breaks off)."""

    def __init__(self, ingest: Ingest, source: Source, *, study_instance_uid: str | None) -> None:
        self._ingest = ingest
        self._source = source
        self._study = study_instance_uid
        self._header = bytearray()
        self._admission: Admission | None = None
        self._failed: Result | None = None
        self._crc = 0
        self._size = 0
        self._head = bytearray()
        self._errno = 0
        self.sop_class_uid: str | None = None
        self.sop_instance_uid: str | None = None

    def feed(self, data: bytes | memoryview) -> None:
        if self._failed is not None:
            return
        if self._admission is None:
            self._header += data
            data = self._open()
            if self._admission is None:
                return
        self._write(data)

    def _open(self) -> bytes:
        """With the whole File Meta at hand: admit the instance; the data set bytes
        that came with the header.

        The File Meta is walked element by element (explicit VR little endian,
        PS3.10 7.1) up to the first element of another group, rather than trusted
        to its group length: files written without (0002,0000) are common and
        harmless, since dicom-gw writes its own File Meta anyway.
        """
        header = self._header
        if len(header) < _GROUP_LENGTH_AT:
            return b""
        if header[PREAMBLE_LENGTH:_GROUP_LENGTH_AT] != MAGIC:
            return self._fail(CANNOT_UNDERSTAND, "not a DICOM Part 10 file (no 'DICM')")
        values: dict[int, bytes] = {}
        pos = _GROUP_LENGTH_AT
        while True:
            if pos > _GROUP_LENGTH_AT + MAX_META_BYTES:
                return self._fail(CANNOT_UNDERSTAND, "a File Meta over 64 KiB")
            if len(header) < pos + 8:
                return b""
            group, element, vr = struct.unpack_from("<HH2s", header, pos)
            if group != 0x0002:
                break
            if vr in _LONG_VRS:
                if len(header) < pos + 12:
                    return b""
                (length,) = struct.unpack_from("<I", header, pos + 8)
                start = pos + 12
            else:
                (length,) = struct.unpack_from("<H", header, pos + 6)
                start = pos + 8
            if length > MAX_META_BYTES:
                return self._fail(CANNOT_UNDERSTAND, f"File Meta element of {length} bytes")
            if len(header) < start + length:
                return b""
            values[element] = bytes(header[start : start + length])
            pos = start + length
        missing = [f"(0002,{e:04X})" for e in (0x0002, 0x0003, 0x0010) if e not in values]
        if missing:
            return self._fail(CANNOT_UNDERSTAND, f"File Meta lacks {', '.join(missing)}")

        def uid(element: int) -> str:
            return values[element].rstrip(b"\x00 ").decode("ascii", "replace")

        self.sop_class_uid, self.sop_instance_uid = uid(0x0002), uid(0x0003)
        self._admission = self._ingest.begin(
            self._source,
            self.sop_class_uid,
            self.sop_instance_uid,
            uid(0x0010),
            study_instance_uid=self._study,
        )
        rest = bytes(header[pos:])
        self._header = bytearray()
        if isinstance(self._admission, Refused):
            self._failed = self._admission.result
            self._admission = None
            return b""
        return rest

    def _write(self, data: bytes | memoryview) -> None:
        if not data:
            return
        admission = self._admission
        assert admission is not None
        self._crc = crc32c(data, self._crc)
        self._size += len(data)
        room = self._ingest.head_bytes - len(self._head)
        if room > 0:
            self._head += data[:room]
        if self._errno:
            return
        # PERF: a write to the page cache, on the event loop; the fsync that makes it
        # durable runs in a commit thread, as for C-STORE.
        view = memoryview(data)
        try:
            while view:
                written = os.write(admission.fd, view)
                view = view[written:]
        except OSError as exc:
            self._errno = exc.errno or errno.EIO

    def _fail(self, status: int, comment: str) -> bytes:
        self._failed = self._ingest.refuse(status, comment).result
        self._header = bytearray()
        return b""

    async def finish(self) -> Result:
        """The stream ended here: the instance stored (or why not)."""
        if self._failed is not None:
            return self._failed
        if self._admission is None:
            return self._ingest.refuse(
                CANNOT_UNDERSTAND, "the part ends before its DICOM File Meta is complete"
            ).result
        dataset = ReceivedDataSet(self._crc, self._size, bytes(self._head), self._errno)
        try:
            return await self._admission.finish(dataset)
        except OSError as exc:  # pragma: no cover - finish reports its own failures
            return Result(OUT_OF_RESOURCES, str(exc))

    def abandon(self) -> None:
        """The stream broke off: nothing of this file stays."""
        if self._admission is not None:
            self._admission.abandon()
            self._admission = None
