"""PDU types, the fixed PDUs and the small PDUs dicom-gw builds itself (PS3.8 9.3).

The A-ASSOCIATE PDUs' variable items are encoded and decoded with pynetdicom's
codecs (``dicomgw.association.codec``, ``dicomgw.association.negotiation``).
"""

from __future__ import annotations

import struct

# PS3.8 9.3.1: PDU types.
A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07
PDU_NAMES = {
    A_ASSOCIATE_RQ: "A-ASSOCIATE-RQ",
    A_ASSOCIATE_AC: "A-ASSOCIATE-AC",
    A_ASSOCIATE_RJ: "A-ASSOCIATE-RJ",
    P_DATA_TF: "P-DATA-TF",
    A_RELEASE_RQ: "A-RELEASE-RQ",
    A_RELEASE_RP: "A-RELEASE-RP",
    A_ABORT: "A-ABORT",
}

# PS3.8 9.3.6/9.3.7: type, reserved, PDU-length 4, four reserved bytes.
A_RELEASE_RQ_PDU = bytes.fromhex("05 00 00000004 00000000")
A_RELEASE_RP_PDU = bytes.fromhex("06 00 00000004 00000000")

# PS3.8 9.3.5, E.2: message control header bits.
MCH_COMMAND = 0x01
MCH_LAST = 0x02

# PS3.8 9.3.5 Tables 9-22, 9-23: a P-DATA-TF of one PDV, up to its fragment: PDU-type,
# reserved, PDU-length, then PDV item-length, presentation-context-ID and the
# message control header (E.2).
PDATA_HEADERS = struct.Struct(">BBIIBB")
PDATA_HEADERS_LENGTH = PDATA_HEADERS.size  # 12
# Room for the PDU and PDV headers on top of a negotiated Maximum Length Received.
PDATA_MARGIN = 64

# PS3.8 9.3.8 Table 9-26: A-ABORT source.
ABORT_SOURCE_USER = 0
ABORT_SOURCE_PROVIDER = 2
# PS3.8 9.3.8 Table 9-26: A-ABORT reason/diag (meaningful for source 2 only).
ABORT_REASON_NOT_SPECIFIED = 0
ABORT_UNRECOGNIZED_PDU = 1
ABORT_UNEXPECTED_PDU = 2
ABORT_UNRECOGNIZED_PDU_PARAMETER = 4
ABORT_UNEXPECTED_PDU_PARAMETER = 5
ABORT_INVALID_PDU_PARAMETER_VALUE = 6
ABORT_REASONS = {
    ABORT_REASON_NOT_SPECIFIED: "reason-not-specified",
    ABORT_UNRECOGNIZED_PDU: "unrecognized-PDU",
    ABORT_UNEXPECTED_PDU: "unexpected-PDU",
    ABORT_UNRECOGNIZED_PDU_PARAMETER: "unrecognized-PDU-parameter",
    ABORT_UNEXPECTED_PDU_PARAMETER: "unexpected-PDU-parameter",
    ABORT_INVALID_PDU_PARAMETER_VALUE: "invalid-PDU-parameter-value",
}

# PS3.8 9.3.4 Table 9-21: A-ASSOCIATE-RJ result, source and reason/diag.
RESULT_PERMANENT = 1
RESULT_TRANSIENT = 2
SOURCE_SERVICE_USER = 1
SOURCE_ACSE = 2
SOURCE_PRESENTATION = 3
REASON_NO_REASON = 1
REASON_APPLICATION_CONTEXT_NOT_SUPPORTED = 2
REASON_CALLING_AE_NOT_RECOGNIZED = 3
REASON_CALLED_AE_NOT_RECOGNIZED = 7
REASON_PROTOCOL_VERSION_NOT_SUPPORTED = 2  # with SOURCE_ACSE
REASON_TEMPORARY_CONGESTION = 1  # with SOURCE_PRESENTATION
REASON_LOCAL_LIMIT_EXCEEDED = 2  # with SOURCE_PRESENTATION
RJ_SOURCES = {
    1: "DICOM UL service-user",
    2: "DICOM UL service-provider (ACSE related function)",
    3: "DICOM UL service-provider (presentation related function)",
}
RJ_REASONS = {
    (1, 1): "no-reason-given",
    (1, 2): "application-context-name-not-supported",
    (1, 3): "calling-AE-title-not-recognized",
    (1, 7): "called-AE-title-not-recognized",
    (2, 1): "no-reason-given",
    (2, 2): "protocol-version-not-supported",
    (3, 1): "temporary-congestion",
    (3, 2): "local-limit-exceeded",
}

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


def a_abort(source: int, reason: int) -> bytes:
    """PS3.8 9.3.8: type 07, reserved, length 4, two reserved bytes, source, reason."""
    return struct.pack(">BBIBBBB", A_ABORT, 0, 4, 0, 0, source, reason)


def p_data_headers(context_id: int, mch: int, fragment_length: int) -> bytes:
    """The 12 bytes before a fragment sent as a P-DATA-TF of one PDV (PS3.8 9.3.5)."""
    return PDATA_HEADERS.pack(
        P_DATA_TF, 0, fragment_length + 6, fragment_length + 2, context_id, mch
    )


def p_data_command(context_id: int, command: bytes) -> bytes:
    """One P-DATA-TF with one PDV: the whole command set, last fragment."""
    return p_data_headers(context_id, MCH_COMMAND | MCH_LAST, len(command)) + command


UNLIMITED_FRAGMENT = 1 << 20
"""Fragment size for a peer that set no Maximum Length Received (0: unlimited)."""


def p_data_dataset(context_id: int, data: bytes, peer_max_pdu: int, *, last: bool = True) -> bytes:
    """A data set (or, with ``last`` False, a piece of one) as P-DATA-TFs of one
    PDV each, each within the peer's Maximum Length Received (PS3.8 D.1: it bounds
    the PDU-length, 6 bytes of which are the PDV's item length, context ID and
    message control header)."""
    size = peer_max_pdu - 6 if peer_max_pdu else UNLIMITED_FRAGMENT
    view = memoryview(data)
    out = []
    for start in range(0, max(len(data), 1), size):
        fragment = view[start : start + size]
        end = last and start + size >= len(data)
        out.append(p_data_headers(context_id, MCH_LAST if end else 0, len(fragment)))
        out.append(bytes(fragment))
    return b"".join(out)
