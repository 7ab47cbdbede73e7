"""Waiting for something another process or task does, bounded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


def wait_until(
    predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.02
) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes; its last answer."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return bool(predicate())
        time.sleep(interval)
    return True


async def eventually(
    predicate: Callable[[], object], timeout: float = 2.0, interval: float = 0.02
) -> None:
    """On an event loop: wait for ``predicate``; AssertionError if it never holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s")
        await asyncio.sleep(interval)
