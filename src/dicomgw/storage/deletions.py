"""Removing a deleted study's files only once its index rows are gone for good.

Files are removed after the DELETE commits, never before: a file is never lost
while its rows may still come back. But a crash between COMMIT and the removal
would leave orphan files, and start-up recovery indexes the orphans it finds in
recent day directories: the study would come back. So before COMMIT the files
are listed in a manifest, ``<storage root>/deletions/<uuid>.json`` (written,
fsynced, renamed into place), and after the transaction, whatever its outcome,
the manifest is *settled*: the index is asked which of the files it still holds
(``STILL_INDEXED``, which waits for a delete still in flight), the others are
removed, their directories fsynced, then the manifest. The answer comes from the
index, not from what the caller believes happened, so the same step is right
after a COMMIT, after a failed or lost COMMIT, and at the next start (recovery
settles the manifests it finds before looking for orphans).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from dicomgw.errors import DicomGwError
from dicomgw.storage.layout import DIR_MODE, FILE_MODE, stored_path
from dicomgw.storage.spool import fsync_dir

DIRECTORY = "deletions"
SUFFIX = ".json"

# NOTE: FOR KEY SHARE conflicts with DELETE: a row that a transaction still in
# flight has deleted is waited for, then reported only if that transaction
# rolled back.
STILL_INDEXED = "SELECT file_path FROM instances WHERE file_path = ANY($1::text[]) FOR KEY SHARE"

StillIndexed = Callable[[list[str]], Awaitable[set[str]]]
"""The subset of these file paths that index rows still point to (STILL_INDEXED)."""


class FilesNotRemoved(DicomGwError):
    def __init__(self, manifest: Path, failures: int, first: str) -> None:
        super().__init__(
            f"{failures} deleted file(s) could not be removed (first: {first}); "
            f"{manifest} is kept and settled again at the next start"
        )


@dataclass(frozen=True, slots=True)
class Manifest:
    path: Path
    files: tuple[str, ...]


async def write(root: Path, files: Sequence[str], *, fsync: bool) -> Manifest:
    """Durably list ``files`` (index file paths) before the deleting COMMIT."""
    return await asyncio.to_thread(_write, root / DIRECTORY, tuple(files), fsync)


def _write(directory: Path, files: tuple[str, ...], fsync: bool) -> Manifest:
    if not directory.is_dir():
        directory.mkdir(mode=DIR_MODE, exist_ok=True)
        if fsync:
            fsync_dir(directory.parent)
    name = uuid.uuid4().hex
    temporary, final = directory / f"{name}.tmp", directory / f"{name}{SUFFIX}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        try:
            view = memoryview(orjson.dumps({"files": files}))
            while view:
                view = view[os.write(fd, view) :]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        # A crash before the rename leaves a .tmp that no settling reads: its
        # transaction cannot have committed, since the rename comes first.
        os.rename(temporary, final)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(directory)
    return Manifest(final, files)


async def settle(
    root: Path, manifest: Manifest, still_indexed: StillIndexed, *, fsync: bool
) -> int:
    """Remove the manifest's files that no index row points to, then the
    manifest; the number of files removed."""
    indexed = await still_indexed(list(manifest.files))
    gone = [f for f in manifest.files if f not in indexed]
    return await asyncio.to_thread(_remove, root, manifest.path, gone, fsync)


def _remove(root: Path, manifest: Path, files: list[str], fsync: bool) -> int:
    directories: set[Path] = set()
    failures: list[str] = []
    removed = 0
    for relative in files:
        try:
            path = stored_path(root, relative)
            path.unlink()
            directories.add(path.parent)
            removed += 1
        except FileNotFoundError:
            continue
        except (OSError, DicomGwError) as exc:
            failures.append(f"{relative}: {exc}")
    if fsync:
        # The removals must be durable before the manifest that redoes them goes.
        for directory in directories:
            fsync_dir(directory)
    if failures:
        raise FilesNotRemoved(manifest, len(failures), failures[0])
    manifest.unlink()
    return removed


def pending(directory: Path) -> list[Manifest]:
    """The manifests left by deletions that were interrupted; stray ``.tmp`` files
    (their transaction cannot have committed) are removed."""
    for temporary in directory.glob("*.tmp"):
        temporary.unlink(missing_ok=True)
    found = []
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        try:
            files = orjson.loads(path.read_bytes())["files"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise DicomGwError(
                f"deletion manifest {path} is damaged ({exc}); move it aside after "
                "checking which of its study's files still exist"
            ) from None
        found.append(Manifest(path, tuple(str(f) for f in files)))
    return found
