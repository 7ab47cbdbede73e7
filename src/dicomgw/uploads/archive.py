"""ZIP archives of an upload, expanded within limits.

The whole central directory is checked before anything is read out: its size
(before zipfile makes an object of each entry), how many entries, their declared
sizes in all, each entry's compression ratio (a ZIP bomb's is in the thousands),
encryption, compression methods, and names that would lead out of the archive
(refused even though nothing is written by entry name: such an archive was made
to attack something).

zipfile reads an entry only up to its declared size and checks its CRC at the
end, so the declared sizes bound what comes out: an entry whose data is longer
than declared fails with BadZipFile (one whose data is shorter ends sooner).
"""

from __future__ import annotations

import os
import re
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from types import TracebackType
from typing import IO

RATIO_EXEMPT_BYTES = 1 << 20
"""Entries smaller than this are not held to the ratio (tiny files compress oddly)."""
DIRECTORY_BYTES_PER_ENTRY = 2048
"""A central directory entry is 46 bytes, its name and extra fields; 2 KiB each
is generous for real archives and bounds what zipfile parses for a forged one."""
METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}
"""What every archiver writes by default. bzip2 and lzma (which zipfile could
read) are refused to keep the decoders an attacker reaches few; Deflate64, which
Windows uses over 2 GiB, zipfile cannot read."""
READ_ERRORS = (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error)
"""What reading an entry raises if its bytes do not match the central directory
(a damaged or forged archive passes the checks of the directory alone)."""
# General purpose flag bits (APPNOTE 4.4.4): encrypted, strong encryption; patched.
_ENCRYPTED = 0x1 | 0x40
_PATCHED = 0x20
SKIPPED_NAMES = frozenset(("dicomdir", ".ds_store", "thumbs.db", "desktop.ini"))
"""Not data: DICOMDIR indexes the files beside it, which are taken in themselves."""


class ArchiveError(Exception):
    """Why an archive is refused, in words for the uploader."""


@dataclass(frozen=True, slots=True)
class ArchiveLimits:
    max_entries: int = 10_000
    max_total_bytes: int = 8 << 30
    """Declared uncompressed sizes of all entries together."""
    max_ratio: int = 200
    """Uncompressed / compressed, of each entry of RATIO_EXEMPT_BYTES or more."""
    max_entry_bytes: int = 4 << 30


@dataclass(frozen=True, slots=True)
class Entry:
    name: str
    """The entry's path in the archive, with '/' between folders."""
    size: int
    """Declared uncompressed size: open() gives at most this many bytes."""
    _zip: zipfile.ZipFile
    _info: zipfile.ZipInfo

    def open(self) -> IO[bytes]:
        """The entry's bytes; opening or reading raise one of READ_ERRORS if they do
        not match the directory. Several may be open at once, in several threads."""
        return self._zip.open(self._info)


class Archive:
    def __init__(self, path: str | os.PathLike[str], limits: ArchiveLimits) -> None:
        try:
            with open(path, "rb") as f:
                directory = _directory_bytes(f)
            if directory > limits.max_entries * DIRECTORY_BYTES_PER_ENTRY:
                raise ArchiveError(
                    f"the central directory is {directory} bytes: more entries than the"
                    f" {limits.max_entries} taken"
                )
            self._zip = zipfile.ZipFile(path)
        except (*READ_ERRORS, struct.error, NotImplementedError) as exc:
            raise ArchiveError(f"not a readable ZIP archive: {exc}") from None
        try:
            self._entries = _checked(self._zip.infolist(), limits)
        except ArchiveError:
            self._zip.close()
            raise

    def entries(self) -> Iterator[Entry]:
        """The files, at any depth; not folders, DICOMDIR or what operating systems
        leave in archives (__MACOSX/, ._*, .DS_Store, Thumbs.db)."""
        for name, info in self._entries:
            yield Entry(name, info.file_size, self._zip, info)

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def open_archive(path: str | os.PathLike[str], limits: ArchiveLimits) -> Archive:
    """The archive, checked whole (ArchiveError: why it is refused)."""
    return Archive(path, limits)


def _directory_bytes(f: IO[bytes]) -> int:
    """The central directory's declared size, which zipfile reads and parses into
    an object per entry, found as zipfile finds it: the end of central directory
    record (APPNOTE 4.3.16) last in the file or before a comment of up to 64 KiB,
    and a ZIP64 end record (4.3.14) with its locator (4.3.15) just before it."""
    end = f.seek(0, os.SEEK_END)
    start = max(0, end - 22 - (1 << 16) - 20 - 56)
    f.seek(start)
    tail = f.read()
    at = len(tail) - 22
    if at < 0 or tail[at : at + 4] != b"PK\x05\x06" or tail[-2:] != b"\0\0":
        at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        raise ArchiveError("not a readable ZIP archive: no end of central directory record")
    size: int = struct.unpack_from("<I", tail, at + 12)[0]
    locator, record = at - 20, at - 20 - 56
    zip64 = tail[locator : locator + 4] == b"PK\x06\x07"
    if record >= 0 and zip64 and tail[record : record + 4] == b"PK\x06\x06":
        size = struct.unpack_from("<Q", tail, record + 40)[0]
    return size


def _checked(
    infos: list[zipfile.ZipInfo], limits: ArchiveLimits
) -> list[tuple[str, zipfile.ZipInfo]]:
    """The entries to take, with their names normalized; ArchiveError if any entry
    is over a limit or unsafe, whether it would be taken or not."""
    if len(infos) > limits.max_entries:
        raise ArchiveError(f"{len(infos)} entries; at most {limits.max_entries} are taken")
    total = 0
    taken = []
    for info in infos:
        # orig_filename: zipfile's filename is cut at a NUL. Some Windows archivers
        # write '\' between folders.
        name = info.orig_filename.replace("\\", "/")
        shown = repr(info.orig_filename[:120])
        if _escapes(name):
            raise ArchiveError(f"entry {shown} names a path outside the archive")
        if info.flag_bits & _ENCRYPTED:
            raise ArchiveError(f"entry {shown} is encrypted")
        if info.flag_bits & _PATCHED:
            raise ArchiveError(f"entry {shown} is compressed patched data")
        if info.compress_type not in METHODS:
            raise ArchiveError(
                f"entry {shown} uses compression method {info.compress_type}"
                f" (only {' and '.join(METHODS.values())} are taken)"
            )
        if info.file_size > limits.max_entry_bytes:
            raise ArchiveError(
                f"entry {shown} is {info.file_size} bytes; at most {limits.max_entry_bytes}"
            )
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size >= RATIO_EXEMPT_BYTES and ratio > limits.max_ratio:
            raise ArchiveError(
                f"entry {shown} expands {ratio:.0f} times (at most {limits.max_ratio}): a ZIP bomb?"
            )
        total += info.file_size
        if not _skipped(name):
            taken.append((name, info))
    if total > limits.max_total_bytes:
        raise ArchiveError(
            f"the entries hold {total} bytes uncompressed; at most {limits.max_total_bytes}"
        )
    return taken


def _escapes(name: str) -> bool:
    """Absolute, with a drive letter, with a '..' part, or with a NUL (which some
    C code would take as the end of the name)."""
    return (
        "\x00" in name
        or name.startswith("/")
        or re.match(r"[A-Za-z]:", name) is not None
        or ".." in PurePosixPath(name).parts
    )


def _skipped(name: str) -> bool:
    parts = [part.lower() for part in PurePosixPath(name).parts]
    if name.endswith("/") or not parts:
        return True
    base = parts[-1]
    return "__macosx" in parts[:-1] or base.startswith("._") or base in SKIPPED_NAMES
