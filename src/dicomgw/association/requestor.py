"""The association requestor (SCU side): one association to a peer, on a socket it owns.

uvloop has no ``loop.sendfile``, and a transport takes each PDU as a Python
object; so the requestor owns a non-blocking socket (TCP_NODELAY): data sets go
from an mmap of the stored file to the socket through the compiled
:class:`~dicomgw._core.DataSetSender` (writev, many PDUs per call), and replies
are cut into PDUs by :class:`~dicomgw._core.PDUFramer`. PDU item codecs are
pynetdicom's.

The PS3.8 9.2 states of the requestor side, by their names:

- Sta4: awaiting transport connection opening (:meth:`Requestor.open` connects);
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
import socket
import struct
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context

from dicomgw._core import DataSetSender, PDUFramer
from dicomgw.association.negotiation import (
    APPLICATION_CONTEXT_NAME,
    RESULT_TRANSIENT,
    VERIFICATION_SOP_CLASS,
    peer_user_information,
)
from dicomgw.dimse.commands import (
    C_ECHO_RSP,
    C_STORE_RSP,
    Command,
    CommandError,
    decode_command,
    encode_c_echo_rq,
    encode_c_store_rq,
)
from dicomgw.errors import (
    ABORT_INVALID_PDU_PARAMETER_VALUE,
    ABORT_REASON_NOT_SPECIFIED,
    ABORT_UNEXPECTED_PDU,
    DicomGwError,
    PDUError,
)
from dicomgw.storage.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

log = logging.getLogger(__name__)

# PS3.8 9.3.1: PDU types.
A_ASSOCIATE_AC_TYPE = 0x02
A_ASSOCIATE_RJ_TYPE = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ_TYPE = 0x05
A_RELEASE_RP_TYPE = 0x06
A_ABORT_TYPE = 0x07
PDU_NAMES = {
    0x01: "A-ASSOCIATE-RQ",
    0x02: "A-ASSOCIATE-AC",
    0x03: "A-ASSOCIATE-RJ",
    0x04: "P-DATA-TF",
    0x05: "A-RELEASE-RQ",
    0x06: "A-RELEASE-RP",
    0x07: "A-ABORT",
}
# PS3.8 9.3.6/9.3.7: type, reserved, PDU-length 4, four reserved bytes.
A_RELEASE_RQ = bytes.fromhex("05 00 00000004 00000000")
A_RELEASE_RP = bytes.fromhex("06 00 00000004 00000000")
# PS3.8 9.3.8 Table 9-26: A-ABORT source.
ABORT_SOURCE_USER = 0
ABORT_SOURCE_PROVIDER = 2
# PS3.8 9.3.5, E.2: message control header bits.
MCH_COMMAND = 0x01
MCH_LAST = 0x02
# PS3.8 9.3.3.2 Table 9-18: presentation context result/reason.
CONTEXT_ACCEPTED = 0
CONTEXT_RESULTS = {
    0: "acceptance",
    1: "user-rejection",
    2: "no-reason (provider rejection)",
    3: "abstract-syntax-not-supported (provider rejection)",
    4: "transfer-syntaxes-not-supported (provider rejection)",
}
# Presentation context IDs are odd, 1-255 (PS3.8 9.3.2.2).
MAX_CONTEXTS = 128
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
# NOTE: a peer's Maximum Length Received of 0 means "no limit" (PS3.8 D.1); we
# then send PDUs of this size: large enough that per-PDU costs vanish, small
# enough for receivers that hold a whole PDU in memory.
PDU_LENGTH_IF_UNLIMITED = 262_144
# Room for the PDU and PDV headers on top of our announced maximum (as the acceptor).
PDATA_MARGIN = 64
RECV_BUFFER_SIZE = 65_536
# A response command set is a few hundred bytes; anything near this is an attack.
MAX_COMMAND_LENGTH = 65_536

_PDV = struct.Struct(">IBB")
_PDATA_COMMAND = struct.Struct(">BBIIBB")

# PS3.8 9.3.4 Table 9-21: A-ASSOCIATE-RJ result, source and reason/diag.
_RJ_SOURCES = {
    1: "DICOM UL service-user",
    2: "DICOM UL service-provider (ACSE related function)",
    3: "DICOM UL service-provider (presentation related function)",
}
_RJ_REASONS = {
    (1, 1): "no-reason-given",
    (1, 2): "application-context-name-not-supported",
    (1, 3): "calling-AE-title-not-recognized",
    (1, 7): "called-AE-title-not-recognized",
    (2, 1): "no-reason-given",
    (2, 2): "protocol-version-not-supported",
    (3, 1): "temporary-congestion",
    (3, 2): "local-limit-exceeded",
}
# PS3.8 9.3.8 Table 9-26: A-ABORT reason/diag (meaningful for source 2 only).
_ABORT_REASONS = {
    0: "reason-not-specified",
    1: "unrecognized-PDU",
    2: "unexpected-PDU",
    4: "unrecognized-PDU-parameter",
    5: "unexpected-PDU-parameter",
    6: "invalid-PDU-parameter-value",
}


# -- errors ------------------------------------------------------------------------


class AssociationError(DicomGwError):
    """The association could not be set up or broke; nothing more can be sent on it.

    ``transient``: trying again later may succeed (peer down, busy, aborted).
    """

    transient = True


class PeerUnreachable(AssociationError):
    """No transport connection (Sta4 failed): refused, timed out, name unknown."""

    def __init__(self, host: str, port: int, problem: str) -> None:
        self.host = host
        self.port = port
        self.problem = problem
        super().__init__(f"cannot connect to {host}:{port}: {problem}")


class AssociationRejected(AssociationError):
    """A-ASSOCIATE-RJ (PS3.8 9.3.4): ``result`` 1 rejected-permanent, 2 rejected-transient."""

    def __init__(self, result: int, source: int, reason: int) -> None:
        self.result = result
        self.source = source
        self.reason = reason
        self.transient = result == RESULT_TRANSIENT
        kind = "transient" if self.transient else "permanent"
        why = _RJ_REASONS.get((source, reason), f"reason {reason}")
        who = _RJ_SOURCES.get(source, f"source {source}")
        super().__init__(
            f"the peer rejected the association ({kind}): {why}, from the {who} "
            f"(A-ASSOCIATE-RJ result {result}, source {source}, reason {reason})"
        )


class AssociationAborted(AssociationError):
    """The peer sent A-ABORT (PS3.8 9.3.8): source 0 service-user, 2 service-provider."""

    def __init__(self, source: int, reason: int, during: str) -> None:
        self.source = source
        self.reason = reason
        who = "service-user" if source == ABORT_SOURCE_USER else "service-provider"
        why = _ABORT_REASONS.get(reason, f"reason {reason}")
        detail = f", {why}" if source == ABORT_SOURCE_PROVIDER else ""
        super().__init__(
            f"the peer aborted the association while {during} (A-ABORT from the {who}{detail})"
        )


class AssociationLost(AssociationError):
    """The connection closed, failed or went quiet for ``network_timeout_s``."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(problem)


class PeerProtocolError(AssociationError):
    """The peer broke PS3.8/PS3.7 (an unexpected PDU, a malformed reply); we aborted."""

    def __init__(
        self,
        problem: str,
        abort_source: int = ABORT_SOURCE_USER,
        abort_reason: int = ABORT_REASON_NOT_SPECIFIED,
    ) -> None:
        self.problem = problem
        self.abort_source = abort_source
        self.abort_reason = abort_reason
        super().__init__(
            f"the peer broke the DICOM protocol: {problem}; the association was aborted"
        )


# -- negotiation ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Negotiated:
    """What the A-ASSOCIATE-AC granted (PS3.8 9.3.3)."""

    contexts: Mapping[tuple[str, str], int]
    """(abstract syntax, transfer syntax) -> presentation context ID, accepted ones only."""
    results: Mapping[tuple[str, str], int]
    """(abstract syntax, transfer syntax) -> result/reason of every proposed pair (0: accepted)."""
    peer_max_pdu: int
    """The peer's Maximum Length Received (0: unlimited), PS3.8 D.1."""
    implementation_class_uid: str = ""
    implementation_version_name: str = ""

    def context_id(self, abstract_syntax: str, transfer_syntax: str) -> int | None:
        return self.contexts.get((abstract_syntax, transfer_syntax))

    def why_not(self, abstract_syntax: str, transfer_syntax: str) -> str:
        """The peer's answer to a pair, in PS3.8 Table 9-18 words."""
        result = self.results.get((abstract_syntax, transfer_syntax))
        if result is None:
            return "not proposed"
        return CONTEXT_RESULTS.get(result, f"result {result}")


def proposal(contexts: Sequence[tuple[str, Sequence[str]]]) -> list[tuple[int, str, str]]:
    """(context ID, abstract syntax, transfer syntax): one presentation context per
    pair, so the peer accepts or refuses each transfer syntax on its own."""
    pairs = list(dict.fromkeys((a, ts) for a, syntaxes in contexts for ts in syntaxes))
    if not pairs:
        raise ValueError("no presentation context to propose")
    if len(pairs) > MAX_CONTEXTS:
        raise ValueError(
            f"{len(pairs)} presentation contexts proposed; an association holds at most "
            f"{MAX_CONTEXTS} (odd IDs 1-255, PS3.8 9.3.2.2)"
        )
    return [(2 * n + 1, a, ts) for n, (a, ts) in enumerate(pairs)]


def encode_associate_rq(
    called_ae: str, calling_ae: str, proposed: Sequence[tuple[int, str, str]], max_pdu: int
) -> bytes:
    """A-ASSOCIATE-RQ (PS3.8 9.3.2): the contexts, Maximum Length Received, our
    implementation class UID and version name."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT_NAME
    primitive.calling_ae_title = calling_ae
    primitive.called_ae_title = called_ae
    contexts = []
    for context_id, abstract_syntax, transfer_syntax in proposed:
        cx = build_context(abstract_syntax, [transfer_syntax])
        cx.context_id = context_id
        contexts.append(cx)
    primitive.presentation_context_definition_list = contexts
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = max_pdu
    class_uid = ImplementationClassUIDNotification()
    class_uid.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    primitive.user_information = [max_length, class_uid, version]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def decode_associate_ac(pdu: bytes, proposed: Sequence[tuple[int, str, str]]) -> Negotiated:
    """The A-ASSOCIATE-AC's answer to each proposed context (PS3.8 9.3.3).

    An accepted context whose transfer syntax is not the one proposed is counted
    as refused: the peer cannot grant what was not asked for.
    """
    ac = A_ASSOCIATE_AC()
    try:
        ac.decode(pdu)
        primitive = ac.to_primitive()
    # NOTE: pynetdicom's decoders trust item lengths; whatever they raise on a
    # malformed AC means the same thing here: the peer's PDU is invalid.
    except Exception as exc:
        raise PeerProtocolError(
            f"cannot decode its A-ASSOCIATE-AC ({type(exc).__name__}: {exc})",
            ABORT_SOURCE_PROVIDER,
            ABORT_INVALID_PDU_PARAMETER_VALUE,
        ) from None
    by_id = {context_id: (a, ts) for context_id, a, ts in proposed}
    results = {(a, ts): 2 for _, a, ts in proposed}
    contexts: dict[tuple[str, str], int] = {}
    for cx in primitive.presentation_context_definition_results_list:
        pair = by_id.get(cx.context_id or 0)
        if pair is None:
            continue
        result = int(cx.result if cx.result is not None else 2)
        granted = [str(ts) for ts in cx.transfer_syntax]
        if result == CONTEXT_ACCEPTED and granted != [pair[1]]:
            result = 4
        results[pair] = result
        if result == CONTEXT_ACCEPTED:
            contexts[pair] = cx.context_id or 0
    peer = peer_user_information(primitive.user_information)
    return Negotiated(
        contexts,
        results,
        peer.max_pdu,
        peer.implementation_class_uid,
        peer.implementation_version_name,
    )


def a_abort(source: int, reason: int) -> bytes:
    """PS3.8 9.3.8: type 07, reserved, length 4, two reserved bytes, source, reason."""
    return struct.pack(">BBIBBBB", A_ABORT_TYPE, 0, 4, 0, 0, source, reason)


def command_pdus(context_id: int, command: bytes, max_pdu_length: int) -> bytes:
    """A command set as P-DATA-TF PDUs of one PDV each (PS3.8 9.3.5, E.2: MCH 01H,
    03H on the last fragment); one PDU unless the peer's maximum is tiny."""
    step = max_pdu_length - 6
    parts = []
    for start in range(0, len(command), step):
        fragment = command[start : start + step]
        mch = MCH_COMMAND | (MCH_LAST if start + step >= len(command) else 0)
        head = _PDATA_COMMAND.pack(
            P_DATA_TF, 0, len(fragment) + 6, len(fragment) + 2, context_id, mch
        )
        parts.append(head + fragment)
    return b"".join(parts)


# -- the requestor -------------------------------------------------------------------


class Requestor:
    """One established association (Sta6) to a peer; create it with :meth:`open`."""

    def __init__(
        self,
        sock: socket.socket,
        peer: str,
        proposed: Sequence[tuple[int, str, str]],
        max_pdu: int,
        network_timeout_s: float,
    ) -> None:
        self._sock: socket.socket | None = sock
        self._fd = sock.fileno()
        self._loop = asyncio.get_running_loop()
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
    ) -> Requestor:
        """Connect (Sta4) and negotiate (Sta5) an association; returns it in Sta6.

        ``contexts`` are (abstract syntax, [transfer syntaxes]); one presentation
        context is proposed per pair. ``max_pdu`` is our Maximum Length Received.
        Raises :class:`PeerUnreachable`, :class:`AssociationRejected`,
        :class:`AssociationAborted`, :class:`AssociationLost` or
        :class:`PeerProtocolError`.
        """
        proposed = proposal(contexts)
        rq = encode_associate_rq(called_ae, calling_ae, proposed, max_pdu)
        sock = await _connect(host, port, connect_timeout_s)
        requestor = cls(sock, f"{called_ae}@{host}:{port}", proposed, max_pdu, network_timeout_s)
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
        if pdu_type == A_ASSOCIATE_RJ_TYPE:
            # PS3.8 9.3.4: result, source and reason/diag at offsets 7, 8 and 9.
            raise AssociationRejected(pdu[7], pdu[8], pdu[9])
        if pdu_type != A_ASSOCIATE_AC_TYPE:
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
    ) -> tuple[int, str | None]:
        """C-STORE (PS3.7 9.3.1) of the ``length`` bytes at ``offset`` of the open
        file ``fd``, sent from an mmap of it; the (status, error comment) answered.

        The file must not be truncated while it is sent (stored files never are).
        """
        with _mapped(fd, offset, length) as data:
            return await self.c_store_bytes(context_id, sop_class_uid, sop_instance_uid, data)

    async def c_store_bytes(
        self,
        context_id: int,
        sop_class_uid: str,
        sop_instance_uid: str,
        data: bytes | memoryview,
    ) -> tuple[int, str | None]:
        """C-STORE (PS3.7 9.3.1) of a data set in memory (e.g. converted); the
        (status, error comment) answered."""
        if context_id not in self._accepted_ids:
            raise ValueError(f"presentation context {context_id} was not accepted by {self.peer}")
        with self._operation("sending a C-STORE-RQ"):
            message_id = self._next_message_id()
            command = encode_c_store_rq(message_id, sop_class_uid, sop_instance_uid)
            # PERF: MSG_MORE lets the command PDU share a segment with the data set.
            await self._send_bytes(
                command_pdus(context_id, command, self._max_pdu_length), socket.MSG_MORE
            )
            await self._send_dataset(context_id, data)
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
            await self._send_bytes(A_RELEASE_RQ)
            while True:
                pdu = await self._next_pdu("awaiting A-RELEASE-RP")
                if pdu[0] == A_RELEASE_RP_TYPE:
                    break
                if pdu[0] != A_RELEASE_RQ_TYPE:
                    raise self._unexpected(pdu, "awaiting A-RELEASE-RP")
                # Release collision (PS3.8 Sta9 -> Sta11): the requestor answers
                # first, then still awaits the peer's A-RELEASE-RP.
                await self._send_bytes(A_RELEASE_RP)
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
        if self._state != "Sta6" or self._sock is None:
            return False
        # NOTE: what arrived with the last reply was framed then and is held.
        pdus = list(self._pdus)
        self._pdus.clear()
        if not pdus and not self._framer.pending:
            try:
                data = self._sock.recv(RECV_BUFFER_SIZE)
            except BlockingIOError:
                return True
            except OSError:
                self._close()
                return False
            with contextlib.suppress(PDUError):
                pdus = self._framer.feed(data)
        # Unsolicited bytes (or EOF) in Sta6 with nothing outstanding end the association.
        if any(pdu[0] == A_RELEASE_RQ_TYPE for pdu in pdus):
            with contextlib.suppress(OSError):
                self._sock.send(A_RELEASE_RP)
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
        except (AssociationAborted, AssociationRejected):
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
            aborted = self._received_abort(during)
            self._close()
            if aborted is not None:
                raise aborted from exc
            raise AssociationLost(
                f"the connection to {self.peer} failed while {during}: {exc.strerror or exc}"
            ) from exc
        except BaseException:
            # Cancelled or a bug: what the peer saw is unknown, so end it outright.
            self._abort(ABORT_SOURCE_USER, ABORT_REASON_NOT_SPECIFIED)
            raise

    def _next_message_id(self) -> int:
        self._message_id = self._message_id % 0xFFFF + 1
        return self._message_id

    async def _send_bytes(self, data: bytes, flags: int = 0) -> None:
        assert self._sock is not None
        view = memoryview(data)
        while view:
            try:
                sent = self._sock.send(view, flags)
            except BlockingIOError:
                await self._writable()
                continue
            view = view[sent:]

    async def _send_dataset(self, context_id: int, data: bytes | memoryview) -> None:
        sender = DataSetSender(self._fd, data, self._max_pdu_length, context_id)
        try:
            while not sender.send():
                await self._writable()
            self.bytes_out += sender.sent
        finally:
            # NOTE: the sender holds data's buffer; an mmap cannot close until it is gone.
            del sender

    async def _writable(self) -> None:
        future = self._loop.create_future()
        self._loop.add_writer(self._fd, _resolve, future)
        try:
            async with asyncio.timeout(self._network_timeout_s):
                await future
        except TimeoutError:
            raise AssociationLost(
                f"{self.peer} accepted no data for network_timeout_s "
                f"({self._network_timeout_s:g} s)"
            ) from None
        finally:
            self._loop.remove_writer(self._fd)

    async def _next_pdu(self, waiting_for: str) -> bytes:
        assert self._sock is not None
        while not self._pdus:
            try:
                async with asyncio.timeout(self._network_timeout_s):
                    received = await self._loop.sock_recv_into(self._sock, self._buffer)
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
        if pdu[0] == A_ABORT_TYPE:
            # PS3.8 9.3.8: source and reason/diag at offsets 8 and 9.
            return AssociationAborted(pdu[8], pdu[9], waiting_for)
        name = PDU_NAMES.get(pdu[0], f"PDU type 0x{pdu[0]:02X}")
        return PeerProtocolError(
            f"it sent {name} while {waiting_for} ({self._state})",
            ABORT_SOURCE_PROVIDER,
            ABORT_UNEXPECTED_PDU,
        )

    def _received_abort(self, during: str) -> AssociationAborted | None:
        """An A-ABORT the peer sent before the connection failed, if it is readable.

        NOTE: a peer that aborts while we are sending makes our send fail with
        EPIPE/ECONNRESET; its A-ABORT, if it arrived, says why.
        """
        if self._sock is None:
            return None
        with contextlib.suppress(OSError, PDUError):
            received = self._sock.recv_into(self._buffer)
            self._pdus.extend(self._framer.feed(self._view[:received]))
        for pdu in self._pdus:
            if pdu[0] == A_ABORT_TYPE:
                return AssociationAborted(pdu[8], pdu[9], during)
        return None

    def _abort(self, source: int, reason: int) -> None:
        """AA-1: send A-ABORT (best effort) and close the transport."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.send(a_abort(source, reason))
        self._close()

    def _close(self) -> None:
        self._state = "Sta1"
        sock, self._sock = self._sock, None
        if sock is None:
            return
        # NOTE: closing with unread input makes the kernel send RST, which can
        # destroy the A-ABORT/A-RELEASE-RP just written; read what is there first.
        with contextlib.suppress(OSError):
            while sock.recv_into(self._buffer):
                pass
        sock.close()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _connect(host: str, port: int, timeout_s: float) -> socket.socket:
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
