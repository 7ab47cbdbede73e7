"""The association acceptor: one ``asyncio.BufferedProtocol`` per TCP connection.

uvloop reads straight into a preallocated buffer (``get_buffer``); the
compiled :class:`ReceiveStream` parses it in place and calls back once per
control PDU and once per DIMSE message. This module is the PS3.8 state machine
for the acceptor side, with the standard's names:

- Sta2: transport open, awaiting A-ASSOCIATE-RQ (ARTIM running);
- Sta6: association established, P-DATA flowing;
- Sta13: awaiting transport close after A-ASSOCIATE-RJ, A-RELEASE-RP or A-ABORT
  (ARTIM running; anything received is ignored).

An invalid event (a PDU that is not allowed in the current state, a malformed
PDU) becomes an A-P-ABORT (AA-8), never an exception escaping to the loop.
What the DIMSE messages mean is the business of the layer above
(:class:`Messages`, the DIMSE service provider of ``dicomgw.services``), which
this module knows only through the callbacks it is handed.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

from dicomgw._core import ReceiveStream
from dicomgw.association.negotiation import (
    Acceptance,
    Request,
    check_access,
    limit_rejection,
    negotiate,
)
from dicomgw.association.tls import explain
from dicomgw.config import DimseConfig
from dicomgw.dimse.commands import CommandError
from dicomgw.errors import DataSetTooLarge, PDUError
from dicomgw.log import context_id
from dicomgw.ul.pdu import (
    A_ABORT,
    A_ASSOCIATE_RQ,
    A_RELEASE_RP_PDU,
    A_RELEASE_RQ,
    ABORT_REASON_NOT_SPECIFIED,
    ABORT_SOURCE_PROVIDER,
    ABORT_UNEXPECTED_PDU,
    ABORT_UNRECOGNIZED_PDU_PARAMETER,
    PDATA_MARGIN,
    a_abort,
    p_data_command,
    p_data_dataset,
)

log = logging.getLogger(__name__)

RECV_BUFFER_SIZE = 256 * 1024
# Before association: an A-ASSOCIATE-RQ is small, and idle connections cost little.
NEGOTIATION_BUFFER_SIZE = 16 * 1024
# What a DICOM TLS connection may send before its handshake is taken over: a
# ClientHello (< 16 KiB), or the first records after it.
TLS_EARLY_BUFFER = 65_536

_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Peer:
    assoc_id: str
    host: str
    port: int
    acceptance: Acceptance


class Link(Protocol):
    """What the layer above may do with its association (the acceptor is one)."""

    def send_command(self, context_id: int, command: bytes) -> None:
        """Send a response command set (one P-DATA-TF), if the association is up."""
        ...

    def send_dataset(self, context_id: int, dataset: bytes, *, last: bool = True) -> None:
        """Send a data set (an identifier, a C-GET's instance), fragmented for the
        peer; ``last`` False: a piece of it, more follows."""
        ...

    async def writable(self) -> None:
        """Return once the peer has taken what was sent (flow control for
        services that answer with many messages); at once if the association ended."""
        ...

    @property
    def is_up(self) -> bool:
        """The association is established and not ending."""
        ...

    def pause_reading(self) -> None:
        """Stop reading from the peer (TCP pushes back) until :meth:`resume_reading`."""
        ...

    def resume_reading(self) -> None: ...

    def expect_dataset(self, context_id: int, fd: int) -> None:
        """The data set that follows goes to ``fd`` (-1: read and discarded;
        _core.HEAD_ONLY_FD: only its head is kept, for a small data set such as an identifier)."""
        ...

    def abort(self, reason: int) -> None:
        """A-P-ABORT with this reason (PS3.8 Table 9-26)."""
        ...

    def settled(self) -> None:
        """No request is in progress any more: a release asked for meanwhile may go."""
        ...


class MessageHandler(Protocol):
    """One association's DIMSE messages, above the association."""

    in_flight: int
    """Requests received and not yet answered (a release waits for them)."""

    def command(self, context_id: int, data: bytes) -> None:
        """A whole command set arrived (it may raise CommandError: A-ABORT)."""
        ...

    def dataset(self, context_id: int, crc32c: int, size: int, head: bytes, errno: int) -> None:
        """The data set expected with :meth:`Link.expect_dataset` is complete."""
        ...

    def closed(self) -> None:
        """The association ended (released, aborted or lost)."""
        ...


class Messages(Protocol):
    """The layer above: it makes each association's :class:`MessageHandler`."""

    head_bytes: int
    """How much of each data set's start to keep (for the metadata scan)."""
    fsync: bool
    """Whether data sets are fsynced (then writeback starts while receiving)."""

    def attach(self, peer: Peer, link: Link) -> MessageHandler: ...


class AssociationLimits:
    """Global and per-peer (source IP) caps on established associations, and on
    connections that have not associated yet. The last slots of the global cap
    are kept for the priority AE titles (the modalities), so that a flood of
    other peers cannot lock them out."""

    def __init__(self, config: DimseConfig) -> None:
        self._max = config.max_associations
        self._per_peer = config.max_associations_per_peer
        self._priority = frozenset(ae.strip() for ae in config.priority_ae_titles)
        self._reserved = min(config.priority_associations, self._max) if self._priority else 0
        self._by_peer: dict[str, int] = {}
        self.active = 0
        self._max_unassociated = config.max_unassociated
        self._unassociated_per_peer = config.max_unassociated_per_peer
        self._unassociated_by_peer: dict[str, int] = {}
        self.unassociated = 0

    def connect(self, host: str) -> str | None:
        """A connection opened: None if it may negotiate, else why not."""
        if self.unassociated >= self._max_unassociated:
            return (
                f"{self.unassociated} connections are negotiating, "
                f"dimse.max_unassociated is {self._max_unassociated}"
            )
        if self._unassociated_by_peer.get(host, 0) >= self._unassociated_per_peer:
            return (
                f"{host} has {self._unassociated_per_peer} connections negotiating, "
                "dimse.max_unassociated_per_peer"
            )
        self.unassociated += 1
        self._unassociated_by_peer[host] = self._unassociated_by_peer.get(host, 0) + 1
        return None

    def negotiated(self, host: str) -> None:
        """The connection got its answer (or closed before): no longer counted."""
        self.unassociated -= 1
        left = self._unassociated_by_peer[host] - 1
        if left:
            self._unassociated_by_peer[host] = left
        else:
            del self._unassociated_by_peer[host]

    def acquire(self, host: str, calling_ae: str = "") -> str | None:
        """None if admitted, else why not."""
        if self.active >= self._max:
            return f"{self.active} associations active, dimse.max_associations is {self._max}"
        if self.active >= self._max - self._reserved and calling_ae.strip() not in self._priority:
            return (
                f"{self.active} associations active; the last {self._reserved} of "
                "dimse.max_associations are kept for dimse.priority_ae_titles"
            )
        if self._by_peer.get(host, 0) >= self._per_peer:
            return f"{host} has {self._per_peer} associations, dimse.max_associations_per_peer"
        self.active += 1
        self._by_peer[host] = self._by_peer.get(host, 0) + 1
        return None

    def release(self, host: str) -> None:
        self.active -= 1
        left = self._by_peer[host] - 1
        if left:
            self._by_peer[host] = left
        else:
            del self._by_peer[host]


RefusalObserver = Callable[[str, str, dict[str, str]], None]
"""Told of each refused peer: (what: ``association`` or ``tls``, peer address,
details), for the audit log."""


def _unaudited(what: str, peer: str, detail: dict[str, str]) -> None:
    pass


class ListenerCounters:
    """What a listener's associations did, for the metrics collector to read.

    The bytes of open associations are counted by their streams (in C, read at
    collection); a stream's counts move here when its connection closes.
    """

    def __init__(self, on_refused: RefusalObserver | None = None) -> None:
        self.on_refused = on_refused or _unaudited
        self.admitted = 0
        self.rejected: Counter[tuple[int, int]] = Counter()
        """A-ASSOCIATE-RJ sent, by (source, reason): PS3.8 9.3.4 Table 9-21."""
        self.tls_failed: Counter[str] = Counter()
        """DICOM TLS handshakes that failed, by kind (tls.explain)."""
        self.open_streams: set[ReceiveStream] = set()
        self.closed_bytes_in = 0
        self.closed_dataset_bytes_in = 0

    def received(self) -> tuple[int, int]:
        """(PDU bytes, data set bytes) received so far, open associations included."""
        streams = self.open_streams
        return (
            self.closed_bytes_in + sum(s.bytes_in for s in streams),
            self.closed_dataset_bytes_in + sum(s.dataset_bytes_in for s in streams),
        )

    def close(self, stream: ReceiveStream) -> None:
        self.open_streams.discard(stream)
        self.closed_bytes_in += stream.bytes_in
        self.closed_dataset_bytes_in += stream.dataset_bytes_in


class AssociationAcceptor(asyncio.BufferedProtocol):
    def __init__(
        self,
        config: DimseConfig,
        limits: AssociationLimits,
        messages: Messages,
        counters: ListenerCounters,
    ) -> None:
        self._config = config
        self._limits = limits
        self._messages = messages
        self._counters = counters
        self._buffer = memoryview(bytearray(NEGOTIATION_BUFFER_SIZE))
        self._negotiating = False
        """Counted in AssociationLimits.unassociated."""
        self._lifetime: asyncio.TimerHandle | None = None
        self._stream = ReceiveStream(
            self._on_control,
            self._on_command,
            self._on_dataset,
            max_pdata_length=config.max_pdu + PDATA_MARGIN,
            head_budget=messages.head_bytes,
            write_behind=messages.fsync,
            max_dataset_bytes=config.max_instance_bytes,
        )
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._state = "Sta2"
        self._peer: Peer | None = None
        self._host = "?"
        self._port = 0
        self._admitted = False
        self._handler: MessageHandler | None = None
        """The DIMSE messages' handler, once the association is established."""
        self._release_requested = False
        self._drained: asyncio.Future[None] | None = None
        """Set while the transport's buffer is over its high-water mark."""
        self._last_activity = time.monotonic()
        self.assoc_id = f"a{next(_ids)}"

    # -- transport events ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # NOTE: uvloop's transports do not subclass asyncio.Transport.
        self._transport = cast(asyncio.Transport, transport)
        sock = self._transport.get_extra_info("socket")
        if sock is not None:
            # NOTE: without it every small PDU waits for a delayed ACK (~40 ms).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = self._transport.get_extra_info("peername")
        if peer:
            self._host, self._port = peer[0], peer[1]
        context_id.set(self.assoc_id)
        self._counters.open_streams.add(self._stream)
        why = self._limits.connect(self._host)
        if why is not None:
            log.warning(
                "connection closed before negotiation",
                extra={"peer": f"{self._host}:{self._port}", "reason": why},
            )
            self._state = "Sta13"
            self._transport.abort()
            return
        self._negotiating = True
        log.info("connection opened", extra={"peer": f"{self._host}:{self._port}"})
        # ARTIM (PS3.8 9.1.5): the A-ASSOCIATE-RQ must arrive within the ACSE timeout.
        self._arm(self._config.acse_timeout_s, self._artim_expired)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        context_id.set(self.assoc_id)
        self._last_activity = time.monotonic()
        if self._state == "Sta13":
            return  # PS3.8: ignore what arrives while awaiting the close.
        try:
            self._stream.feed(self._buffer[:nbytes])
        except DataSetTooLarge as exc:
            log.warning("data set too large: aborting", extra={"error": str(exc)})
            self._abort(exc.abort_reason)
        except PDUError as exc:
            log.warning("malformed PDU, aborting", extra={"error": str(exc)})
            self._abort(exc.abort_reason)
        except CommandError as exc:
            log.warning("malformed command set, aborting", extra={"error": str(exc)})
            self._abort(ABORT_UNRECOGNIZED_PDU_PARAMETER)
        except Exception:
            # NOTE: a bug must cost this association, never the receiver.
            log.exception("internal error while receiving: aborting the association")
            self._abort(ABORT_REASON_NOT_SPECIFIED)

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        context_id.set(self.assoc_id)
        if self._timer is not None:
            self._timer.cancel()
        if self._stream.in_message and self._state == "Sta6":
            log.warning("connection lost inside a message: the partial message is discarded")
        self._detach()
        self._negotiated()
        if self._lifetime is not None:
            self._lifetime.cancel()
        if self._admitted:
            self._limits.release(self._host)
            self._admitted = False
        self._state = "Sta1"
        self.resume_writing()  # a writer waiting on a dead transport goes on, to its end
        self._counters.close(self._stream)
        log.info(
            "connection closed",
            extra={"bytes_in": self._stream.bytes_in, "datasets": self._stream.datasets_in},
        )

    # -- PDUs ---------------------------------------------------------------------

    def _on_control(self, pdu: bytes) -> None:
        pdu_type = pdu[0]
        if self._state == "Sta2" and pdu_type == A_ASSOCIATE_RQ:
            self._associate(pdu)
        elif self._state == "Sta6" and pdu_type == A_RELEASE_RQ:
            self._release()
        elif pdu_type == A_ABORT:
            log.warning("peer aborted the association", extra={"source_reason": pdu[8:10].hex()})
            self._stream.stop()
            self._detach()
            self._close()
        else:
            log.warning("unexpected PDU", extra={"pdu_type": pdu_type, "state": self._state})
            self._abort(ABORT_UNEXPECTED_PDU)

    def _negotiated(self) -> None:
        if self._negotiating:
            self._negotiating = False
            self._limits.negotiated(self._host)

    def _associate(self, pdu: bytes) -> None:
        self._negotiated()
        request = Request.decode(pdu)
        log.info(
            "association requested",
            extra={"calling_ae": request.calling_ae_title, "called_ae": request.called_ae_title},
        )
        rejection = check_access(request, self._config)
        if rejection is None:
            why = self._limits.acquire(self._host, request.calling_ae_title)
            if why is not None:
                rejection = limit_rejection(why)
            else:
                self._admitted = True
                self._counters.admitted += 1
        if rejection is not None:
            self._counters.rejected[rejection.source, rejection.reason] += 1
            log.warning("association rejected", extra={"reason": rejection.why})
            self._counters.on_refused(
                "association",
                self._host,
                {
                    "calling_ae": request.calling_ae_title,
                    "called_ae": request.called_ae_title,
                    "reason": rejection.why,
                },
            )
            self._send_last(rejection.encode())
            return
        acceptance = negotiate(request, self._config, self._config.max_pdu)
        for cx in acceptance.contexts:
            self._stream.accept_context(cx)
        self._peer = Peer(self.assoc_id, self._host, self._port, acceptance)
        self._handler = self._messages.attach(self._peer, self)
        self._state = "Sta6"
        # NOTE: the buffer being read stays valid; the next read goes to this one.
        self._buffer = memoryview(bytearray(RECV_BUFFER_SIZE))
        self._lifetime = asyncio.get_running_loop().call_later(
            self._config.max_association_s, self._too_long
        )
        self._write(acceptance.ac_pdu)
        self._arm(self._config.network_timeout_s, self._idle_check)
        log.info(
            "association accepted",
            extra={
                "calling_ae": acceptance.calling_ae_title,
                "contexts": len(acceptance.contexts),
                "rejected_contexts": acceptance.rejected_contexts,
                "peer_max_pdu": acceptance.peer_max_pdu,
            },
        )

    def _release(self) -> None:
        if self._stream.in_message:
            log.warning("A-RELEASE-RQ in the middle of a message: aborting")
            self._abort(ABORT_UNEXPECTED_PDU)
            return
        if self._handler is not None and self._handler.in_flight:
            # PS3.8 Sta8: answer the outstanding requests first, then release.
            self._release_requested = True
            return
        log.info("association released")
        self._send_last(A_RELEASE_RP_PDU)

    # -- DIMSE messages, handed to the layer above (PS3.7) -----------------------------

    def _on_command(self, context_id: int, data: bytes) -> None:
        assert self._handler is not None
        self._handler.command(context_id, data)

    def _on_dataset(self, context_id: int) -> None:
        assert self._handler is not None
        crc, size, head, write_errno = self._stream.finish_dataset()
        self._handler.dataset(context_id, crc, size, head, write_errno)

    def _detach(self) -> None:
        handler, self._handler = self._handler, None
        if handler is not None:
            handler.closed()

    # -- Link: what the handler may do ---------------------------------------------------

    def send_command(self, context_id: int, command: bytes) -> None:
        if self._state == "Sta6":
            self._write(p_data_command(context_id, command))

    def send_dataset(self, context_id: int, dataset: bytes, *, last: bool = True) -> None:
        if self._state == "Sta6" and self._peer is not None:
            max_pdu = self._peer.acceptance.peer_max_pdu
            self._write(p_data_dataset(context_id, dataset, max_pdu, last=last))

    async def writable(self) -> None:
        if self._drained is not None:
            await self._drained

    @property
    def is_up(self) -> bool:
        return self._state == "Sta6"

    def pause_reading(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def pause_writing(self) -> None:
        self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    def expect_dataset(self, context_id: int, fd: int) -> None:
        self._stream.expect_dataset(context_id, fd)

    def abort(self, reason: int) -> None:
        self._abort(reason)

    def settled(self) -> None:
        if self._release_requested and self._state == "Sta6":
            log.info("association released")
            self._send_last(A_RELEASE_RP_PDU)

    # -- timers and closing -----------------------------------------------------------

    def _arm(self, delay: float, callback: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(delay, callback)  # type: ignore[arg-type]

    def _artim_expired(self) -> None:
        context_id.set(self.assoc_id)
        log.warning("ARTIM timer expired", extra={"state": self._state})
        if self._transport is not None:
            self._transport.abort()

    def _too_long(self) -> None:
        context_id.set(self.assoc_id)
        log.warning(
            "association open longer than dimse.max_association_s: aborting",
            extra={"max_association_s": self._config.max_association_s},
        )
        self._abort(ABORT_REASON_NOT_SPECIFIED)

    def _idle_check(self) -> None:
        idle = time.monotonic() - self._last_activity
        timeout = self._config.network_timeout_s
        if idle < timeout or (self._handler is not None and self._handler.in_flight):
            self._arm(max(0.1, timeout - idle), self._idle_check)
            return
        context_id.set(self.assoc_id)
        log.warning(
            "no traffic for dimse.network_timeout_s: aborting", extra={"idle_s": round(idle)}
        )
        self._abort(ABORT_REASON_NOT_SPECIFIED)

    def _abort(self, reason: int) -> None:
        self._detach()
        self._send_last(a_abort(ABORT_SOURCE_PROVIDER, reason))

    def _send_last(self, pdu: bytes) -> None:
        """Send the last PDU, then wait (Sta13) for the peer to close, bounded by ARTIM.

        NOTE: closing (or half-closing) first races the peer: some requestors
        (pynetdicom) then see a dropped connection instead of the RJ/A-ABORT, and
        a close with unread input makes the kernel send RST, which can destroy it.
        """
        self._stream.stop()
        if self._state == "Sta13":
            return
        self._state = "Sta13"
        self._write(pdu)
        self._arm(self._config.acse_timeout_s, self._artim_expired)

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _close(self) -> None:
        self._state = "Sta13"
        if self._transport is not None:
            self._transport.close()


class TLSHandshake(asyncio.BufferedProtocol):
    """The first protocol of a DICOM TLS connection: it runs the handshake
    (``loop.start_tls``) and hands the TLS transport to the acceptor, or logs
    why the handshake failed and closes the connection. (A listener's ``ssl=``
    would do the handshake too, but drop a failed one without a word, and an
    operator must learn that a peer's certificate was refused.)

    uvloop starts reading only after ``connection_made`` returns, so bytes can
    reach this protocol before ``start_tls`` takes the transport over: they are
    kept and given to the TLS protocol once it is connected. The same happens
    to the first application bytes (the A-ASSOCIATE-RQ), which can arrive before
    ``start_tls`` returns: they are given to the acceptor once it is connected.
    """

    def __init__(
        self,
        acceptor: AssociationAcceptor,
        context: ssl.SSLContext,
        timeout_s: float,
        counters: ListenerCounters,
    ) -> None:
        self._acceptor = acceptor
        self._context = context
        self._timeout_s = timeout_s
        self._counters = counters
        self._buffer = bytearray(TLS_EARLY_BUFFER)
        self._early = bytearray()
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._task = asyncio.ensure_future(self._handshake(cast(asyncio.Transport, transport)))

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self._buffer)

    def buffer_updated(self, nbytes: int) -> None:
        self._early += self._buffer[:nbytes]

    def connection_lost(self, exc: Exception | None) -> None:
        pass  # start_tls raises in _handshake

    async def _handshake(self, plain: asyncio.Transport) -> None:
        context_id.set(self._acceptor.assoc_id)
        peer = plain.get_extra_info("peername")
        where = f"{peer[0]}:{peer[1]}" if peer else "?"
        loop = asyncio.get_running_loop()
        upgrade = asyncio.ensure_future(
            loop.start_tls(
                plain,
                self,
                self._context,
                server_side=True,
                ssl_handshake_timeout=self._timeout_s,
            )
        )
        # NOTE: start_tls's first step (run now) pauses reading, installs the TLS
        # protocol and schedules its connection_made; what came before follows it.
        await asyncio.sleep(0)
        tls = plain.get_protocol()
        if tls is not self:
            loop.call_soon(_give, cast(asyncio.BufferedProtocol, tls), self._early)
        try:
            transport = await upgrade
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            kind, problem = (
                explain(exc)
                if isinstance(exc, ssl.SSLError)
                else ("timeout" if isinstance(exc, TimeoutError) else "connection", str(exc))
            )
            self._counters.tls_failed[kind] += 1
            log.warning(
                "DICOM TLS handshake failed",
                extra={"peer": where, "kind": kind, "problem": problem},
            )
            self._counters.on_refused(
                "tls", peer[0] if peer else "?", {"kind": kind, "problem": problem}
            )
            plain.abort()
            return
        if transport is None:  # the peer closed during the handshake
            plain.abort()
            return
        cert = transport.get_extra_info("peercert") or {}
        subject = ",".join(f"{k}={v}" for rdn in cert.get("subject", ()) for k, v in rdn)
        log.info(
            "DICOM TLS established",
            extra={
                "peer": where,
                "tls_version": transport.get_extra_info("ssl_object").version(),
                "tls_peer": subject.replace("commonName", "CN") or None,
            },
        )
        transport.set_protocol(self._acceptor)
        self._acceptor.connection_made(transport)
        _give(self._acceptor, self._early)


def _give(protocol: asyncio.BufferedProtocol, data: bytearray) -> None:
    """Deliver ``data`` (then emptied) to ``protocol`` as if it had been read."""
    view = memoryview(data)
    while view:
        buffer = memoryview(protocol.get_buffer(len(view)))
        n = min(len(buffer), len(view))
        buffer[:n] = view[:n]
        view = view[n:]
        protocol.buffer_updated(n)
    view.release()
    del data[:]


async def start_listener(
    config: DimseConfig,
    limits: AssociationLimits,
    messages: Messages,
    counters: ListenerCounters,
    *,
    port: int,
    tls: ssl.SSLContext | None = None,
) -> asyncio.Server:
    """Listen on ``port``; with ``tls`` (DICOM TLS) the handshake must complete
    within the ACSE timeout, and the acceptor then reads decrypted bytes into its
    buffer as it reads plain ones."""

    def plain() -> AssociationAcceptor:
        return AssociationAcceptor(config, limits, messages, counters)

    def secured() -> TLSHandshake:
        assert tls is not None
        return TLSHandshake(plain(), tls, config.acse_timeout_s, counters)

    loop = asyncio.get_running_loop()
    return await loop.create_server(
        plain if tls is None else secured, config.host, port, reuse_address=True, backlog=128
    )
