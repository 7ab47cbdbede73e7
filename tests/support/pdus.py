"""Golden PDUs, each with its decoded fields beside it, and the one P-DATA-TF
builder tests use to script a peer byte by byte (PS3.8 9.3)."""

from __future__ import annotations

import struct

from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context

from dicomgw.dimse.commands import encode_c_store_rq
from dicomgw.ul.pdu import A_RELEASE_RQ_PDU, MCH_COMMAND, MCH_LAST, P_DATA_TF
from dicomgw.ul.uids import (
    APPLICATION_CONTEXT_NAME,
    EXPLICIT_VR_LITTLE_ENDIAN,
    VERIFICATION_SOP_CLASS,
)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

# PS3.8 9.3.8: A-ABORT: 07, reserved, length 4, two reserved, source 2
# (service-provider), reason 1 (unrecognized PDU).
ABORT_UNRECOGNIZED_PDU = bytes.fromhex("07 00 00000004 00 00 02 01")
# ... reason 2 (unexpected PDU).
ABORT_UNEXPECTED_PDU = bytes.fromhex("07 00 00000004 00 00 02 02")
# ... reason 6 (invalid PDU parameter value).
ABORT_INVALID_PARAMETER = bytes.fromhex("07 00 00000004 00 00 02 06")
# PS3.8 9.3.4: A-ASSOCIATE-RJ: 03, reserved, length 4, reserved, result 1
# (permanent), source 1 (service-user), reason 7 (called AE title not recognized).
RJ_CALLED_AE = bytes.fromhex("03 00 00000004 00 01 01 07")
# PS3.8 9.3.6: A-RELEASE-RQ: 05, reserved, length 4, four reserved bytes.
A_RELEASE_RQ = A_RELEASE_RQ_PDU
assert bytes.fromhex("05 00 00000004 00000000") == A_RELEASE_RQ

# PS3.8 9.3.5.1, E.2: message control headers.
MCH_DATASET = 0x00
MCH_DATASET_LAST = MCH_LAST
MCH_COMMAND_LAST = MCH_COMMAND | MCH_LAST


def pdv(context_id: int, mch: int, payload: bytes) -> bytes:
    """A PDV item (PS3.8 9.3.5.1): item-length (4, BE), context ID, MCH, fragment."""
    return struct.pack(">IBB", len(payload) + 2, context_id, mch) + payload


def p_data(*items: bytes, extra_length: int = 0) -> bytes:
    """A P-DATA-TF holding ``items`` (PS3.8 9.3.5): 04, reserved, PDU-length (4, BE).
    ``extra_length`` makes the PDU-length lie (longer than its items)."""
    body = b"".join(items)
    return struct.pack(">BBI", P_DATA_TF, 0, len(body) + extra_length) + body


def c_store_command(uid: str, message_id: int = 1, context_id: int = 1) -> bytes:
    """A C-STORE-RQ for a CT image as one P-DATA-TF (command, last fragment)."""
    command = encode_c_store_rq(message_id, CT_IMAGE_STORAGE, uid)
    return p_data(pdv(context_id, MCH_COMMAND_LAST, command))


def associate_rq(called: str = "DICOMGW", calling: str = "RAWSCU") -> bytes:
    """A-ASSOCIATE-RQ proposing CT Image Storage (context 1) and Verification (3),
    both explicit VR little endian, Maximum Length Received 16384."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT_NAME
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    cx = build_context(CT_IMAGE_STORAGE, [EXPLICIT_VR_LITTLE_ENDIAN])
    cx.context_id = 1
    echo = build_context(VERIFICATION_SOP_CLASS, [EXPLICIT_VR_LITTLE_ENDIAN])
    echo.context_id = 3
    primitive.presentation_context_definition_list = [cx, echo]
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16384
    primitive.user_information = [max_length]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())
