"""dicom-gw's exceptions.

Each exception carries the fields an operator needs and knows what it maps to on
the wire (A-ABORT reason, DIMSE status) or at the command line (exit code), so
callers never parse messages.
"""

from __future__ import annotations

from dicomgw.ul.pdu import (
    ABORT_INVALID_PDU_PARAMETER_VALUE,
    ABORT_REASON_NOT_SPECIFIED,
    ABORT_UNEXPECTED_PDU,
    ABORT_UNRECOGNIZED_PDU,
)

EXIT_RUNTIME = 1
EXIT_USAGE = 2


class DicomGwError(Exception):
    """Base class: the message is one line that says what is wrong and what to do."""

    exit_code = EXIT_RUNTIME


# -- configuration -----------------------------------------------------------


class ConfigError(DicomGwError):
    """A configuration value is missing, unknown or out of range."""

    exit_code = EXIT_USAGE

    def __init__(self, key: str, problem: str, value: object = None, source: str = "") -> None:
        self.key = key
        self.problem = problem
        self.value = value
        self.source = source
        where = f" (from {source})" if source else ""
        shown = f" {value!r}" if value is not None else ""
        super().__init__(f"config key '{key}'{where}:{shown} {problem}".replace(":  ", ": "))


# -- DICOM Upper Layer (PS3.8) -------------------------------------------------


class PDUError(DicomGwError):
    """A received PDU is malformed; the association is aborted (A-P-ABORT)."""

    abort_reason = ABORT_REASON_NOT_SPECIFIED


class UnrecognizedPDU(PDUError):
    abort_reason = ABORT_UNRECOGNIZED_PDU

    def __init__(self, pdu_type: int) -> None:
        self.pdu_type = pdu_type
        super().__init__(f"unrecognized PDU type 0x{pdu_type:02X}")


class UnexpectedPDU(PDUError):
    """A valid PDU that the current state does not allow (PS3.8 9.2, AA-1/AA-8)."""

    abort_reason = ABORT_UNEXPECTED_PDU

    def __init__(self, pdu_type: int, state: str) -> None:
        self.pdu_type = pdu_type
        self.state = state
        super().__init__(f"PDU type 0x{pdu_type:02X} is not allowed {state}")


class PDUTooLarge(PDUError):
    abort_reason = ABORT_INVALID_PDU_PARAMETER_VALUE

    def __init__(self, pdu_type: int, pdu_length: int, max_pdu_length: int) -> None:
        self.pdu_type = pdu_type
        self.pdu_length = pdu_length
        self.max_pdu_length = max_pdu_length
        super().__init__(
            f"PDU type 0x{pdu_type:02X} length {pdu_length} exceeds the maximum {max_pdu_length}"
        )


class InvalidPDU(PDUError):
    """A PDU whose fields contradict each other (lengths, reserved values)."""

    abort_reason = ABORT_INVALID_PDU_PARAMETER_VALUE

    def __init__(self, pdu_type: int, problem: str) -> None:
        self.pdu_type = pdu_type
        self.problem = problem
        super().__init__(f"invalid PDU type 0x{pdu_type:02X}: {problem}")


class DataSetTooLarge(PDUError):
    """A data set past ``dimse.max_instance_bytes``: its association is aborted
    while it streams, and what was written of it is removed."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        super().__init__(f"a data set larger than dimse.max_instance_bytes ({max_bytes} bytes)")


# -- storage -------------------------------------------------------------------


class StorageError(DicomGwError):
    """The storage root cannot be used."""


class StorageNotWritable(StorageError):
    def __init__(self, path: str, user: str, reason: str) -> None:
        self.path = path
        self.user = user
        super().__init__(
            f"storage path '{path}' is not writable by user {user}: {reason}; "
            f"fix its owner/mode or set storage.root to a writable directory"
        )


# -- database ------------------------------------------------------------------


class DatabaseError(DicomGwError):
    """The database cannot be reached, started or migrated."""


class AlreadyRunning(DicomGwError):
    def __init__(self, state_dir: str, pid: int | None) -> None:
        self.state_dir = state_dir
        self.pid = pid
        who = f" (pid {pid})" if pid else ""
        super().__init__(
            f"dicom-gw is already running on state dir '{state_dir}'{who}; "
            f"stop it first or use another state_dir"
        )


# -- DICOM data sets -----------------------------------------------------------


class MalformedDataSet(DicomGwError):
    """A received data set's encoding (PS3.5 7) is broken where it was scanned."""

    # PS3.4 B.2.3: C-STORE failure "Cannot understand" (C000-CFFF).
    dimse_status = 0xC000

    def __init__(self, offset: int, problem: str) -> None:
        self.offset = offset
        self.problem = problem
        super().__init__(f"malformed data set at byte {offset}: {problem}")
