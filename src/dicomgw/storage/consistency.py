"""Index against storage: what ``dicom-gw storage check`` reports.

Kinds of trouble, none of which the gateway can repair alone: ``missing``
(an index row whose file is gone: its downloads and forwards fail),
``wrong-size`` (a file whose size is not the one indexed: truncated or
overwritten), ``damaged`` (with checksums: the data set's CRC-32C is not the
one recorded at ingest), ``unindexed`` (a file under ``objects/`` that no row
points to: not searchable, not forwarded). Files younger than ``settle_s`` are left out
of ``unindexed``: a running receiver renames a file into place before its
index COMMIT, and start-up recovery settles what a crash left.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from dicomgw.storage.layout import StorageLayout
from dicomgw.storage.part10 import dataset_crc32c
from dicomgw.storage.spool import OBJECT_SUFFIX

SETTLE_S = 3600.0
KINDS = ("missing", "wrong-size", "damaged", "unindexed")
CRC32C_PREFIX = "crc32c:"


@dataclass(frozen=True, slots=True)
class Problem:
    kind: str
    file_path: str
    detail: str = ""


@dataclass(slots=True)
class Report:
    indexed: int = 0
    files: int = 0
    checksummed: int = 0
    problems: list[Problem] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Indexed:
    """What the index holds of one stored file."""

    file_path: str
    """Relative to the storage root."""
    size_bytes: int
    dataset_size: int
    checksum: str


def check(
    layout: StorageLayout,
    rows: Iterable[Indexed],
    *,
    now: float,
    checksums: bool = False,
    settle_s: float = SETTLE_S,
) -> Report:
    """Every indexed file against the disk (its size; with ``checksums`` its
    data set's CRC-32C too, reading every byte), then the files no row names."""
    report = Report()
    indexed: set[str] = set()
    for row in rows:
        report.indexed += 1
        indexed.add(row.file_path)
        path = layout.root / row.file_path
        try:
            found = os.stat(path).st_size
        except FileNotFoundError:
            report.problems.append(Problem("missing", row.file_path))
            continue
        if found != row.size_bytes:
            report.problems.append(
                Problem("wrong-size", row.file_path, f"{found} bytes, indexed as {row.size_bytes}")
            )
            continue
        if checksums and row.checksum.startswith(CRC32C_PREFIX):
            report.checksummed += 1
            actual = f"{CRC32C_PREFIX}{dataset_crc32c(path, row.dataset_size):08x}"
            if actual != row.checksum:
                report.problems.append(
                    Problem("damaged", row.file_path, f"{actual}, recorded {row.checksum}")
                )
    for directory, _, names in os.walk(layout.objects):
        for name in names:
            if not name.endswith(OBJECT_SUFFIX):
                continue
            report.files += 1
            found_path = os.path.join(directory, name)
            relative = os.path.relpath(found_path, layout.root)
            if relative in indexed:
                continue
            try:
                if now - os.stat(found_path).st_mtime < settle_s:
                    continue
            except FileNotFoundError:
                continue  # removed meanwhile (a study deletion)
            report.problems.append(Problem("unindexed", relative))
    return report
