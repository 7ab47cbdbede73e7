"""The storage root's layout: ``incoming/`` (being received), ``objects/``
(committed Part 10 files), ``quarantine/`` (kept for an operator to look at).

Paths of objects come from internal ids, never from peer-supplied strings
(UIDs, AE titles), so no peer can steer a write outside the root.
"""

from __future__ import annotations

import os
import pwd
import uuid
from dataclasses import dataclass
from pathlib import Path

from dicomgw.errors import StorageNotWritable

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


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def prepare_storage(root: Path) -> StorageLayout:
    """Create the layout (0750 directories) and prove each part is writable."""
    layout = StorageLayout(root)
    for path in (layout.root, layout.incoming, layout.objects, layout.quarantine):
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
