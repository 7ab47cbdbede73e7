"""The requestor's transport connection (PS3.8 9.1.1; Sta4 opens it): TCP, or TLS
over TCP (:mod:`dicomgw.association.tls`).

uvloop has no ``loop.sendfile``, and an asyncio transport takes each PDU as a
Python object; so the requestor owns a non-blocking TCP_NODELAY socket and moves
bytes itself. :class:`PlainTransport` is the fast path: data sets go from an mmap
of the stored file to the socket through the compiled
:class:`~dicomgw._core.DataSetSender` (writev, many PDUs per call).

Every wait for the socket is bounded by the transport's ``timeout_s`` and raises
TimeoutError: what that means (the peer is silent, or accepts no data) is the
requestor's to say. Other failures are OSError.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from typing import Protocol

from dicomgw._core import DataSetSender
from dicomgw.association.errors import PeerUnreachable

DRAIN_CHUNK = 65_536


class Transport(Protocol):
    """What the requestor needs from a connection; one operation at a time."""

    async def send(self, data: bytes, more: bool = False) -> None:
        """Writes all of ``data``. ``more``: more follows at once, so it may wait
        to share a TCP segment (or TLS record) with what follows."""

    async def send_dataset(
        self,
        data: bytes | memoryview,
        max_pdu_length: int,
        context_id: int,
        expected_crc: int | None = None,
    ) -> int:
        """The data set as P-DATA-TF PDUs of one PDV each (PS3.8 9.3.5, Annex E),
        each as large as the peer's ``max_pdu_length`` allows; the data set bytes sent.
        With ``expected_crc``, raises :class:`~dicomgw._core.ChecksumMismatch`
        before the last PDU if the data set's CRC-32C differs."""

    async def recv_into(self, buffer: bytearray) -> int:
        """Waits for bytes and reads them into ``buffer``; 0 when the peer closed."""

    def recv_now(self, buffer: bytearray) -> int | None:
        """Reads what has arrived, without waiting: None if nothing has; 0 when the
        peer closed."""

    def send_now(self, data: bytes) -> None:
        """Writes what fits without waiting (A-ABORT, A-RELEASE-RP before closing)."""

    def close(self) -> None:
        """Closes the connection; again: no-op."""


class PlainTransport:
    """A connected non-blocking TCP socket, owned from here on."""

    def __init__(self, sock: socket.socket, timeout_s: float) -> None:
        self._sock = sock
        self._fd = sock.fileno()
        self._loop = asyncio.get_running_loop()
        self._timeout_s = timeout_s

    async def send(self, data: bytes, more: bool = False) -> None:
        # PERF: MSG_MORE lets a command PDU share a segment with the data set after it.
        flags = socket.MSG_MORE if more else 0
        view = memoryview(data)
        while view:
            try:
                sent = self._sock.send(view, flags)
            except BlockingIOError:
                await wait_ready(self._loop, self._fd, True, self._timeout_s)
                continue
            view = view[sent:]

    async def send_dataset(
        self,
        data: bytes | memoryview,
        max_pdu_length: int,
        context_id: int,
        expected_crc: int | None = None,
    ) -> int:
        # PERF: the sender checksums each batch of PDUs just before writing it, so
        # the file is read once (verifying first was a second pass over it).
        crc = -1 if expected_crc is None else expected_crc
        sender = DataSetSender(self._fd, data, max_pdu_length, context_id, crc)
        try:
            while not sender.send():
                await wait_ready(self._loop, self._fd, True, self._timeout_s)
            sent: int = sender.sent
            return sent
        finally:
            # NOTE: the sender holds data's buffer; an mmap cannot close until it is gone.
            del sender

    async def recv_into(self, buffer: bytearray) -> int:
        async with asyncio.timeout(self._timeout_s):
            return await self._loop.sock_recv_into(self._sock, buffer)

    def recv_now(self, buffer: bytearray) -> int | None:
        try:
            return self._sock.recv_into(buffer)
        except BlockingIOError:
            return None

    def send_now(self, data: bytes) -> None:
        self._sock.send(data)

    def close(self) -> None:
        if self._sock.fileno() < 0:
            return
        # NOTE: closing with unread input makes the kernel send RST, which can
        # destroy the A-ABORT/A-RELEASE-RP just written; read what is there first.
        with contextlib.suppress(OSError):
            while self._sock.recv(DRAIN_CHUNK):
                pass
        self._sock.close()


async def wait_ready(
    loop: asyncio.AbstractEventLoop, fd: int, write: bool, timeout_s: float | None
) -> None:
    """Until ``fd`` is writable (``write``) or readable; TimeoutError after ``timeout_s``."""
    future = loop.create_future()
    if write:
        loop.add_writer(fd, _resolve, future)
    else:
        loop.add_reader(fd, _resolve, future)
    try:
        async with asyncio.timeout(timeout_s):
            await future
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def connect(host: str, port: int, timeout_s: float) -> socket.socket:
    """A non-blocking TCP_NODELAY socket connected to host:port (Sta4)."""
    loop = asyncio.get_running_loop()
    problem = "no address"
    try:
        async with asyncio.timeout(timeout_s):
            addresses = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            for family, kind, proto, _, address in addresses:
                sock = socket.socket(family, kind, proto)
                try:
                    sock.setblocking(False)
                    # NOTE: without it, a command PDU waits for the peer's delayed ACK.
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    await loop.sock_connect(sock, address)
                except OSError as exc:
                    sock.close()
                    # NOTE: uvloop's strerror is "Connect call failed (...)"; the errno says why.
                    problem = os.strerror(exc.errno) if exc.errno else str(exc)
                    continue
                except BaseException:
                    sock.close()
                    raise
                return sock
    except TimeoutError:
        problem = f"no connection within connect_timeout_s ({timeout_s:g} s)"
    except socket.gaierror as exc:
        problem = f"cannot resolve the host name: {exc.strerror}"
    raise PeerUnreachable(host, port, problem)
