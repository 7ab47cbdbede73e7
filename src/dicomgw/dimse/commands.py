"""DIMSE command sets: decode any, encode C-ECHO and C-STORE (PS3.7 6.3, 9.3, Annex E).

A command set is group 0000 only, always Implicit VR Little Endian (PS3.7
6.3.1): each element is tag group (2 bytes LE), tag element (2 bytes LE), value
length (4 bytes LE), value. The first element is (0000,0000) Command Group
Length, UL, the byte length of everything after it. Elements ascend by tag and
occur once (PS3.5 7.1).

Decoding runs once per message in plain Python, so it is one
``struct.unpack_from`` per element and a table lookup; the elements dicom-gw
does not use (retired ones, N-service ones) are skipped.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from dicomgw.dimse.status import (
    CANCEL,
    INVALID_OBJECT_INSTANCE,
    MISTYPED_ARGUMENT,
    PENDING,
    PENDING_WARNING,
    SOP_CLASS_NOT_SUPPORTED,
    SUCCESS,
)
from dicomgw.errors import DicomGwError
from dicomgw.ul.uids import VERIFICATION_SOP_CLASS, is_valid_uid

# -- PS3.7 E.1 Table E.1-1: Command Field values --------------------------------
C_STORE_RQ: Final = 0x0001
C_STORE_RSP: Final = 0x8001
C_GET_RQ: Final = 0x0010
C_GET_RSP: Final = 0x8010
C_FIND_RQ: Final = 0x0020
C_FIND_RSP: Final = 0x8020
C_MOVE_RQ: Final = 0x0021
C_MOVE_RSP: Final = 0x8021
C_ECHO_RQ: Final = 0x0030
C_ECHO_RSP: Final = 0x8030
C_CANCEL_RQ: Final = 0x0FFF
N_EVENT_REPORT_RQ: Final = 0x0100
N_EVENT_REPORT_RSP: Final = 0x8100
N_ACTION_RQ: Final = 0x0130
N_ACTION_RSP: Final = 0x8130
RESPONSE_BIT: Final = 0x8000

# Command Data Set Type (0000,0800): 0101 means no data set, anything else one follows.
NO_DATA_SET: Final = 0x0101
DATA_SET_PRESENT: Final = 0x0001

# Priority (0000,0700), PS3.7 9.1.1.1.5.
PRIORITY_MEDIUM: Final = 0x0000
PRIORITY_HIGH: Final = 0x0001
PRIORITY_LOW: Final = 0x0002

MAX_ERROR_COMMENT: Final = 64  # LO, PS3.5 6.2

# Element numbers in group 0000 (PS3.7 E.1 Table E.1-1).
_GROUP_LENGTH = 0x0000
_AFFECTED_SOP_CLASS_UID = 0x0002
_REQUESTED_SOP_CLASS_UID = 0x0003
_COMMAND_FIELD = 0x0100
_MESSAGE_ID = 0x0110
_MESSAGE_ID_BEING_RESPONDED_TO = 0x0120
_MOVE_DESTINATION = 0x0600
_PRIORITY = 0x0700
_COMMAND_DATA_SET_TYPE = 0x0800
_STATUS = 0x0900
_ERROR_COMMENT = 0x0902
_AFFECTED_SOP_INSTANCE_UID = 0x1000
_REQUESTED_SOP_INSTANCE_UID = 0x1001
_EVENT_TYPE_ID = 0x1002
_ACTION_TYPE_ID = 0x1008
_MOVE_ORIGINATOR_AE_TITLE = 0x1030
_MOVE_ORIGINATOR_MESSAGE_ID = 0x1031
_REMAINING = 0x1020
_COMPLETED = 0x1021
_FAILED = 0x1022
_WARNING = 0x1023

_HEADER = struct.Struct("<HHI")
_UL_ELEMENT = struct.Struct("<HHII")
_US_ELEMENT = struct.Struct("<HHIH")
_US = struct.Struct("<H")
_UL = struct.Struct("<I")
_MAX_AE = 16
# LO (PS3.5 6.2): default repertoire, no backslash, no control characters.
_LO_UNSAFE = str.maketrans({chr(c): " " for c in (*range(32), 0x5C, 0x7F)})


class CommandError(DicomGwError):
    """A received command set is malformed (PS3.7 6.3, Annex E).

    ``status`` is what to answer with when ``command_field`` and ``message_id``
    were read before the problem (PS3.7 C.5: 0212 mistyped argument for
    encoding errors and missing elements, 0117 invalid SOP instance, 0122 SOP
    class not supported); without them no response can be addressed and the
    association is aborted instead.
    """

    def __init__(
        self,
        problem: str,
        status: int = MISTYPED_ARGUMENT,
        command_field: int | None = None,
        message_id: int | None = None,
    ) -> None:
        self.problem = problem
        self.status = status
        self.command_field = command_field
        self.message_id = message_id
        super().__init__(f"malformed DIMSE command set: {problem}")


@dataclass(frozen=True, slots=True)
class Command:
    """The command set elements dicom-gw uses; absent ones are ``None``."""

    command_field: int
    message_id: int | None
    message_id_being_responded_to: int | None
    affected_sop_class_uid: str | None
    affected_sop_instance_uid: str | None
    command_data_set_type: int
    priority: int | None
    move_originator_ae_title: str | None
    move_originator_message_id: int | None
    status: int | None
    error_comment: str | None
    move_destination: str | None = None
    """C-MOVE-RQ: the AE title to send the instances to (PS3.7 9.3.4.1)."""
    requested_sop_class_uid: str | None = None
    requested_sop_instance_uid: str | None = None
    """N-ACTION-RQ (and other DIMSE-N requests): the SOP instance acted on (PS3.7 10.3)."""
    event_type_id: int | None = None
    action_type_id: int | None = None

    @property
    def has_data_set(self) -> bool:
        """PS3.7 E.1: any Command Data Set Type other than 0101 announces a data set."""
        return self.command_data_set_type != NO_DATA_SET

    @property
    def is_response(self) -> bool:
        return bool(self.command_field & RESPONSE_BIT)


# Indices into the value list that becomes Command(*values), in field order.
(_CF, _MID, _MIDR, _CUID, _IUID, _CDST, _PRIO, _MAE, _MMID, _STAT, _COMMENT, _MDEST,
 _RCUID, _RIUID, _EVENT, _ACTION) = range(16)  # fmt: skip
_US_KIND, _UI_KIND, _AE_KIND, _LO_KIND = range(4)
_DECODED: Final[dict[int, tuple[int, int, str]]] = {
    _AFFECTED_SOP_CLASS_UID: (_CUID, _UI_KIND, "AffectedSOPClassUID"),
    _COMMAND_FIELD: (_CF, _US_KIND, "CommandField"),
    _MESSAGE_ID: (_MID, _US_KIND, "MessageID"),
    _MESSAGE_ID_BEING_RESPONDED_TO: (_MIDR, _US_KIND, "MessageIDBeingRespondedTo"),
    _PRIORITY: (_PRIO, _US_KIND, "Priority"),
    _COMMAND_DATA_SET_TYPE: (_CDST, _US_KIND, "CommandDataSetType"),
    _STATUS: (_STAT, _US_KIND, "Status"),
    _ERROR_COMMENT: (_COMMENT, _LO_KIND, "ErrorComment"),
    _AFFECTED_SOP_INSTANCE_UID: (_IUID, _UI_KIND, "AffectedSOPInstanceUID"),
    _MOVE_ORIGINATOR_AE_TITLE: (_MAE, _AE_KIND, "MoveOriginatorApplicationEntityTitle"),
    _MOVE_ORIGINATOR_MESSAGE_ID: (_MMID, _US_KIND, "MoveOriginatorMessageID"),
    _MOVE_DESTINATION: (_MDEST, _AE_KIND, "MoveDestination"),
    _REQUESTED_SOP_CLASS_UID: (_RCUID, _UI_KIND, "RequestedSOPClassUID"),
    _REQUESTED_SOP_INSTANCE_UID: (_RIUID, _UI_KIND, "RequestedSOPInstanceUID"),
    _EVENT_TYPE_ID: (_EVENT, _US_KIND, "EventTypeID"),
    _ACTION_TYPE_ID: (_ACTION, _US_KIND, "ActionTypeID"),
}
# PS3.7 9.3: the mandatory elements of each request, beyond those of every message.
_REQUIRED: Final[dict[int, tuple[tuple[int, str], ...]]] = {
    C_STORE_RQ: (
        (_CUID, "AffectedSOPClassUID"),
        (_PRIO, "Priority"),
        (_IUID, "AffectedSOPInstanceUID"),
    ),
    C_ECHO_RQ: ((_CUID, "AffectedSOPClassUID"),),
    C_FIND_RQ: ((_CUID, "AffectedSOPClassUID"), (_PRIO, "Priority")),
    C_GET_RQ: ((_CUID, "AffectedSOPClassUID"), (_PRIO, "Priority")),
    N_ACTION_RQ: (
        (_RCUID, "RequestedSOPClassUID"),
        (_RIUID, "RequestedSOPInstanceUID"),
        (_ACTION, "ActionTypeID"),
    ),
    N_EVENT_REPORT_RQ: (
        (_CUID, "AffectedSOPClassUID"),
        (_IUID, "AffectedSOPInstanceUID"),
        (_EVENT, "EventTypeID"),
    ),
    C_MOVE_RQ: (
        (_CUID, "AffectedSOPClassUID"),
        (_PRIO, "Priority"),
        (_MDEST, "MoveDestination"),
    ),
}


def decode_command(data: bytes) -> Command:
    """Decode one complete command set (the joined command PDVs, PS3.8 E.2).

    Raises :class:`CommandError` for anything malformed: no leading group
    length, a group length that disagrees with ``len(data)``, a value running
    past the end, a tag outside group 0000 or out of order, a US/UL value that
    is not 2/4 bytes, an invalid UID, or a mandatory element missing.
    """
    end = len(data)
    if end < 12:
        raise CommandError(f"{end} bytes is shorter than the (0000,0000) group length element")
    group, element, length = _HEADER.unpack_from(data, 0)
    if group != 0 or element != _GROUP_LENGTH:
        raise CommandError(
            f"first element is ({group:04X},{element:04X}), not (0000,0000) CommandGroupLength"
        )
    if length != 4:
        raise CommandError(f"(0000,0000) CommandGroupLength has length {length}, UL needs 4")
    (group_length,) = _UL.unpack_from(data, 8)
    if group_length != end - 12:
        raise CommandError(f"CommandGroupLength is {group_length} but {end - 12} bytes follow it")

    values: list[int | str | None] = [None] * 16
    offset = 12
    previous = _GROUP_LENGTH
    while offset < end:
        if end - offset < 8:
            raise _error(values, f"{end - offset} stray bytes at offset {offset}")
        group, element, length = _HEADER.unpack_from(data, offset)
        offset += 8
        if group != 0:
            raise _error(values, f"({group:04X},{element:04X}) is outside command group 0000")
        if element <= previous:
            raise _error(values, f"(0000,{element:04X}) follows (0000,{previous:04X})")
        previous = element
        if length > end - offset:
            raise _error(
                values, f"(0000,{element:04X}) length {length} runs past the end at offset {offset}"
            )
        spec = _DECODED.get(element)
        if spec is not None:
            index, kind, name = spec
            if kind == _US_KIND:
                if length != 2:
                    raise _error(
                        values, f"(0000,{element:04X}) {name} is US but has length {length}"
                    )
                values[index] = _US.unpack_from(data, offset)[0]
            elif length:
                text = data[offset : offset + length].decode("latin-1")
                if kind == _UI_KIND:
                    values[index] = _uid(text.rstrip("\0 "), element, name, values)
                elif kind == _AE_KIND:
                    values[index] = text.rstrip("\0").strip(" ") or None
                else:
                    values[index] = text.strip(" ") or None
        offset += length

    command_field = values[_CF]
    if command_field is None:
        raise _error(values, "(0000,0100) CommandField is missing")
    if values[_CDST] is None:
        raise _error(values, "(0000,0800) CommandDataSetType is missing")
    command_field = int(command_field)
    if command_field & RESPONSE_BIT:
        required: tuple[tuple[int, str], ...] = (
            (_MIDR, "MessageIDBeingRespondedTo"),
            (_STAT, "Status"),
        )
    elif command_field == C_CANCEL_RQ:
        required = ((_MIDR, "MessageIDBeingRespondedTo"),)
    else:
        required = ((_MID, "MessageID"), *_REQUIRED.get(command_field, ()))
    for index, name in required:
        if values[index] is None:
            raise _error(values, f"{name} is missing from command 0x{command_field:04X}")
    # NOTE: the table above gives each index one kind, so the types line up.
    return Command(*values)  # type: ignore[arg-type]


def _uid(text: str, element: int, name: str, values: list[int | str | None]) -> str | None:
    if not text:
        return None
    if not is_valid_uid(text):
        # PS3.7 C.5: the class is not one we support; the instance is invalid.
        status = (
            SOP_CLASS_NOT_SUPPORTED
            if element == _AFFECTED_SOP_CLASS_UID
            else INVALID_OBJECT_INSTANCE
        )
        raise _error(values, f"(0000,{element:04X}) {name} {text[:80]!r} is not a UID", status)
    return text


def _error(
    values: list[int | str | None], problem: str, status: int = MISTYPED_ARGUMENT
) -> CommandError:
    command_field, message_id = values[_CF], values[_MID]
    return CommandError(
        problem,
        status,
        command_field if isinstance(command_field, int) else None,
        message_id if isinstance(message_id, int) else None,
    )


# -- encoding -------------------------------------------------------------------


def encode_c_echo_rq(message_id: int) -> bytes:
    """C-ECHO-RQ, PS3.7 9.3.5.1 Table 9.3-12."""
    return _command_set(
        _ui(_AFFECTED_SOP_CLASS_UID, VERIFICATION_SOP_CLASS),
        _us(_COMMAND_FIELD, C_ECHO_RQ),
        _us(_MESSAGE_ID, message_id),
        _us(_COMMAND_DATA_SET_TYPE, NO_DATA_SET),
    )


def encode_c_echo_rsp(
    message_id_being_responded_to: int,
    status: int,
    affected_sop_class_uid: str | None = VERIFICATION_SOP_CLASS,
) -> bytes:
    """C-ECHO-RSP, PS3.7 9.3.5.2 Table 9.3-13 (the SOP class UID is optional there)."""
    return _command_set(
        _ui(_AFFECTED_SOP_CLASS_UID, affected_sop_class_uid) if affected_sop_class_uid else b"",
        _us(_COMMAND_FIELD, C_ECHO_RSP),
        _us(_MESSAGE_ID_BEING_RESPONDED_TO, message_id_being_responded_to),
        _us(_COMMAND_DATA_SET_TYPE, NO_DATA_SET),
        _us(_STATUS, status),
    )


def encode_c_store_rq(
    message_id: int,
    affected_sop_class_uid: str,
    affected_sop_instance_uid: str,
    *,
    priority: int = PRIORITY_MEDIUM,
    move_originator_ae_title: str | None = None,
    move_originator_message_id: int | None = None,
) -> bytes:
    """C-STORE-RQ, PS3.7 9.3.1.1 Table 9.3-1; the move originator pair is for C-MOVE."""
    if (move_originator_ae_title is None) != (move_originator_message_id is None):
        raise ValueError("move_originator_ae_title and move_originator_message_id go together")
    if priority not in (PRIORITY_MEDIUM, PRIORITY_HIGH, PRIORITY_LOW):
        raise ValueError(f"priority {priority} is not 0 (medium), 1 (high) or 2 (low)")
    move = b""
    if move_originator_ae_title is not None and move_originator_message_id is not None:
        move = _ae(_MOVE_ORIGINATOR_AE_TITLE, move_originator_ae_title) + _us(
            _MOVE_ORIGINATOR_MESSAGE_ID, move_originator_message_id
        )
    return _command_set(
        _ui(_AFFECTED_SOP_CLASS_UID, affected_sop_class_uid),
        _us(_COMMAND_FIELD, C_STORE_RQ),
        _us(_MESSAGE_ID, message_id),
        _us(_PRIORITY, priority),
        _us(_COMMAND_DATA_SET_TYPE, DATA_SET_PRESENT),
        _ui(_AFFECTED_SOP_INSTANCE_UID, affected_sop_instance_uid),
        move,
    )


def encode_c_store_rsp(
    message_id_being_responded_to: int,
    affected_sop_class_uid: str | None,
    affected_sop_instance_uid: str | None,
    status: int,
    error_comment: str | None = None,
) -> bytes:
    """C-STORE-RSP, PS3.7 9.3.1.2 Table 9.3-2.

    The Affected SOP Class/Instance UIDs are U(=): ``None`` leaves one out, for
    answering a request whose UID was not a valid UID.

    ``error_comment`` becomes (0000,0902) Error Comment, a related field of the
    warning and failure statuses (PS3.4 Table B.2-1), so it is left out on
    success; it is cut to 64 characters and made LO-safe (ASCII, no backslash
    or control characters) rather than refused, since it is only informative.
    """
    comment = _error_comment(status, error_comment)
    return _command_set(
        _ui(_AFFECTED_SOP_CLASS_UID, affected_sop_class_uid) if affected_sop_class_uid else b"",
        _us(_COMMAND_FIELD, C_STORE_RSP),
        _us(_MESSAGE_ID_BEING_RESPONDED_TO, message_id_being_responded_to),
        _us(_COMMAND_DATA_SET_TYPE, NO_DATA_SET),
        _us(_STATUS, status),
        comment,
        _ui(_AFFECTED_SOP_INSTANCE_UID, affected_sop_instance_uid)
        if affected_sop_instance_uid
        else b"",
    )


def encode_c_find_rq(
    message_id: int, affected_sop_class_uid: str, *, priority: int = PRIORITY_MEDIUM
) -> bytes:
    """C-FIND-RQ, PS3.7 9.3.2.1 Table 9.3-3; the identifier follows as its data set."""
    return _command_set(
        _ui(_AFFECTED_SOP_CLASS_UID, affected_sop_class_uid),
        _us(_COMMAND_FIELD, C_FIND_RQ),
        _us(_MESSAGE_ID, message_id),
        _us(_PRIORITY, priority),
        _us(_COMMAND_DATA_SET_TYPE, DATA_SET_PRESENT),
    )


def encode_c_cancel_rq(message_id_being_responded_to: int) -> bytes:
    """C-CANCEL-RQ, PS3.7 9.3.2.3 Table 9.3-7 (for C-FIND, C-GET and C-MOVE)."""
    return _command_set(
        _us(_COMMAND_FIELD, C_CANCEL_RQ),
        _us(_MESSAGE_ID_BEING_RESPONDED_TO, message_id_being_responded_to),
        _us(_COMMAND_DATA_SET_TYPE, NO_DATA_SET),
    )


@dataclass(frozen=True, slots=True)
class SubOperations:
    """The counts a C-GET or C-MOVE response carries (PS3.7 9.1.3.1.7-10, 9.1.4.1.7-10)."""

    remaining: int
    completed: int = 0
    failed: int = 0
    warning: int = 0


def encode_c_get_rsp(
    message_id_being_responded_to: int,
    affected_sop_class_uid: str,
    status: int,
    counts: SubOperations | None,
    *,
    identifier: bool = False,
    error_comment: str | None = None,
) -> bytes:
    """C-GET-RSP, PS3.7 9.3.3.2 Table 9.3-9: ``counts`` (Remaining only while
    pending); ``identifier`` when a Failed SOP Instance UID List follows."""
    return _command_set(
        _ui(_AFFECTED_SOP_CLASS_UID, affected_sop_class_uid),
        _us(_COMMAND_FIELD, C_GET_RSP),
        _us(_MESSAGE_ID_BEING_RESPONDED_TO, message_id_being_responded_to),
        _us(_COMMAND_DATA_SET_TYPE, DATA_SET_PRESENT if identifier else NO_DATA_SET),
        _us(_STATUS, status),
        _error_comment(status, error_comment),
        *_counts(counts, status),
    )


def _counts(counts: SubOperations | None, status: int) -> tuple[bytes, ...]:
    """PS3.7 Table 9.3-9: Remaining only while pending (or on Cancel)."""
    if counts is None:
        return ()
    remaining = status in (PENDING, PENDING_WARNING, CANCEL)
    return (
        _us(_REMAINING, counts.remaining) if remaining else b"",
        _us(_COMPLETED, counts.completed),
        _us(_FAILED, counts.failed),
        _us(_WARNING, counts.warning),
    )


def encode_c_move_rsp(
    message_id_being_responded_to: int,
    affected_sop_class_uid: str,
    status: int,
    counts: SubOperations | None,
    *,
    identifier: bool = False,
    error_comment: str | None = None,
) -> bytes:
    """C-MOVE-RSP, PS3.7 9.3.4.2 Table 9.3-11: as C-GET-RSP."""
    return _command_set(
        _ui(_AFFECTED_SOP_CLASS_UID, affected_sop_class_uid),
        _us(_COMMAND_FIELD, C_MOVE_RSP),
        _us(_MESSAGE_ID_BEING_RESPONDED_TO, message_id_being_responded_to),
        _us(_COMMAND_DATA_SET_TYPE, DATA_SET_PRESENT if identifier else NO_DATA_SET),
        _us(_STATUS, status),
        _error_comment(status, error_comment),
        *_counts(counts, status),
    )


def encode_c_move_rq(
    message_id: int,
    affected_sop_class_uid: str,
    move_destination: str,
    *,
    priority: int = PRIORITY_MEDIUM,
) -> bytes:
    """C-MOVE-RQ, PS3.7 9.3.4.1 Table 9.3-10; the identifier follows as its data set."""
    return _command_set(
        _ui(_AFFECTED_SOP_CLASS_UID, affected_sop_class_uid),
        _us(_COMMAND_FIELD, C_MOVE_RQ),
        _us(_MESSAGE_ID, message_id),
        _ae(_MOVE_DESTINATION, move_destination),
        _us(_PRIORITY, priority),
        _us(_COMMAND_DATA_SET_TYPE, DATA_SET_PRESENT),
    )


def encode_n_action_rq(
    message_id: int, requested_sop_class_uid: str, requested_sop_instance_uid: str, action: int
) -> bytes:
    """N-ACTION-RQ, PS3.7 10.3.4.1 Table 10.3-7; the action information follows."""
    return _command_set(
        _ui(_REQUESTED_SOP_CLASS_UID, requested_sop_class_uid),
        _us(_COMMAND_FIELD, N_ACTION_RQ),
        _us(_MESSAGE_ID, message_id),
        _us(_COMMAND_DATA_SET_TYPE, DATA_SET_PRESENT),
        _ui(_REQUESTED_SOP_INSTANCE_UID, requested_sop_instance_uid),
        _us(_ACTION_TYPE_ID, action),
    )


def encode_n_action_rsp(
    message_id_being_responded_to: int,
    affected_sop_class_uid: str | None,
    affected_sop_instance_uid: str | None,
    status: int,
    *,
    action: int | None,
    error_comment: str | None = None,
) -> bytes:
    """N-ACTION-RSP, PS3.7 10.3.4.2 Table 10.3-8 (no action reply)."""
    return _command_set(
        _ui(_AFFECTED_SOP_CLASS_UID, affected_sop_class_uid) if affected_sop_class_uid else b"",
        _us(_COMMAND_FIELD, N_ACTION_RSP),
        _us(_MESSAGE_ID_BEING_RESPONDED_TO, message_id_being_responded_to),
        _us(_COMMAND_DATA_SET_TYPE, NO_DATA_SET),
        _us(_STATUS, status),
        _error_comment(status, error_comment),
        _ui(_AFFECTED_SOP_INSTANCE_UID, affected_sop_instance_uid)
        if affected_sop_instance_uid
        else b"",
        _us(_ACTION_TYPE_ID, action) if action is not None and status == SUCCESS else b"",
    )


def encode_n_event_report_rq(
    message_id: int, affected_sop_class_uid: str, affected_sop_instance_uid: str, event: int
) -> bytes:
    """N-EVENT-REPORT-RQ, PS3.7 10.3.1.1 Table 10.3-1; the event information follows."""
    return _command_set(
        _ui(_AFFECTED_SOP_CLASS_UID, affected_sop_class_uid),
        _us(_COMMAND_FIELD, N_EVENT_REPORT_RQ),
        _us(_MESSAGE_ID, message_id),
        _us(_COMMAND_DATA_SET_TYPE, DATA_SET_PRESENT),
        _ui(_AFFECTED_SOP_INSTANCE_UID, affected_sop_instance_uid),
        _us(_EVENT_TYPE_ID, event),
    )


def encode_c_get_rq(
    message_id: int, affected_sop_class_uid: str, *, priority: int = PRIORITY_MEDIUM
) -> bytes:
    """C-GET-RQ, PS3.7 9.3.3.1 Table 9.3-8; the identifier follows as its data set."""
    return _command_set(
        _ui(_AFFECTED_SOP_CLASS_UID, affected_sop_class_uid),
        _us(_COMMAND_FIELD, C_GET_RQ),
        _us(_MESSAGE_ID, message_id),
        _us(_PRIORITY, priority),
        _us(_COMMAND_DATA_SET_TYPE, DATA_SET_PRESENT),
    )


def encode_c_find_rsp(
    message_id_being_responded_to: int,
    affected_sop_class_uid: str,
    status: int,
    *,
    identifier: bool = False,
    error_comment: str | None = None,
) -> bytes:
    """C-FIND-RSP, PS3.7 9.3.2.2 Table 9.3-5: ``identifier`` says a match follows
    (pending responses only); ``error_comment`` as for C-STORE-RSP."""
    return _command_set(
        _ui(_AFFECTED_SOP_CLASS_UID, affected_sop_class_uid),
        _us(_COMMAND_FIELD, C_FIND_RSP),
        _us(_MESSAGE_ID_BEING_RESPONDED_TO, message_id_being_responded_to),
        _us(_COMMAND_DATA_SET_TYPE, DATA_SET_PRESENT if identifier else NO_DATA_SET),
        _us(_STATUS, status),
        _error_comment(status, error_comment),
    )


def _error_comment(status: int, error_comment: str | None) -> bytes:
    """(0000,0902) Error Comment: left out on success; cut to 64 characters and made
    LO-safe (ASCII, no backslash or control characters) rather than refused, since
    it is only informative."""
    if not error_comment or status == SUCCESS:
        return b""
    text = error_comment.translate(_LO_UNSAFE).strip(" ")[:MAX_ERROR_COMMENT].rstrip(" ")
    return _text(_ERROR_COMMENT, text.encode("ascii", "replace"), b" ") if text else b""


def _command_set(*elements: bytes) -> bytes:
    """Prefix the (already ascending) elements with (0000,0000) CommandGroupLength."""
    body = b"".join(elements)
    return _UL_ELEMENT.pack(0, _GROUP_LENGTH, 4, len(body)) + body


def _us(element: int, value: int) -> bytes:
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"(0000,{element:04X}) value {value} does not fit US (0-65535)")
    return _US_ELEMENT.pack(0, element, 2, value)


def _ui(element: int, uid: str) -> bytes:
    """UI, padded to even length with NUL (PS3.5 6.2, 9.1)."""
    if not is_valid_uid(uid):
        raise ValueError(f"(0000,{element:04X}) {uid!r} is not a UID")
    return _text(element, uid.encode("ascii"), b"\0")


def _ae(element: int, title: str) -> bytes:
    """AE, padded to even length with a space (PS3.5 6.2)."""
    value = title.strip(" ")
    if not value or len(value) > _MAX_AE or not value.isascii() or "\\" in value:
        raise ValueError(f"(0000,{element:04X}) {title!r} is not an AE title (1-16 ASCII)")
    return _text(element, value.encode("ascii"), b" ")


def _text(element: int, value: bytes, pad: bytes) -> bytes:
    if len(value) & 1:
        value += pad
    return _HEADER.pack(0, element, len(value)) + value
