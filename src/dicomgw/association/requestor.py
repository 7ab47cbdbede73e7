"""The association requestor (SCU side): one association to a peer, on a connection it owns.

The connection is a :class:`~dicomgw.association.transport.Transport`: plain TCP,
where data sets go from an mmap of the stored file to the socket through the
compiled :class:`~dicomgw._core.DataSetSender`, or DICOM TLS (PS3.15 Annex B,
:mod:`dicomgw.association.tls`). Replies are cut into PDUs by
:class:`~dicomgw._core.PDUFramer`; the PDUs sent are built in
:mod:`dicomgw.association.codec`.

The PS3.8 9.2 states of the requestor side, by their names:

- Sta4: awaiting transport connection opening (:meth:`Requestor.open` connects,
  and completes the TLS handshake when asked to);
- Sta5: A-ASSOCIATE-RQ sent, awaiting A-ASSOCIATE-AC or -RJ;
- Sta6: association established, ready for data transfer;
- Sta7: A-RELEASE-RQ sent, awaiting A-RELEASE-RP;
- Sta1: idle, the connection is closed.

One operation at a time (PS3.7 D.3.3.3: asynchronous operations window 1): a
request, then its response. Anything unexpected (a PDU the state does not allow,
a malformed reply, a data set in a response) aborts the association (AA-1/AA-8)
and raises; so does every wait that outlasts ``network_timeout_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import os
import ssl
import struct
from collections import deque
from collections.abc import Iterator, Sequence

from dicomgw._core import ChecksumMismatch, PDUFramer
from dicomgw.association.codec import (
    Negotiated,
    command_pdus,
    decode_associate_ac,
    encode_associate_rq,
    proposal,
)
from dicomgw.association.errors import (
    AssociationAborted,
    AssociationError,
    AssociationLost,
    AssociationRejected,
    PeerProtocolError,
    PeerUnreachable,
    TLSConfigError,
    TLSFailed,
)
from dicomgw.association.tls import TLSTransport
from dicomgw.association.transport import PlainTransport, Transport, connect
from dicomgw.dimse.commands import (
    C_ECHO_RSP,
    C_STORE_RSP,
    Command,
    CommandError,
    decode_command,
    encode_c_echo_rq,
    encode_c_store_rq,
)
from dicomgw.errors import PDUError
from dicomgw.ul.pdu import (
    A_ABORT,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    A_RELEASE_RP,
    A_RELEASE_RP_PDU,
    A_RELEASE_RQ,
    A_RELEASE_RQ_PDU,
    ABORT_INVALID_PDU_PARAMETER_VALUE,
    ABORT_REASON_NOT_SPECIFIED,
    ABORT_SOURCE_PROVIDER,
    ABORT_SOURCE_USER,
    ABORT_UNEXPECTED_PDU,
    MCH_COMMAND,
    MCH_LAST,
    P_DATA_TF,
    PDATA_MARGIN,
    PDU_NAMES,
    a_abort,
)
from dicomgw.ul.uids import IMPLICIT_VR_LITTLE_ENDIAN, VERIFICATION_SOP_CLASS

# NOTE: the requestor's API; the errors and codec parts live in their own modules.
__all__ = [
    "AssociationAborted",
    "AssociationError",
    "AssociationLost",
    "AssociationRejected",
    "Negotiated",
    "PeerProtocolError",
    "PeerUnreachable",
    "Requestor",
    "TLSConfigError",
    "TLSFailed",
    "command_pdus",
    "proposal",
]

log = logging.getLogger(__name__)

# NOTE: a peer's Maximum Length Received of 0 means "no limit" (PS3.8 D.1); we
# then send PDUs of this size: large enough that per-PDU costs vanish, small
# enough for receivers that hold a whole PDU in memory.
PDU_LENGTH_IF_UNLIMITED = 262_144
RECV_BUFFER_SIZE = 65_536
# A response command set is a few hundred bytes; anything near this is an attack.
MAX_COMMAND_LENGTH = 65_536

_PDV = struct.Struct(">IBB")


# -- the requestor -------------------------------------------------------------------


class Requestor:
    """One established association (Sta6) to a peer; create it with :meth:`open`."""

    def __init__(
        self,
        transport: Transport,
        peer: str,
        proposed: Sequence[tuple[int, str, str]],
        max_pdu: int,
        network_timeout_s: float,
    ) -> None:
        self._transport: Transport | None = transport
        self.peer = peer
        self._proposed = proposed
        self._network_timeout_s = network_timeout_s
        # 0: we announced no limit (PS3.8 D.1), so only the field's own bound applies.
        self._framer = PDUFramer(max_pdu + PDATA_MARGIN if max_pdu else 0xFFFFFFFF)
        self._buffer = bytearray(RECV_BUFFER_SIZE)
        self._view = memoryview(self._buffer)
        self._pdus: deque[bytes] = deque()
        self._state = "Sta5"
        self._message_id = 0
        self._accepted_ids: frozenset[int] = frozenset()
        self._max_pdu_length = PDU_LENGTH_IF_UNLIMITED
        self.negotiated = Negotiated({}, {}, 0)
        self.bytes_out = 0
        """Data set bytes sent, for metrics."""

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        called_ae: str,
        calling_ae: str,
        contexts: Sequence[tuple[str, Sequence[str]]],
        max_pdu: int,
        connect_timeout_s: float,
        network_timeout_s: float,
        tls: ssl.SSLContext | None = None,
    ) -> Requestor:
        """Connect (Sta4) and negotiate (Sta5) an association; returns it in Sta6.

        ``contexts`` are (abstract syntax, [transfer syntaxes]); one presentation
        context is proposed per pair. ``max_pdu`` is our Maximum Length Received.
        With ``tls`` (see :func:`~dicomgw.association.tls.client_context`) the
        connection is DICOM TLS, its certificate checked against ``host``; the TCP
        connection and the TLS handshake together get ``connect_timeout_s``.
        Raises :class:`PeerUnreachable`, :class:`TLSFailed`,
        :class:`AssociationRejected`, :class:`AssociationAborted`,
        :class:`AssociationLost` or :class:`PeerProtocolError`.
        """
        proposed = proposal(contexts)
        rq = encode_associate_rq(called_ae, calling_ae, proposed, max_pdu)
        peer = f"{called_ae}@{host}:{port}"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + connect_timeout_s
        sock = await connect(host, port, connect_timeout_s)
        transport: Transport
        if tls is None:
            transport = PlainTransport(sock, network_timeout_s)
        else:
            try:
                async with asyncio.timeout_at(deadline):
                    transport = await TLSTransport.handshake(
                        sock, tls, host=host, peer=peer, timeout_s=network_timeout_s
                    )
            except TimeoutError:
                raise TLSFailed(
                    peer,
                    f"no TLS handshake within connect_timeout_s ({connect_timeout_s:g} s): "
                    "is that port a DICOM TLS port?",
                    "not-tls",
                ) from None
            log.debug("TLS established", extra={"peer": peer, "tls": transport.version})
        requestor = cls(transport, peer, proposed, max_pdu, network_timeout_s)
        with requestor._operation("negotiating the association", "Sta5"):
            await requestor._send_bytes(rq)
            await requestor._await_associate_reply()
        log.info(
            "association established",
            extra={
                "peer": requestor.peer,
                "contexts_accepted": len(requestor.negotiated.contexts),
                "contexts_proposed": len(proposed),
                "peer_max_pdu": requestor.negotiated.peer_max_pdu,
                "peer_implementation": requestor.negotiated.implementation_version_name
                or requestor.negotiated.implementation_class_uid,
            },
        )
        return requestor

    async def _await_associate_reply(self) -> None:
        pdu = await self._next_pdu("awaiting A-ASSOCIATE-AC")
        pdu_type = pdu[0]
        if pdu_type == A_ASSOCIATE_RJ:
            # PS3.8 9.3.4: result, source and reason/diag at offsets 7, 8 and 9.
            raise AssociationRejected(pdu[7], pdu[8], pdu[9])
        if pdu_type != A_ASSOCIATE_AC:
            raise self._unexpected(pdu, "awaiting A-ASSOCIATE-AC")
        negotiated = decode_associate_ac(pdu, self._proposed)
        if 0 < negotiated.peer_max_pdu <= 6:
            raise PeerProtocolError(
                f"its Maximum Length Received {negotiated.peer_max_pdu} leaves no room for data"
            )
        self.negotiated = negotiated
        self._accepted_ids = frozenset(negotiated.contexts.values())
        self._max_pdu_length = negotiated.peer_max_pdu or PDU_LENGTH_IF_UNLIMITED
        self._state = "Sta6"

    # -- DIMSE operations (PS3.7 9.3) -------------------------------------------------

    @property
    def is_established(self) -> bool:
        return self._state == "Sta6"

    async def c_echo(self) -> int:
        """C-ECHO (PS3.7 9.3.5) on the accepted Verification context; its status."""
        context_id = next(
            (
                cx
                for (abstract, _), cx in self.negotiated.contexts.items()
                if abstract == VERIFICATION_SOP_CLASS
            ),
            None,
        )
        if context_id is None:
            raise ValueError(
                f"no Verification presentation context was accepted by {self.peer}; "
                f"propose ({VERIFICATION_SOP_CLASS}, [{IMPLICIT_VR_LITTLE_ENDIAN}])"
            )
        with self._operation("performing a C-ECHO"):
            message_id = self._next_message_id()
            rq = command_pdus(context_id, encode_c_echo_rq(message_id), self._max_pdu_length)
            await self._send_bytes(rq)
            response = await self._response(message_id, C_ECHO_RSP, "awaiting the C-ECHO-RSP")
        return response.status or 0

    async def c_store_file(
        self,
        context_id: int,
        sop_class_uid: str,
        sop_instance_uid: str,
        *,
        fd: int,
        offset: int,
        length: int,
        expected_crc: int | None = None,
        move_originator: tuple[str, int] | None = None,
    ) -> tuple[int, str | None]:
        """C-STORE (PS3.7 9.3.1) of the ``length`` bytes at ``offset`` of the open
        file ``fd``, sent from an mmap of it; the (status, error comment) answered.
        ``move_originator``: (AE title, message ID) of the C-MOVE it serves.

        With ``expected_crc`` (CRC-32C) a data set that does not match is never
        completed: :class:`~dicomgw._core.ChecksumMismatch` is raised after the
        association is aborted, so the peer discards what it got. The file must
        not be truncated while it is sent (stored files never are).
        """
        with _mapped(fd, offset, length) as data:
            return await self.c_store_bytes(
                context_id,
                sop_class_uid,
                sop_instance_uid,
                data,
                expected_crc,
                move_originator=move_originator,
            )

    async def c_store_bytes(
        self,
        context_id: int,
        sop_class_uid: str,
        sop_instance_uid: str,
        data: bytes | memoryview,
        expected_crc: int | None = None,
        *,
        move_originator: tuple[str, int] | None = None,
    ) -> tuple[int, str | None]:
        """C-STORE (PS3.7 9.3.1) of a data set in memory (e.g. converted); the
        (status, error comment) answered."""
        if context_id not in self._accepted_ids:
            raise ValueError(f"presentation context {context_id} was not accepted by {self.peer}")
        with self._operation("sending a C-STORE-RQ"):
            message_id = self._next_message_id()
            originator_ae, originator_id = move_originator or (None, None)
            command = encode_c_store_rq(
                message_id,
                sop_class_uid,
                sop_instance_uid,
                move_originator_ae_title=originator_ae,
                move_originator_message_id=originator_id,
            )
            await self._send_bytes(
                command_pdus(context_id, command, self._max_pdu_length), more=True
            )
            await self._send_dataset(context_id, data, expected_crc)
            response = await self._response(
                message_id, C_STORE_RSP, f"awaiting the C-STORE-RSP for {sop_instance_uid}"
            )
        return response.status or 0, response.error_comment

    # -- release and abort (PS3.8 7.2, 7.3) --------------------------------------------

    async def release(self) -> None:
        """A-RELEASE-RQ, then A-RELEASE-RP (Sta7), then close. On any failure the
        association is aborted instead and the error raised; closed: no-op."""
        if self._state != "Sta6":
            self._close()
            return
        with self._operation("releasing the association"):
            self._state = "Sta7"
            await self._send_bytes(A_RELEASE_RQ_PDU)
            while True:
                pdu = await self._next_pdu("awaiting A-RELEASE-RP")
                if pdu[0] == A_RELEASE_RP:
                    break
                if pdu[0] != A_RELEASE_RQ:
                    raise self._unexpected(pdu, "awaiting A-RELEASE-RP")
                # Release collision (PS3.8 Sta9 -> Sta11): the requestor answers
                # first, then still awaits the peer's A-RELEASE-RP.
                await self._send_bytes(A_RELEASE_RP_PDU)
        log.info("association released", extra={"peer": self.peer})
        self._close()

    def abort(self) -> None:
        """A-ABORT (service-user) and close; for when the association's state is unknown."""
        self._abort(ABORT_SOURCE_USER, ABORT_REASON_NOT_SPECIFIED)

    def check_open(self) -> bool:
        """Whether the association is still usable, without waiting.

        A peer may end an idle association (its own timeout) with A-RELEASE-RQ,
        A-ABORT or a plain close; that is found here rather than by the next
        C-STORE failing. An A-RELEASE-RQ is answered (A-RELEASE-RP) before closing.
        """
        if self._state != "Sta6" or self._transport is None:
            return False
        # NOTE: what arrived with the last reply was framed then and is held.
        pdus = list(self._pdus)
        self._pdus.clear()
        if not pdus and not self._framer.pending:
            try:
                received = self._transport.recv_now(self._buffer)
            except (OSError, TLSFailed):
                self._close()
                return False
            if received is None:
                return True
            with contextlib.suppress(PDUError):
                pdus = self._framer.feed(self._view[:received])
        # Unsolicited bytes (or EOF) in Sta6 with nothing outstanding end the association.
        if any(pdu[0] == A_RELEASE_RQ for pdu in pdus):
            with contextlib.suppress(OSError):
                self._transport.send_now(A_RELEASE_RP_PDU)
            self._close()
        else:
            self._abort(ABORT_SOURCE_USER, ABORT_REASON_NOT_SPECIFIED)
        log.info("the peer ended the idle association", extra={"peer": self.peer})
        return False

    # -- internals -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _operation(self, during: str, state: str = "Sta6") -> Iterator[None]:
        """Runs one exchange; any failure leaves the association closed (Sta1)."""
        if self._state != state:
            raise AssociationLost(
                f"cannot go on {during}: the association with {self.peer} is over"
            )
        try:
            yield
        except (AssociationAborted, AssociationRejected, TLSFailed):
            # NOTE: after a TLS failure nothing more can be said on the connection.
            self._close()
            raise
        except PeerProtocolError as exc:
            log.warning(
                "aborting: peer protocol error", extra={"peer": self.peer, "error": str(exc)}
            )
            self._abort(exc.abort_source, exc.abort_reason)
            raise
        except AssociationLost:
            self._abort(ABORT_SOURCE_USER, ABORT_REASON_NOT_SPECIFIED)
            raise
        except PDUError as exc:
            self._abort(ABORT_SOURCE_PROVIDER, exc.abort_reason)
            raise PeerProtocolError(str(exc), ABORT_SOURCE_PROVIDER, exc.abort_reason) from exc
        except CommandError as exc:
            self._abort(ABORT_SOURCE_USER, ABORT_REASON_NOT_SPECIFIED)
            raise PeerProtocolError(str(exc)) from exc
        except OSError as exc:
            why = self._why_broken(during)
            self._close()
            if why is not None:
                raise why from exc
            raise AssociationLost(
                f"the connection to {self.peer} failed while {during}: {exc.strerror or exc}"
            ) from exc
        except ChecksumMismatch:
            # The data set's last PDU was held back: the abort makes the peer drop it.
            self._abort(ABORT_SOURCE_USER, ABORT_REASON_NOT_SPECIFIED)
            raise
        except BaseException:
            # Cancelled or a bug: what the peer saw is unknown, so end it outright.
            self._abort(ABORT_SOURCE_USER, ABORT_REASON_NOT_SPECIFIED)
            raise

    def _next_message_id(self) -> int:
        self._message_id = self._message_id % 0xFFFF + 1
        return self._message_id

    async def _send_bytes(self, data: bytes, more: bool = False) -> None:
        assert self._transport is not None
        try:
            await self._transport.send(data, more)
        except TimeoutError:
            raise self._stalled() from None

    async def _send_dataset(
        self, context_id: int, data: bytes | memoryview, expected_crc: int | None
    ) -> None:
        assert self._transport is not None
        try:
            self.bytes_out += await self._transport.send_dataset(
                data, self._max_pdu_length, context_id, expected_crc
            )
        except TimeoutError:
            raise self._stalled() from None

    def _stalled(self) -> AssociationLost:
        return AssociationLost(
            f"{self.peer} accepted no data for network_timeout_s ({self._network_timeout_s:g} s)"
        )

    async def _next_pdu(self, waiting_for: str) -> bytes:
        assert self._transport is not None
        while not self._pdus:
            try:
                received = await self._transport.recv_into(self._buffer)
            except TimeoutError:
                raise AssociationLost(
                    f"nothing from {self.peer} within network_timeout_s "
                    f"({self._network_timeout_s:g} s) while {waiting_for}"
                ) from None
            if not received:
                raise AssociationLost(f"{self.peer} closed the connection while {waiting_for}")
            self._pdus.extend(self._framer.feed(self._view[:received]))
        return self._pdus.popleft()

    async def _response(self, message_id: int, command_field: int, waiting_for: str) -> Command:
        """The response command set (PS3.7 9.3), gathered from command PDVs."""
        command = bytearray()
        while True:
            pdu = await self._next_pdu(waiting_for)
            if pdu[0] != P_DATA_TF:
                raise self._unexpected(pdu, waiting_for)
            if self._gather_command(pdu, command, waiting_for):
                break
        response = decode_command(bytes(command))
        if response.command_field != command_field:
            raise PeerProtocolError(
                f"it answered with command 0x{response.command_field:04X} while {waiting_for}"
            )
        if response.message_id_being_responded_to != message_id:
            raise PeerProtocolError(
                f"it answered message ID {response.message_id_being_responded_to}, "
                f"not {message_id}, while {waiting_for}"
            )
        return response

    def _gather_command(self, pdu: bytes, command: bytearray, waiting_for: str) -> bool:
        """Appends the PDU's command fragments; True at the last one (PS3.8 9.3.5.1, E.2)."""
        pos, end = 6, len(pdu)
        last = False
        while pos < end:
            if end - pos < 6:
                raise PeerProtocolError(f"a PDV item header is cut short while {waiting_for}")
            item_length, context_id, mch = _PDV.unpack_from(pdu, pos)
            if item_length < 2 or item_length > end - pos - 4:
                raise PeerProtocolError(
                    f"PDV item-length {item_length} does not fit its P-DATA-TF",
                    ABORT_SOURCE_PROVIDER,
                    ABORT_INVALID_PDU_PARAMETER_VALUE,
                )
            if context_id not in self._accepted_ids:
                raise PeerProtocolError(f"a PDV on presentation context {context_id}, not accepted")
            if last:
                raise PeerProtocolError(
                    f"more PDVs after the last command fragment ({waiting_for})"
                )
            if not mch & MCH_COMMAND:
                raise PeerProtocolError(f"it sent a data set while {waiting_for}, which has none")
            command += pdu[pos + 6 : pos + 4 + item_length]
            if len(command) > MAX_COMMAND_LENGTH:
                raise PeerProtocolError(f"a command set over {MAX_COMMAND_LENGTH} bytes")
            last = bool(mch & MCH_LAST)
            pos += 4 + item_length
        return last

    def _unexpected(self, pdu: bytes, waiting_for: str) -> AssociationError:
        if pdu[0] == A_ABORT:
            # PS3.8 9.3.8: source and reason/diag at offsets 8 and 9.
            return AssociationAborted(pdu[8], pdu[9], waiting_for)
        name = PDU_NAMES.get(pdu[0], f"PDU type 0x{pdu[0]:02X}")
        return PeerProtocolError(
            f"it sent {name} while {waiting_for} ({self._state})",
            ABORT_SOURCE_PROVIDER,
            ABORT_UNEXPECTED_PDU,
        )

    def _why_broken(self, during: str) -> AssociationError | None:
        """What the peer said before the connection failed, if it is readable: an
        A-ABORT, or a TLS alert.

        NOTE: a peer that aborts while we are sending makes our send fail with
        EPIPE/ECONNRESET; its A-ABORT, if it arrived, says why. Over TLS it may
        have refused our certificate only after our handshake was done (TLS 1.3),
        and its alert is then what is waiting.
        """
        if self._transport is None:
            return None
        try:
            received = self._transport.recv_now(self._buffer)
            if received:
                self._pdus.extend(self._framer.feed(self._view[:received]))
        except TLSFailed as exc:
            return exc
        except (OSError, PDUError):
            pass
        for pdu in self._pdus:
            if pdu[0] == A_ABORT:
                return AssociationAborted(pdu[8], pdu[9], during)
        return None

    def _abort(self, source: int, reason: int) -> None:
        """AA-1: send A-ABORT (best effort) and close the transport."""
        if self._transport is not None:
            with contextlib.suppress(OSError):
                self._transport.send_now(a_abort(source, reason))
        self._close()

    def _close(self) -> None:
        self._state = "Sta1"
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()


@contextlib.contextmanager
def _mapped(fd: int, offset: int, length: int) -> Iterator[memoryview]:
    """The file's bytes [offset, offset + length) as a view of a read-only mmap."""
    size = os.fstat(fd).st_size
    if offset < 0 or length < 0 or offset + length > size:
        raise ValueError(f"bytes {offset}-{offset + length} are outside the {size}-byte file")
    if length == 0:
        yield memoryview(b"")
        return
    with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mapped:
        # PERF: start reading a cold file ahead of the sender's page faults.
        mapped.madvise(mmap.MADV_WILLNEED)
        whole = memoryview(mapped)
        part = whole[offset : offset + length]
        try:
            yield part
        finally:
            part.release()
            whole.release()
