"""Why an association the requestor (SCU side) asked for could not be set up or broke.

Every one is an :class:`AssociationError`: nothing more can be sent on that
association. ``transient`` says whether trying again later may succeed.
"""

from __future__ import annotations

from dicomgw.association.negotiation import RESULT_TRANSIENT
from dicomgw.errors import ABORT_REASON_NOT_SPECIFIED, DicomGwError

# PS3.8 9.3.8 Table 9-26: A-ABORT source.
ABORT_SOURCE_USER = 0
ABORT_SOURCE_PROVIDER = 2

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


class TLSFailed(AssociationError):
    """The TLS layer (PS3.15 Annex B, BCP 195) failed: the handshake, a certificate on either
    side, or a TLS alert later on.

    ``kind`` says which, for a hint about the configuration: ``peer-certificate``
    (we did not accept the peer's certificate), ``peer-name`` (it does not name the
    host we connected to), ``certificate-required`` (the peer wants a client
    certificate), ``certificate-refused`` (the peer did not accept ours),
    ``refused`` (another handshake alert), ``not-tls`` (the port does not speak
    TLS), ``version`` (no TLS version in common), ``broken`` (after the handshake).
    """

    def __init__(self, peer: str, problem: str, kind: str) -> None:
        self.peer = peer
        self.problem = problem
        self.kind = kind
        super().__init__(f"TLS with {peer} failed: {problem}")


class TLSConfigError(AssociationError):
    """A file of the local TLS set-up (CA, certificate, key) is missing or unusable.

    Transient: the files can be fixed while jobs wait; nothing was sent.
    """

    def __init__(self, owner: str, key: str, path: str, problem: str) -> None:
        self.owner = owner
        self.key = key
        self.path = path
        self.problem = problem
        super().__init__(f"{owner}: {key} '{path}' {problem}")


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
