"""A ZIP archive written as a stream: no temporary file, never whole in memory.

Each member is a local header, its bytes as they are read, then a data
descriptor with the CRC-32 and sizes (general purpose flag bit 3), since the
CRC is only known once the bytes have gone out. Members are stored, not
deflated: DICOM pixel data is mostly compressed already or barely shrinks, and
deflating would cost a core per download. ZIP64 fields are written only where a
size, an offset or the member count needs them (APPNOTE.TXT 6.3.10, 4.3.9,
4.3.14-16, 4.5.3), so small archives open in any unzip. Only the central
directory (about 100 bytes a member) is kept until the end.
"""

from __future__ import annotations

import datetime as dt
import struct
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

# A size or offset from this value on does not fit a 32-bit field: the field
# holds the marker instead and the value goes into a ZIP64 record. Likewise for
# the member count's 16-bit fields.
ZIP64_LIMIT = MARKER_32 = 0xFFFFFFFF
ZIP64_COUNT_LIMIT = MARKER_16 = 0xFFFF

LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")
DESCRIPTOR_32 = struct.Struct("<IIII")
DESCRIPTOR_64 = struct.Struct("<IIQQ")
CENTRAL_HEADER = struct.Struct("<IHHHHHHIIIHHHHHII")
END_64 = struct.Struct("<IQHHIIQQQQ")
LOCATOR_64 = struct.Struct("<IIQI")
END = struct.Struct("<IHHHHIIH")

FLAG_DATA_DESCRIPTOR = 0x0008
STORED = 0
VERSION_DEFAULT = 20
VERSION_ZIP64 = 45
MADE_BY_UNIX = 3 << 8 | VERSION_ZIP64
FILE_ATTRIBUTES = 0o100644 << 16
ZIP64_EXTRA_ID = 0x0001


class Source(Protocol):
    """A member's bytes: its size is known when opened (it decides ZIP64)."""

    size: int

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    """ASCII, '/'-separated, relative; the caller makes it safe."""
    modified: dt.datetime
    open: Callable[[], Awaitable[Source]]
    """Called when the member's turn comes, so only one source is open at a time."""


@dataclass(frozen=True, slots=True)
class _Written:
    name: bytes
    dos_time: int
    dos_date: int
    crc: int
    size: int
    offset: int
    zip64_local: bool


def _dos_datetime(when: dt.datetime) -> tuple[int, int]:
    """(time, date) in MS-DOS format; ZIP dates start in 1980."""
    when = max(when.astimezone(dt.UTC).replace(tzinfo=None), dt.datetime(1980, 1, 1))
    return (
        when.hour << 11 | when.minute << 5 | when.second // 2,
        (when.year - 1980) << 9 | when.month << 5 | when.day,
    )


def _local_header(name: bytes, dos_time: int, dos_date: int, zip64: bool) -> bytes:
    # NOTE: with a data descriptor the header's CRC and sizes are zero; a ZIP64
    # member says so with 0xFFFFFFFF sizes and an extra field of zero sizes.
    extra = struct.pack("<HHQQ", ZIP64_EXTRA_ID, 16, 0, 0) if zip64 else b""
    marker = MARKER_32 if zip64 else 0
    return (
        LOCAL_HEADER.pack(
            0x04034B50,
            VERSION_ZIP64 if zip64 else VERSION_DEFAULT,
            FLAG_DATA_DESCRIPTOR,
            STORED,
            dos_time,
            dos_date,
            0,
            marker,
            marker,
            len(name),
            len(extra),
        )
        + name
        + extra
    )


def _descriptor(crc: int, size: int, zip64: bool) -> bytes:
    if zip64:
        return DESCRIPTOR_64.pack(0x08074B50, crc, size, size)
    return DESCRIPTOR_32.pack(0x08074B50, crc, size, size)


def _central_header(m: _Written) -> bytes:
    # The ZIP64 extra field holds, in this order, only the values whose 32-bit
    # field is the 0xFFFFFFFF marker (APPNOTE 4.5.3).
    big_size = m.size >= ZIP64_LIMIT
    big_offset = m.offset >= ZIP64_LIMIT
    values = [m.size, m.size] if big_size else []
    values += [m.offset] if big_offset else []
    extra = (
        struct.pack(f"<HH{len(values)}Q", ZIP64_EXTRA_ID, 8 * len(values), *values)
        if values
        else b""
    )
    version = VERSION_ZIP64 if values or m.zip64_local else VERSION_DEFAULT
    size32 = MARKER_32 if big_size else m.size
    return (
        CENTRAL_HEADER.pack(
            0x02014B50,
            MADE_BY_UNIX,
            version,
            FLAG_DATA_DESCRIPTOR,
            STORED,
            m.dos_time,
            m.dos_date,
            m.crc,
            size32,
            size32,
            len(m.name),
            len(extra),
            0,
            0,
            0,
            FILE_ATTRIBUTES,
            MARKER_32 if big_offset else m.offset,
        )
        + m.name
        + extra
    )


def _end(count: int, directory_offset: int, directory_size: int) -> bytes:
    many = count >= ZIP64_COUNT_LIMIT
    far = directory_offset >= ZIP64_LIMIT
    big = directory_size >= ZIP64_LIMIT
    end = b""
    if many or far or big:
        end_64_offset = directory_offset + directory_size
        end = END_64.pack(
            0x06064B50, END_64.size - 12, MADE_BY_UNIX, VERSION_ZIP64, 0, 0,
            count, count, directory_size, directory_offset,
        ) + LOCATOR_64.pack(0x07064B50, 0, end_64_offset, 1)  # fmt: skip
    count16 = MARKER_16 if many else count
    return end + END.pack(
        0x06054B50,
        0,
        0,
        count16,
        count16,
        MARKER_32 if big else directory_size,
        MARKER_32 if far else directory_offset,
        0,
    )


class ZipStream:
    """The archive of ``members`` as an async iterator of byte chunks, for
    ``resp.stream``; ``close`` (Falcon calls it, also when the client goes away)
    closes the member being read."""

    def __init__(self, members: Iterable[Member]) -> None:
        self._chunks = self._generate(members)

    def __aiter__(self) -> ZipStream:
        return self

    async def __anext__(self) -> bytes:
        return await anext(self._chunks)

    async def close(self) -> None:
        await self._chunks.aclose()

    async def _generate(self, members: Iterable[Member]) -> AsyncGenerator[bytes, None]:
        written: list[_Written] = []
        offset = 0
        for member in members:
            name = member.name.encode("ascii")
            dos_time, dos_date = _dos_datetime(member.modified)
            source = await member.open()
            try:
                zip64 = source.size >= ZIP64_LIMIT
                header = _local_header(name, dos_time, dos_date, zip64)
                yield header
                crc, size = 0, 0
                async for chunk in source:
                    crc = zlib.crc32(chunk, crc)
                    size += len(chunk)
                    yield chunk
            finally:
                await source.close()
            if size >= ZIP64_LIMIT and not zip64:
                raise ValueError(f"{member.name} grew past 4 GiB while being archived")
            descriptor = _descriptor(crc, size, zip64)
            yield descriptor
            written.append(_Written(name, dos_time, dos_date, crc, size, offset, zip64))
            offset += len(header) + size + len(descriptor)
        directory_size = 0
        for m in written:
            entry = _central_header(m)
            directory_size += len(entry)
            yield entry
        yield _end(len(written), offset, directory_size)
