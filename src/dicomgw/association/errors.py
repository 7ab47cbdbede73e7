"""Why an association the requestor (SCU side) asked for could not be set up or broke.

Every one is an :class:`AssociationError`: nothing more can be sent on that
association. ``transient`` says whether trying again later may succeed.
"""

from __future__ import annotations

from dicomgw.errors import DicomGwError
from dicomgw.ul.pdu import (
    ABORT_REASON_NOT_SPECIFIED,
    ABORT_REASONS,
    ABORT_SOURCE_PROVIDER,
    ABORT_SOURCE_USER,
    RESULT_TRANSIENT,
    RJ_REASONS,
    RJ_SOURCES,
)


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
        why = RJ_REASONS.get((source, reason), f"reason {reason}")
        who = RJ_SOURCES.get(source, f"source {source}")
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
        why = ABORT_REASONS.get(reason, f"reason {reason}")
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
