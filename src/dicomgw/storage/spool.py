"""Durable commit of received instances: temp file -> fsync -> rename -> fsync dir.

An instance is written under ``incoming/<key>.part`` while it arrives, then,
once complete and checked, fsynced (off the event loop), renamed to
``objects/<yyyy>/<mm>/<dd>/<k0k1>/<key>.dcm`` and its directory fsynced. The key is a
random UUID: paths never contain peer-supplied strings. A crash leaves either
a ``.part`` file (removed at start-up) or a complete object (indexed at
start-up if the index misses it); never a partial file under ``objects/``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from dicomgw._core import commit_file
from dicomgw.storage.layout import DIR_MODE, FILE_MODE, StorageLayout

PART_SUFFIX = ".part"
OBJECT_SUFFIX = ".dcm"
DAY = 86_400
SHARDS = [f"{k:02x}" for k in range(256)]  # the first two hex digits of a key
COMPARE_CHUNK = 1024 * 1024
SPARES = 8


@dataclass(slots=True)
class Incoming:
    key: str
    fd: int
    path: Path


class Spool:
    def __init__(self, layout: StorageLayout, *, fsync: bool, executor: ThreadPoolExecutor) -> None:
        self.layout = layout
        self.fsync = fsync
        self._executor = executor
        self._dirs: set[Path] = set()
        self._dirs_lock = threading.Lock()
        # Empty temp files made ahead by the commit threads (deque ops are atomic).
        self._spares: collections.deque[Incoming] = collections.deque()
        self._refilling = False
        self._today = ""

    def open_incoming(self, header: bytes) -> Incoming:
        """A temp file with the Part 10 header written; the data set follows.

        PERF: creating a file costs ~0.1-0.5 ms on ext4 with a journal; it is
        done ahead in a thread, so the event loop only writes the header.
        """
        try:
            incoming = self._spares.popleft()
        except IndexError:
            incoming = self._create()
        if len(self._spares) < SPARES // 2 and not self._refilling:
            self._refilling = True
            self._executor.submit(self._refill)
        try:
            view = memoryview(header)
            while view:
                view = view[os.write(incoming.fd, view) :]
        except OSError:
            self.discard(incoming)
            raise
        return incoming

    def _create(self) -> Incoming:
        key = uuid.uuid4().hex
        path = self.layout.incoming / f"{key}{PART_SUFFIX}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        return Incoming(key, fd, path)

    def _refill(self) -> None:
        try:
            while len(self._spares) < SPARES:
                self._spares.append(self._create())
        except OSError:
            pass  # open_incoming creates its own and reports the error
        finally:
            self._refilling = False

    def close(self) -> None:
        """Remove the spare temp files (recovery would remove them anyway)."""
        while self._spares:
            self.discard(self._spares.popleft())

    def object_path(self, key: str) -> Path:
        """Relative to the storage root, as stored in the index.

        PERF: a day's directory and its 256 shards are created once, ahead
        (:meth:`prepare_days`); a random two-level fan-out made (and fsynced)
        new directories for most instances.
        """
        now = time.time()
        day = time.strftime("%Y/%m/%d", time.gmtime(now))
        if day != self._today:
            # The first commit of a day: make tomorrow's directories meanwhile.
            self._today = day
            self._executor.submit(self._prepare_day, now + DAY)
        return Path("objects") / day / key[0:2] / f"{key}{OBJECT_SUFFIX}"

    def prepare_days(self) -> None:
        """Create today's and tomorrow's day directories and shards (at start, in
        a thread): otherwise the first instance into each shard creates and
        fsyncs it, ~1 ms more for a quarter of a fresh gateway's first thousand."""
        now = time.time()
        self._prepare_day(now)
        self._prepare_day(now + DAY)

    def _prepare_day(self, when: float) -> None:
        day = self.layout.objects / time.strftime("%Y/%m/%d", time.gmtime(when))
        self._ensure_dir(day)
        with self._dirs_lock:
            missing = [day / shard for shard in SHARDS if day / shard not in self._dirs]
            for directory in missing:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(directory, DIR_MODE)
            if missing and self.fsync:
                fsync_dir(day)
            self._dirs.update(missing)

    def commit(self, incoming: Incoming, relative: Path) -> asyncio.Future[None]:
        """Make the instance durable under objects/ at ``relative`` (:meth:`object_path`),
        in a commit thread, started now; the future completes when it is.

        NOTE: a failed fsync is a failed store: the fd is closed and the file
        removed, never fsynced again (the kernel may have dropped the dirty pages).
        """
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor, self._commit, incoming, relative)

    def _commit(self, incoming: Incoming, relative: Path) -> None:
        target = self.layout.root / relative
        try:
            self._ensure_dir(target.parent)
        except OSError:
            self.discard(incoming)
            raise
        fd, incoming.fd = incoming.fd, -1
        try:
            commit_file(fd, incoming.path, target, target.parent, self.fsync)
        except OSError:
            incoming.path.unlink(missing_ok=True)
            raise

    def _ensure_dir(self, path: Path) -> None:
        if path in self._dirs:
            return
        # NOTE: under the lock, no other commit thread can rename into a new
        # directory before its entry in the parent is durable.
        with self._dirs_lock:
            if path in self._dirs:
                return
            missing = []
            directory = path
            while directory != self.layout.objects and not directory.exists():
                missing.append(directory)
                directory = directory.parent
            for directory in reversed(missing):
                os.mkdir(directory, DIR_MODE)
                if self.fsync:
                    fsync_dir(directory.parent)
            self._dirs.add(path)

    def discard(self, incoming: Incoming) -> None:
        if incoming.fd >= 0:
            os.close(incoming.fd)
            incoming.fd = -1
        incoming.path.unlink(missing_ok=True)

    async def same_dataset(self, stored: str, new: str, dataset_size: int) -> bool:
        """Are the last ``dataset_size`` bytes (the data sets) of two objects equal?"""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor,
            _same_tail,
            self.layout.root / stored,
            self.layout.root / new,
            dataset_size,
        )

    def remove_object(self, relative: Path) -> None:
        (self.layout.root / relative).unlink(missing_ok=True)


def _same_tail(a: Path, b: Path, size: int) -> bool:
    try:
        with open(a, "rb") as fa, open(b, "rb") as fb:
            fa.seek(-size, os.SEEK_END)
            fb.seek(-size, os.SEEK_END)
            while chunk := fa.read(COMPARE_CHUNK):
                if fb.read(len(chunk)) != chunk:
                    return False
            return True
    except OSError:
        return False


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
