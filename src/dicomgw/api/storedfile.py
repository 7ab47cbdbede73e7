"""Stored Part 10 files read for HTTP: a chunk at a time in a worker thread, so a
download never holds a whole file in memory nor blocks the event loop on disk."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from dicomgw.storage.layout import StoredFileMissing, stored_path

CHUNK = 1024 * 1024


class StoredFile:
    """An open stored file as an async iterator of chunks (``resp.stream``, or a
    ZIP member's source); ``close`` releases the descriptor."""

    def __init__(self, fd: int, size: int, relative: str) -> None:
        self._fd = fd
        self.size = size
        self._relative = relative
        self._offset = 0

    @classmethod
    async def open(cls, root: Path, relative: str) -> StoredFile:
        path = stored_path(root, relative)
        try:
            fd = await asyncio.to_thread(os.open, path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise StoredFileMissing(relative, exc.strerror or str(exc)) from None
        return cls(fd, os.fstat(fd).st_size, relative)

    def __aiter__(self) -> StoredFile:
        return self

    async def __anext__(self) -> bytes:
        if self._offset >= self.size:
            raise StopAsyncIteration
        want = min(CHUNK, self.size - self._offset)
        chunk = await asyncio.to_thread(os.pread, self._fd, want, self._offset)
        if not chunk:
            raise StoredFileMissing(self._relative, "it shrank while being read")
        self._offset += len(chunk)
        return chunk

    async def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
