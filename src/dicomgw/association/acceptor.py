"""The association acceptor: one ``asyncio.BufferedProtocol`` per TCP connection.

uvloop reads straight into a preallocated buffer (``get_buffer``) and the
compiled framer splits it into PDUs (PS3.8 9.3). Until the Storage SCP lands
(the receiver issue), every A-ASSOCIATE-RQ is answered with A-ASSOCIATE-RJ
(permanent, service-user, no reason given) so peers fail fast and clearly;
anything else is aborted.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import struct
from typing import cast

from dicomgw._core import PDUFramer
from dicomgw.config import DimseConfig
from dicomgw.errors import ABORT_UNEXPECTED_PDU, PDUError
from dicomgw.log import context_id

log = logging.getLogger(__name__)

A_ASSOCIATE_RQ = 0x01
RECV_BUFFER_SIZE = 256 * 1024
# PS3.8 9.3.4 Table 9-21: result 1 rejected-permanent, source 1 service-user,
# reason 1 no-reason-given.
RJ_PERMANENT = 1
RJ_SOURCE_SERVICE_USER = 1
RJ_NO_REASON = 1
# PS3.8 9.3.8 Table 9-26: source 2 = service-provider initiated abort.
ABORT_SOURCE_PROVIDER = 2

_ids = itertools.count(1)


def a_associate_rj(result: int, source: int, reason: int) -> bytes:
    """PS3.8 9.3.4: type 03, reserved, length 4, reserved, result, source, reason."""
    return struct.pack(">BBIBBBB", 0x03, 0, 4, 0, result, source, reason)


def a_abort(source: int, reason: int) -> bytes:
    """PS3.8 9.3.8: type 07, reserved, length 4, two reserved bytes, source, reason."""
    return struct.pack(">BBIBBBB", 0x07, 0, 4, 0, 0, source, reason)


class AssociationAcceptor(asyncio.BufferedProtocol):
    def __init__(self, config: DimseConfig) -> None:
        self._config = config
        self._buffer = memoryview(bytearray(RECV_BUFFER_SIZE))
        self._framer = PDUFramer(max_pdata_length=config.max_pdu + 1024)
        self._transport: asyncio.Transport | None = None
        self._artim: asyncio.TimerHandle | None = None
        self.assoc_id = f"a{next(_ids)}"
        self._closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # NOTE: uvloop's transports do not subclass asyncio.Transport.
        self._transport = cast(asyncio.Transport, transport)
        sock = self._transport.get_extra_info("socket")
        if sock is not None:
            # NOTE: without it every small PDU waits for a delayed ACK (~40 ms).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        context_id.set(self.assoc_id)
        log.info("connection opened", extra={"peer": f"{peer[0]}:{peer[1]}" if peer else "?"})
        # ARTIM (PS3.8 9.1.5): the A-ASSOCIATE-RQ must arrive within the ACSE timeout.
        loop = asyncio.get_running_loop()
        self._artim = loop.call_later(self._config.acse_timeout_s, self._artim_expired)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        context_id.set(self.assoc_id)
        if self._closing:
            return  # Sta13: waiting for the peer to close; PS3.8 says ignore what it sends.
        try:
            pdus = self._framer.feed(self._buffer[:nbytes])
        except PDUError as exc:
            log.warning("malformed PDU, aborting", extra={"error": str(exc)})
            self._abort(exc.abort_reason)
            return
        for pdu in pdus:
            if pdu[0] == A_ASSOCIATE_RQ:
                log.warning("association rejected: the Storage SCP is not implemented yet")
                self._close_with(a_associate_rj(RJ_PERMANENT, RJ_SOURCE_SERVICE_USER, RJ_NO_REASON))
            else:
                log.warning("unexpected PDU before association", extra={"pdu_type": pdu[0]})
                self._abort(ABORT_UNEXPECTED_PDU)
            return

    def connection_lost(self, exc: Exception | None) -> None:
        if self._artim is not None:
            self._artim.cancel()
        log.info("connection closed", extra={"bytes_in": self._framer.bytes_in})

    def _artim_expired(self) -> None:
        context_id.set(self.assoc_id)
        if self._closing:
            log.warning("ARTIM timer expired: the peer did not close the connection")
        else:
            log.warning("ARTIM timer expired: no A-ASSOCIATE-RQ, closing")
        if self._transport is not None:
            self._transport.abort()

    def _abort(self, reason: int) -> None:
        self._close_with(a_abort(ABORT_SOURCE_PROVIDER, reason))

    def _close_with(self, pdu: bytes) -> None:
        """Send the last PDU, then wait (Sta13) for the peer to close, bounded by ARTIM.

        NOTE: closing (or half-closing) first races the peer: some requestors
        (pynetdicom) then see a dropped connection instead of the RJ/A-ABORT, and
        a close with unread input makes the kernel send RST, which can destroy it.
        """
        transport = self._transport
        if transport is None or transport.is_closing() or self._closing:
            return
        self._closing = True
        transport.write(pdu)
        if self._artim is not None:
            self._artim.cancel()
        loop = asyncio.get_running_loop()
        self._artim = loop.call_later(self._config.acse_timeout_s, self._artim_expired)


async def start_listener(config: DimseConfig) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: AssociationAcceptor(config),
        config.host,
        config.port,
        reuse_address=True,
        backlog=128,
    )
