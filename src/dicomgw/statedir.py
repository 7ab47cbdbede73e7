"""The state directory's lock: one gateway process per state directory.

An flock on ``<state_dir>/dicom-gw.lock`` held for the life of ``serve``; the
kernel drops it when the process dies, so a crash never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from dicomgw.errors import AlreadyRunning, DicomGwError

LOCK_NAME = "dicom-gw.lock"


class StateDirLock:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
            fd = os.open(self.state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o640)
        except OSError as exc:
            raise DicomGwError(
                f"cannot use state_dir '{self.state_dir}': {exc.strerror}; "
                f"create it or set state_dir (DICOMGW_STATE_DIR) to a writable directory"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid_text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise AlreadyRunning(
                str(self.state_dir), int(pid_text) if pid_text.isdigit() else None
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None


def running_pid(state_dir: Path) -> int | None:
    """The pid of the process holding the state dir's lock (``serve`` or
    ``receiver``), or None when none holds it."""
    try:
        fd = os.open(state_dir / LOCK_NAME, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
