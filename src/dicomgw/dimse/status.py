"""DIMSE status codes (PS3.7 Annex C) and the C-STORE ones (PS3.4 B.2.3, Table B.2-1).

Only the Status (0000,0900) value is named here; the related fields (Error
Comment, Offending Element, ...) are written by :mod:`dicomgw.dimse.commands`.
"""

from __future__ import annotations

from typing import Literal

StatusCategory = Literal["success", "warning", "failure", "pending", "cancel"]

# -- PS3.7 C.1: success, pending, cancel ----------------------------------------
SUCCESS = 0x0000
PENDING = 0xFF00
"""C-FIND/C-GET/C-MOVE: matches or sub-operations are continuing."""
PENDING_WARNING = 0xFF01
"""C-FIND: matches are continuing, optional keys were not supported (PS3.4 C.4.1.1.4)."""
CANCEL = 0xFE00

# -- PS3.7 C.4: warning ---------------------------------------------------------
WARNING_OPTIONAL_ATTRIBUTES_NOT_SUPPORTED = 0x0001
ATTRIBUTE_LIST_ERROR = 0x0107
ATTRIBUTE_VALUE_OUT_OF_RANGE = 0x0116

# -- PS3.7 C.5: failure ---------------------------------------------------------
NO_SUCH_ATTRIBUTE = 0x0105
INVALID_ATTRIBUTE_VALUE = 0x0106
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
NO_SUCH_SOP_INSTANCE = 0x0112
NO_SUCH_EVENT_TYPE = 0x0113
NO_SUCH_ARGUMENT = 0x0114
INVALID_ARGUMENT_VALUE = 0x0115
INVALID_OBJECT_INSTANCE = 0x0117
"""C-STORE calls it "Invalid SOP Instance" (PS3.7 9.1.1.1.9)."""
NO_SUCH_SOP_CLASS = 0x0118
CLASS_INSTANCE_CONFLICT = 0x0119
MISSING_ATTRIBUTE = 0x0120
MISSING_ATTRIBUTE_VALUE = 0x0121
SOP_CLASS_NOT_SUPPORTED = 0x0122
NO_SUCH_ACTION_TYPE = 0x0123
NOT_AUTHORIZED = 0x0124
DUPLICATE_INVOCATION = 0x0210
UNRECOGNIZED_OPERATION = 0x0211
MISTYPED_ARGUMENT = 0x0212
RESOURCE_LIMITATION = 0x0213

# -- PS3.4 B.2.3 Table B.2-1: C-STORE -------------------------------------------
OUT_OF_RESOURCES = 0xA700
"""A700-A7FF; PS3.4 C.4 uses A701/A702 for C-MOVE/C-GET sub-operations."""
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
"""A900-A9FF (C-FIND: "Identifier does not match SOP Class")."""
CANNOT_UNDERSTAND = 0xC000
"""C000-CFFF (C-FIND/C-MOVE/C-GET: "Unable to process")."""
WARNING_COERCION = 0xB000
"""C-STORE: coercion of data elements; C-MOVE/C-GET: some sub-operations failed."""
WARNING_ELEMENTS_DISCARDED = 0xB006
WARNING_DATASET_DOES_NOT_MATCH = 0xB007

# -- PS3.4 C.4.2.1.5, C.4.3.1.5: C-MOVE and C-GET --------------------------------
MOVE_DESTINATION_UNKNOWN = 0xA801
SUB_OPERATIONS_REFUSED = 0xA702
"""Refused: out of resources, unable to perform sub-operations (every one failed)."""
SUB_OPERATIONS_WARNING = WARNING_COERCION
"""B000: sub-operations complete, one or more failed or had a warning."""

_WARNINGS = frozenset(
    (WARNING_OPTIONAL_ATTRIBUTES_NOT_SUPPORTED, ATTRIBUTE_LIST_ERROR, ATTRIBUTE_VALUE_OUT_OF_RANGE)
)


def status_category(status: int) -> StatusCategory:
    """The PS3.7 C.1 Table C-1 class of ``status``.

    Success 0000; pending FF00/FF01; cancel FE00; warning 0001, 0107, 0116 and
    Bxxx; failure Axxx, Cxxx and the rest of 01xx/02xx. A code the table does
    not define is a failure too, so an unrecognised answer is never counted as
    delivered.
    """
    if status == SUCCESS:
        return "success"
    if status in (PENDING, PENDING_WARNING):
        return "pending"
    if status == CANCEL:
        return "cancel"
    if 0xB000 <= status <= 0xBFFF or status in _WARNINGS:
        return "warning"
    return "failure"
