"""Disk watermarks: refuse new instances before the disk is actually full.

Above ``storage.high_watermark_percent`` used, new C-STOREs get 0xA700 (out of
resources); ingest resumes by itself once usage falls below
``storage.low_watermark_percent`` (hysteresis, so it does not flap).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 0.5


def disk_usage(root: Path) -> tuple[float, int]:
    """(percent used, bytes free) of the file system holding ``root``, like df:
    used / (used + available to unprivileged users)."""
    st = os.statvfs(root)
    free = st.f_bavail * st.f_frsize
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    return (100.0 * used / max(1, used + free) if st.f_blocks else 100.0), free


class DiskGuard:
    def __init__(self, root: Path, high_percent: float, low_percent: float) -> None:
        self._root = root
        self._high = high_percent
        self._low = low_percent
        self._checked_at = 0.0
        self.refusing = False
        self.used_percent = 0.0
        self.free_bytes = 0

    def accepting(self) -> bool:
        """False while above the watermark; statvfs at most every CHECK_INTERVAL_S."""
        now = time.monotonic()
        if now - self._checked_at >= CHECK_INTERVAL_S:
            self._checked_at = now
            self._measure()
        return not self.refusing

    def _measure(self) -> None:
        self.used_percent, self.free_bytes = disk_usage(self._root)
        if not self.refusing and self.used_percent >= self._high:
            self.refusing = True
            log.error(
                "disk above high watermark: refusing new instances",
                extra={"used_percent": round(self.used_percent, 1), "high": self._high},
            )
        elif self.refusing and self.used_percent < self._low:
            self.refusing = False
            log.warning(
                "disk below low watermark: accepting instances again",
                extra={"used_percent": round(self.used_percent, 1), "low": self._low},
            )
