"""The PDUs of the requestor side (PS3.8 9.3): the A-ASSOCIATE-RQ it sends, the
A-ASSOCIATE-AC it decodes, A-ABORT, A-RELEASE and command P-DATA-TF PDUs.

Pure functions over bytes; the A-ASSOCIATE item codecs are pynetdicom's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context

from dicomgw.association.errors import PeerProtocolError
from dicomgw.association.negotiation import peer_user_information
from dicomgw.ul.pdu import (
    ABORT_INVALID_PDU_PARAMETER_VALUE,
    ABORT_SOURCE_PROVIDER,
    CONTEXT_ACCEPTED,
    CONTEXT_RESULTS,
    MAX_CONTEXTS,
    MCH_COMMAND,
    MCH_LAST,
    P_DATA_TF,
    PDATA_HEADERS,
    p_data_headers,
)
from dicomgw.ul.uids import (
    APPLICATION_CONTEXT_NAME,
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
)


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


def command_pdus(context_id: int, command: bytes, max_pdu_length: int) -> bytes:
    """A command set as P-DATA-TF PDUs of one PDV each (PS3.8 9.3.5, E.2: MCH 01H,
    03H on the last fragment); one PDU unless the peer's maximum is tiny."""
    step = max_pdu_length - 6
    parts = []
    for start in range(0, len(command), step):
        fragment = command[start : start + step]
        mch = MCH_COMMAND | (MCH_LAST if start + step >= len(command) else 0)
        parts.append(p_data_headers(context_id, mch, len(fragment)) + fragment)
    return b"".join(parts)


class DataSetPacker:
    """A data set's P-DATA-TF PDUs (PS3.8 9.3.5, Annex E) copied into a buffer, a
    buffer-full at a time: the bytes :class:`~dicomgw._core.DataSetSender` writes.

    For a transport that cannot take the stored file's pages directly (TLS: every
    byte goes through the cipher anyway), so one copy into a reused buffer costs
    little and the cipher gets large writes. One PDV per PDU, each as large as the
    peer's Maximum Length Received allows (PS3.8 D.1: PDU-length counts the 6-byte
    PDV header); the last has the last-fragment bit; a zero-length data set is one
    empty last PDV. A PDU may straddle two buffer-fulls; its 12 header bytes never do.
    """

    def __init__(self, data: bytes | memoryview, max_pdu_length: int, context_id: int) -> None:
        if max_pdu_length <= 6:
            raise ValueError(f"max_pdu_length {max_pdu_length} leaves no room for data")
        self._data = memoryview(data)
        self._length = len(self._data)
        self._max_fragment = max_pdu_length - 6
        self._context_id = context_id
        self._left = 0
        """Bytes of the current PDU's fragment not copied yet."""
        self._started = False
        self.pos = 0
        """Data set bytes copied so far."""

    @property
    def done(self) -> bool:
        return self._started and self._left == 0 and self.pos == self._length

    def fill(self, out: memoryview, start: int = 0) -> int:
        """Copies the next PDU bytes into ``out[start:]``; returns where they end
        (``start`` once :attr:`done`)."""
        at, end = start, len(out)
        while True:
            if self._left == 0:
                if self.done or end - at < PDATA_HEADERS.size:
                    return at
                fragment = min(self._max_fragment, self._length - self.pos)
                last = self.pos + fragment == self._length
                PDATA_HEADERS.pack_into(
                    out,
                    at,
                    P_DATA_TF,
                    0,
                    fragment + 6,
                    fragment + 2,
                    self._context_id,
                    MCH_LAST if last else 0,
                )
                at += PDATA_HEADERS.size
                self._left = fragment
                self._started = True
            n = min(self._left, end - at)
            if n == 0:
                # out is full, or that was a zero-length data set's empty last PDV.
                return at
            out[at : at + n] = self._data[self.pos : self.pos + n]
            at += n
            self.pos += n
            self._left -= n
