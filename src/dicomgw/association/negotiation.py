"""Association negotiation as acceptor (PS3.8 7.1, 9.3.2-9.3.4; PS3.7 Annex D).

Pure functions from an A-ASSOCIATE-RQ PDU to the A-ASSOCIATE-AC or -RJ to send.
PDU item codecs and presentation context negotiation are pynetdicom's; what is
dicom-gw's own is the policy: which AE titles, how many associations, which
SOP classes and transfer syntaxes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pydicom.uid import UID
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    AsynchronousOperationsWindowNegotiation,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor
from pynetdicom.service_class import ServiceClass, StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

from dicomgw.config import DimseConfig
from dicomgw.errors import PDUError
from dicomgw.ul.pdu import (
    ABORT_INVALID_PDU_PARAMETER_VALUE,
    REASON_APPLICATION_CONTEXT_NOT_SUPPORTED,
    REASON_CALLED_AE_NOT_RECOGNIZED,
    REASON_CALLING_AE_NOT_RECOGNIZED,
    REASON_LOCAL_LIMIT_EXCEEDED,
    RESULT_PERMANENT,
    RESULT_TRANSIENT,
    SOURCE_PRESENTATION,
    SOURCE_SERVICE_USER,
)
from dicomgw.ul.uids import (
    APPLICATION_CONTEXT_NAME,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    IMPLICIT_VR_LITTLE_ENDIAN,
    QUERY_RETRIEVE_SOP_CLASSES,
    STORAGE_COMMITMENT_PUSH,
    VERIFICATION_SOP_CLASS,
    is_valid_uid,
)


class InvalidAssociateRQ(PDUError):
    abort_reason = ABORT_INVALID_PDU_PARAMETER_VALUE

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(f"invalid A-ASSOCIATE-RQ: {problem}")


@dataclass(frozen=True, slots=True)
class Rejection:
    result: int
    source: int
    reason: int
    why: str

    def encode(self) -> bytes:
        pdu = A_ASSOCIATE_RJ()
        pdu.result, pdu.source, pdu.reason_diagnostic = self.result, self.source, self.reason
        return bytes(pdu.encode())


_SMALL_DATA_SETS = QUERY_RETRIEVE_SOP_CLASSES | {STORAGE_COMMITMENT_PUSH}
"""Identifiers and action information, parsed with pydicom (little endian only)."""
_NOT_STORAGE = _SMALL_DATA_SETS | {VERIFICATION_SOP_CLASS}


@dataclass(frozen=True, slots=True)
class AcceptedContext:
    context_id: int
    abstract_syntax: str
    transfer_syntax: str
    is_storage: bool
    as_scu: bool = False
    """dicom-gw may send requests of this SOP class on it (the peer took the SCP role)."""
    as_scp: bool = True
    """dicom-gw serves the peer's requests on it (the default role)."""


@dataclass(frozen=True, slots=True)
class Acceptance:
    calling_ae_title: str
    called_ae_title: str
    peer_max_pdu: int
    """Largest P-DATA-TF the peer accepts (0: unlimited), PS3.8 D.1."""
    contexts: dict[int, AcceptedContext]
    ac_pdu: bytes
    rejected_contexts: int = 0
    implementation_class_uid: str = ""
    implementation_version_name: str = ""


@dataclass(slots=True)
class Request:
    """What the A-ASSOCIATE-RQ asked for, decoded once."""

    calling_ae_title: str
    called_ae_title: str
    primitive: A_ASSOCIATE = field(repr=False)

    @classmethod
    def decode(cls, pdu: bytes) -> Request:
        rq = A_ASSOCIATE_RQ()
        try:
            rq.decode(pdu)
            primitive = rq.to_primitive()
        # NOTE: pynetdicom's decoders trust item lengths; a lying length surfaces
        # as struct.error, IndexError, ValueError, ... At this untrusted boundary
        # every one of them means "malformed PDU" (A-ABORT), never a crash.
        except Exception as exc:
            raise InvalidAssociateRQ(f"cannot decode it ({type(exc).__name__}: {exc})") from None
        if not primitive.presentation_context_definition_list:
            raise InvalidAssociateRQ("no presentation context items")
        return cls(
            calling_ae_title=str(primitive.calling_ae_title).strip(),
            called_ae_title=str(primitive.called_ae_title).strip(),
            primitive=primitive,
        )


def check_access(request: Request, config: DimseConfig) -> Rejection | None:
    """Called/calling AE title policy (PS3.8 9.3.4 reasons 3 and 7)."""
    primitive = request.primitive
    if str(primitive.application_context_name) != APPLICATION_CONTEXT_NAME:
        return Rejection(
            RESULT_PERMANENT,
            SOURCE_SERVICE_USER,
            REASON_APPLICATION_CONTEXT_NOT_SUPPORTED,
            f"application context {primitive.application_context_name} is not DICOM's",
        )
    if config.require_called_ae_title and request.called_ae_title != config.ae_title.strip():
        return Rejection(
            RESULT_PERMANENT,
            SOURCE_SERVICE_USER,
            REASON_CALLED_AE_NOT_RECOGNIZED,
            f"called AE title '{request.called_ae_title}' is not ours ('{config.ae_title}')",
        )
    allowed = {ae.strip() for ae in config.allowed_calling_ae_titles}
    if allowed and request.calling_ae_title not in allowed:
        return Rejection(
            RESULT_PERMANENT,
            SOURCE_SERVICE_USER,
            REASON_CALLING_AE_NOT_RECOGNIZED,
            f"calling AE title '{request.calling_ae_title}' is not in "
            "dimse.allowed_calling_ae_titles",
        )
    return None


def limit_rejection(why: str) -> Rejection:
    """Too many associations: transient, so the peer retries later."""
    return Rejection(RESULT_TRANSIENT, SOURCE_PRESENTATION, REASON_LOCAL_LIMIT_EXCEEDED, why)


def _is_storage(abstract_syntax: str) -> bool:
    # Known storage classes, and classes pynetdicom does not know (private
    # storage SOP classes of modalities); known non-storage services are refused.
    service = uid_to_service_class(UID(abstract_syntax))
    return service is StorageServiceClass or service is ServiceClass


def may_query(calling_ae_title: str, config: DimseConfig) -> bool:
    """Whether this peer may query and retrieve what is stored (``dimse.query_ae_titles``)."""
    allowed = {ae.strip() for ae in config.query_ae_titles}
    return "*" in allowed or calling_ae_title in allowed


# NOTE: identifiers are small and parsed with pydicom: the two little endian
# syntaxes every requestor proposes are enough (PS3.5 10.1 makes implicit the default).
_QUERY_SYNTAXES = (IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN)


def _supported_contexts(
    proposed: Iterable[PresentationContext], config: DimseConfig, calling_ae_title: str
) -> list[PresentationContext]:
    """Acceptor contexts for what was proposed: our policy over the proposal.

    A requestor may propose one SOP class in several contexts, one transfer
    syntax each (modalities, storescu's fallbacks): every syntax proposed for a
    class counts, so pynetdicom can accept each of those contexts with its own.
    """
    allowed_sop = set(config.accepted_sop_classes)
    allowed_ts = list(config.accepted_transfer_syntaxes)
    query = may_query(calling_ae_title, config)
    proposed_ts: dict[str, list[str]] = {}
    for rq in proposed:
        uid = str(rq.abstract_syntax)
        if not is_valid_uid(uid):
            continue
        if uid in QUERY_RETRIEVE_SOP_CLASSES:
            if not query:
                continue
        elif uid not in (VERIFICATION_SOP_CLASS, STORAGE_COMMITMENT_PUSH):
            if allowed_sop and uid not in allowed_sop:
                continue
            if not allowed_sop and not _is_storage(uid):
                continue
        syntaxes = proposed_ts.setdefault(uid, [])
        syntaxes.extend(
            str(ts)
            for ts in rq.transfer_syntax
            if is_valid_uid(str(ts)) and str(ts) not in syntaxes
        )
    supported = []
    for uid, syntaxes in proposed_ts.items():
        cx = PresentationContext()
        cx.abstract_syntax = UID(uid)
        # NOTE: the data set is stored as received, so any transfer syntax costs
        # the same; by default take the requestor's first (its preference).
        preferred = _QUERY_SYNTAXES if uid in _SMALL_DATA_SETS else allowed_ts or syntaxes
        cx.transfer_syntax = [ts for ts in preferred if ts in syntaxes]
        if cx.transfer_syntax:
            # A peer that may retrieve may take the SCP role for storage (PS3.7
            # D.3.3.4): C-GET's C-STOREs come back on its association. Others keep
            # the default roles (their role selection items are not agreed to).
            storage = query and uid not in _NOT_STORAGE
            cx.scu_role, cx.scp_role = (True, True) if storage else (None, None)
            supported.append(cx)
    return supported


@dataclass(frozen=True, slots=True)
class PeerUserInformation:
    """What the peer's User Information item (PS3.8 9.3.2.3 / D.3.3) says of it."""

    max_pdu: int
    """Maximum Length Received; 0: no limit."""
    implementation_class_uid: str
    implementation_version_name: str
    async_ops_requested: bool


def peer_user_information(items: Iterable[object]) -> PeerUserInformation:
    """Read the sub-items of an A-ASSOCIATE-RQ or -AC that both sides care about."""
    max_pdu, class_uid, version, async_ops = 0, "", "", False
    for item in items:
        if isinstance(item, MaximumLengthNotification):
            max_pdu = int(item.maximum_length_received or 0)
        elif isinstance(item, ImplementationClassUIDNotification):
            class_uid = str(item.implementation_class_uid or "")
        elif isinstance(item, ImplementationVersionNameNotification):
            version = str(item.implementation_version_name or "")
        elif isinstance(item, AsynchronousOperationsWindowNegotiation):
            async_ops = True
    return PeerUserInformation(max_pdu, class_uid, version, async_ops)


def negotiate(request: Request, config: DimseConfig, max_pdu: int) -> Acceptance:
    """Presentation contexts, roles, max PDU, async ops: the A-ASSOCIATE-AC."""
    primitive = request.primitive
    proposed = primitive.presentation_context_definition_list
    roles = {
        UID(item.sop_class_uid): (item.scu_role, item.scp_role)
        for item in primitive.user_information
        if isinstance(item, SCP_SCU_RoleSelectionNegotiation) and item.sop_class_uid
    }
    results, role_replies = negotiate_as_acceptor(
        proposed,
        _supported_contexts(proposed, config, request.calling_ae_title),
        roles or None,
    )
    peer = peer_user_information(primitive.user_information)

    accepted = {
        (cx.context_id or 0): AcceptedContext(
            context_id=cx.context_id or 0,
            abstract_syntax=str(cx.abstract_syntax),
            transfer_syntax=str(cx.transfer_syntax[0]),
            is_storage=str(cx.abstract_syntax) not in _NOT_STORAGE,
            as_scu=bool(cx.as_scu),
            as_scp=bool(cx.as_scp),
        )
        for cx in results
        if cx.result == 0x00
    }

    ac = A_ASSOCIATE()
    ac.application_context_name = UID(APPLICATION_CONTEXT_NAME)
    ac.calling_ae_title = primitive.calling_ae_title
    ac.called_ae_title = primitive.called_ae_title
    ac.result = 0x00
    ac.result_source = 0x01
    ac.presentation_context_definition_results_list = results
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = max_pdu
    class_uid = ImplementationClassUIDNotification()
    class_uid.implementation_class_uid = UID(IMPLEMENTATION_CLASS_UID)
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    # One operation at a time each way (PS3.7 D.3.3.3): we answer in order.
    window = AsynchronousOperationsWindowNegotiation()
    window.maximum_number_operations_invoked = 1
    window.maximum_number_operations_performed = 1
    ac.user_information = [
        max_length,
        class_uid,
        version,
        *role_replies,
        *([window] if peer.async_ops_requested else []),
    ]
    pdu = A_ASSOCIATE_AC()
    pdu.from_primitive(ac)
    return Acceptance(
        calling_ae_title=request.calling_ae_title,
        called_ae_title=request.called_ae_title,
        peer_max_pdu=peer.max_pdu,
        contexts=accepted,
        ac_pdu=bytes(pdu.encode()),
        rejected_contexts=len(results) - len(accepted),
        implementation_class_uid=peer.implementation_class_uid,
        implementation_version_name=peer.implementation_version_name,
    )
