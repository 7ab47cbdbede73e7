"""Bytes of a request body into an upload's file at an offset: checksummed on the
way, fsynced before the caller commits the new offset, the writer's lease
renewed while a long body streams in. tus PATCH and the session API's chunk PUT
both write through here.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

RENEW_EVERY_S = 15.0
HEAD_BYTES = 132
"""Kept from the start of a body: enough to tell a file's kind (DICM at 128)."""
ALGORITHMS = ("sha1", "md5", "sha256")
"""tus checksum extension: sha1 is the one the protocol requires."""


class ChecksumMismatch(Exception):
    pass


class TooLong(Exception):
    """The body runs past what the upload (or the chunk) may hold."""


class LeaseLost(Exception):
    """Another writer took the upload over (this one stalled past its lease)."""


@dataclass(frozen=True, slots=True)
class Checksum:
    algorithm: str
    digest: bytes

    @classmethod
    def parse_tus(cls, header: str) -> Checksum:
        """``Upload-Checksum: <algorithm> <base64 digest>``; ValueError if malformed."""
        algorithm, _, encoded = header.strip().partition(" ")
        algorithm = algorithm.lower()
        if algorithm not in ALGORITHMS:
            raise ValueError(
                f"checksum algorithm '{algorithm[:16]}' (supported: sha1, md5, sha256)"
            )
        return cls(algorithm, _b64(encoded))

    @classmethod
    def parse_md5(cls, header: str) -> Checksum:
        """``Content-MD5`` (RFC 1864: base64; hex is taken too)."""
        value = header.strip()
        if len(value) == 32:
            try:
                return cls("md5", bytes.fromhex(value))
            except ValueError:
                pass
        return cls("md5", _b64(value))


def _b64(value: str) -> bytes:
    try:
        return base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"'{value[:64]}' is not base64") from None


@dataclass(frozen=True, slots=True)
class Received:
    end: int
    """The offset after the last byte written and synced."""
    whole: bool
    """The body arrived whole (False: the client went away mid-body)."""
    head: bytes
    """The body's first HEAD_BYTES (for telling the file's kind)."""


async def receive(
    fd: int,
    offset: int,
    body: AsyncIterator[bytes],
    *,
    limit: int | None,
    expected: int | None,
    checksum: Checksum | None,
    renew: Callable[[], Awaitable[bool]],
    fsync: bool = True,
) -> Received:
    """Write ``body`` (``expected`` bytes, if the request said) at ``offset``;
    fsync. A body cut off keeps what arrived (tus core), unless a checksum was
    sent: then nothing counts. Raises ChecksumMismatch, TooLong, LeaseLost."""
    hasher = hashlib.new(checksum.algorithm) if checksum is not None else None
    position = offset
    head = bytearray()
    renewed = time.monotonic()
    async for chunk in body:
        if limit is not None and position + len(chunk) > limit:
            raise TooLong(f"the body runs past byte {limit}")
        if hasher is not None:
            hasher.update(chunk)
        if len(head) < HEAD_BYTES:
            head += chunk[: HEAD_BYTES - len(head)]
        # PERF: a write to the page cache, on the event loop (as STOW-RS); the
        # fsync that makes it durable runs in a thread.
        view = memoryview(chunk)
        while view:
            written = os.pwrite(fd, view, position)
            position += written
            view = view[written:]
        if time.monotonic() - renewed > RENEW_EVERY_S:
            renewed = time.monotonic()
            if not await renew():
                raise LeaseLost
    # NOTE: the ASGI body simply ends when the client goes away; only the
    # Content-Length tells a cut-off body from a whole one.
    whole = expected is None or position - offset >= expected
    if checksum is not None:
        if not whole:
            return Received(offset, False, bytes(head))
        assert hasher is not None
        if hasher.digest() != checksum.digest:
            raise ChecksumMismatch(f"the body's {checksum.algorithm} differs from the one sent")
    if fsync and position > offset:
        await asyncio.to_thread(os.fdatasync, fd)
    return Received(position, whole, bytes(head))
