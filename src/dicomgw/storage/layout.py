"""The storage root's layout: ``incoming/`` (being received), ``objects/``
(committed Part 10 files), ``quarantine/`` (kept for an operator to look at),
``deletions/`` (manifests of files to remove once their index rows are gone),
``uploads/`` (files being uploaded over HTTP, until they are taken in).

Paths of objects come from internal ids, never from peer-supplied strings
(UIDs, AE titles), so no peer can steer a write outside the root.
"""

from __future__ import annotations

import os
import pwd
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from dicomgw.errors import DicomGwError, StorageNotWritable

DIR_MODE = 0o750
FILE_MODE = 0o640


@dataclass(frozen=True)
class StorageLayout:
    root: Path

    @property
    def incoming(self) -> Path:
        return self.root / "incoming"

    @property
    def objects(self) -> Path:
        return self.root / "objects"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    @property
    def deletions(self) -> Path:
        """Manifests of deleted studies' files (storage/deletions.py)."""
        return self.root / "deletions"

    @property
    def uploads(self) -> Path:
        """Uploaded files being received (uploads/store.py), named by upload id."""
        return self.root / "uploads"


class StoredFileMissing(DicomGwError):
    def __init__(self, relative: str, reason: str) -> None:
        self.relative = relative
        super().__init__(f"stored file {relative} cannot be read: {reason}")


def stored_path(root: Path, relative: str) -> Path:
    """``relative`` (an index ``file_path``) under the storage root.

    NOTE: index paths are built from internal ids; this refuses any that would
    leave the root all the same, since files are read and removed by them.
    """
    parts = PurePosixPath(relative).parts
    if not parts or PurePosixPath(relative).is_absolute() or ".." in parts:
        raise StoredFileMissing(relative, "not a path inside the storage root")
    return root.joinpath(*parts)


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def prepare_storage(root: Path) -> StorageLayout:
    """Create the layout (0750 directories) and prove each part is writable."""
    layout = StorageLayout(root)
    for path in (
        layout.root,
        layout.incoming,
        layout.objects,
        layout.quarantine,
        layout.deletions,
        layout.uploads,
    ):
        try:
            path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageNotWritable(str(path), _user(), exc.strerror or str(exc)) from None
        _probe_write(path)
    return layout


def _probe_write(path: Path) -> None:
    probe = path / f".probe-{uuid.uuid4().hex}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise StorageNotWritable(str(path), _user(), exc.strerror or str(exc)) from None
