"""Index against storage: what ``dicom-gw storage check`` reports.

Three kinds of trouble, each of which the gateway cannot repair alone:
``missing`` (an index row whose file is gone: its downloads and forwards fail),
``wrong-size`` (a file whose size is not the one indexed: truncated or
overwritten), ``unindexed`` (a file under ``objects/`` that no row points to:
not searchable, not forwarded). Files younger than ``settle_s`` are left out
of ``unindexed``: a running receiver renames a file into place before its
index COMMIT, and start-up recovery settles what a crash left.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from dicomgw.storage.layout import StorageLayout
from dicomgw.storage.spool import OBJECT_SUFFIX

SETTLE_S = 3600.0
KINDS = ("missing", "wrong-size", "unindexed")


@dataclass(frozen=True, slots=True)
class Problem:
    kind: str
    file_path: str
    detail: str = ""


@dataclass(slots=True)
class Report:
    indexed: int = 0
    files: int = 0
    problems: list[Problem] = field(default_factory=list)


def check(
    layout: StorageLayout,
    rows: Iterable[tuple[str, int]],
    *,
    now: float,
    settle_s: float = SETTLE_S,
) -> Report:
    """``rows``: (file path relative to the storage root, size in bytes) of every
    indexed instance."""
    report = Report()
    indexed: set[str] = set()
    for file_path, size in rows:
        report.indexed += 1
        indexed.add(file_path)
        try:
            found = os.stat(layout.root / file_path).st_size
        except FileNotFoundError:
            report.problems.append(Problem("missing", file_path))
            continue
        if found != size:
            report.problems.append(
                Problem("wrong-size", file_path, f"{found} bytes, indexed as {size}")
            )
    for directory, _, names in os.walk(layout.objects):
        for name in names:
            if not name.endswith(OBJECT_SUFFIX):
                continue
            report.files += 1
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, layout.root)
            if relative in indexed:
                continue
            try:
                if now - os.stat(path).st_mtime < settle_s:
                    continue
            except FileNotFoundError:
                continue  # removed meanwhile (a study deletion)
            report.problems.append(Problem("unindexed", relative))
    return report
