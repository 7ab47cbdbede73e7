"""DIMSE command sets (PS3.7 6.3.1, 9.3, Annex E) and statuses (PS3.7 Annex C).

Oracles: golden bytes written out by hand, and pynetdicom/pydicom, which encode
the command sets we decode and decode the ones we encode.
"""

from __future__ import annotations

import contextlib
import struct
from io import BytesIO
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pynetdicom import dimse_messages, dimse_primitives
from pynetdicom.dsutils import decode, encode

from dicomgw.dimse import status
from dicomgw.dimse.commands import (
    C_CANCEL_RQ,
    C_ECHO_RQ,
    C_ECHO_RSP,
    C_FIND_RQ,
    C_STORE_RQ,
    C_STORE_RSP,
    NO_DATA_SET,
    PRIORITY_HIGH,
    PRIORITY_LOW,
    PRIORITY_MEDIUM,
    Command,
    CommandError,
    decode_command,
    encode_c_echo_rq,
    encode_c_echo_rsp,
    encode_c_store_rq,
    encode_c_store_rsp,
)
from dicomgw.errors import DicomGwError
from dicomgw.ul.uids import VERIFICATION_SOP_CLASS

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
INSTANCE_UID = "1.2.826.0.1.3680043.8.498.1"

# -- golden command sets (PS3.7 6.3.1: Implicit VR Little Endian; tag, length LE, value) --

C_ECHO_RQ_BYTES = bytes.fromhex(
    "0000 0000 04000000 38000000"  # (0000,0000) UL CommandGroupLength 56
    "0000 0200 12000000"  # (0000,0002) UI AffectedSOPClassUID, 18 bytes:
    "312e322e3834302e31303030382e312e3100"  # "1.2.840.10008.1.1" + NUL pad
    "0000 0001 02000000 3000"  # (0000,0100) US CommandField 0x0030 C-ECHO-RQ
    "0000 1001 02000000 0700"  # (0000,0110) US MessageID 7
    "0000 0008 02000000 0101"  # (0000,0800) US CommandDataSetType 0x0101, no data set
)
C_STORE_RSP_BYTES = bytes.fromhex(
    "0000 0000 04000000 5a000000"  # (0000,0000) UL CommandGroupLength 90
    "0000 0200 1a000000"  # (0000,0002) UI AffectedSOPClassUID, 26 bytes:
    "312e322e3834302e31303030382e352e312e342e312e312e3200"  # CT Image Storage + NUL
    "0000 0001 02000000 0180"  # (0000,0100) US CommandField 0x8001 C-STORE-RSP
    "0000 2001 02000000 0100"  # (0000,0120) US MessageIDBeingRespondedTo 1
    "0000 0008 02000000 0101"  # (0000,0800) US CommandDataSetType 0x0101
    "0000 0009 02000000 0000"  # (0000,0900) US Status 0x0000 success
    "0000 0010 08000000 312e322e332e3400"  # (0000,1000) UI AffectedSOPInstanceUID "1.2.3.4" + NUL
)
C_STORE_RSP_WARNING_BYTES = bytes.fromhex(
    "0000 0000 04000000 6a000000"  # (0000,0000) UL CommandGroupLength 106
    "0000 0200 1a000000"  # (0000,0002) UI AffectedSOPClassUID, 26 bytes:
    "312e322e3834302e31303030382e352e312e342e312e312e3200"  # CT Image Storage + NUL
    "0000 0001 02000000 0180"  # (0000,0100) US CommandField 0x8001 C-STORE-RSP
    "0000 2001 02000000 0100"  # (0000,0120) US MessageIDBeingRespondedTo 1
    "0000 0008 02000000 0101"  # (0000,0800) US CommandDataSetType 0x0101
    "0000 0009 02000000 00b0"  # (0000,0900) US Status 0xB000 coercion of data elements
    "0000 0209 08000000 636f657263656420"  # (0000,0902) LO ErrorComment "coerced" + space
    "0000 0010 08000000 312e322e332e3400"  # (0000,1000) UI AffectedSOPInstanceUID "1.2.3.4" + NUL
)


def test_golden_c_echo_rq() -> None:
    assert encode_c_echo_rq(7) == C_ECHO_RQ_BYTES
    assert decode_command(C_ECHO_RQ_BYTES) == Command(
        command_field=C_ECHO_RQ,
        message_id=7,
        message_id_being_responded_to=None,
        affected_sop_class_uid=VERIFICATION_SOP_CLASS,
        affected_sop_instance_uid=None,
        command_data_set_type=NO_DATA_SET,
        priority=None,
        move_originator_ae_title=None,
        move_originator_message_id=None,
        status=None,
        error_comment=None,
    )


def test_golden_c_store_rsp() -> None:
    assert encode_c_store_rsp(1, CT_IMAGE_STORAGE, "1.2.3.4", status.SUCCESS) == C_STORE_RSP_BYTES
    command = decode_command(C_STORE_RSP_BYTES)
    assert command.command_field == C_STORE_RSP
    assert command.message_id_being_responded_to == 1
    assert command.affected_sop_class_uid == CT_IMAGE_STORAGE
    assert command.affected_sop_instance_uid == "1.2.3.4"
    assert command.status == status.SUCCESS
    assert not command.has_data_set
    assert command.is_response


def test_golden_c_store_rsp_with_error_comment() -> None:
    encoded = encode_c_store_rsp(1, CT_IMAGE_STORAGE, "1.2.3.4", status.WARNING_COERCION, "coerced")
    assert encoded == C_STORE_RSP_WARNING_BYTES
    command = decode_command(C_STORE_RSP_WARNING_BYTES)
    assert command.status == 0xB000
    assert command.error_comment == "coerced"


def test_golden_bytes_match_pynetdicom() -> None:
    echo = dimse_primitives.C_ECHO()
    echo.MessageID = 7
    echo.AffectedSOPClassUID = VERIFICATION_SOP_CLASS
    assert _pynetdicom_command_set(dimse_messages.C_ECHO_RQ(), echo) == C_ECHO_RQ_BYTES
    store = dimse_primitives.C_STORE()
    store.MessageIDBeingRespondedTo = 1
    store.AffectedSOPClassUID = CT_IMAGE_STORAGE
    store.AffectedSOPInstanceUID = "1.2.3.4"
    store.Status = 0x0000
    assert _pynetdicom_command_set(dimse_messages.C_STORE_RSP(), store) == C_STORE_RSP_BYTES


# -- decoding what pynetdicom encodes ---------------------------------------------


def _pynetdicom_command_set(message: Any, primitive: Any) -> bytes:
    message.primitive_to_message(primitive)
    encoded = encode(message.command_set, True, True)
    assert encoded is not None
    return encoded


@pytest.mark.parametrize("priority", [PRIORITY_MEDIUM, PRIORITY_HIGH, PRIORITY_LOW])
@pytest.mark.parametrize("move", [None, ("MOVESCU", 65535)])
def test_decode_pynetdicom_c_store_rq(priority: int, move: tuple[str, int] | None) -> None:
    primitive = dimse_primitives.C_STORE()
    primitive.MessageID = 12345
    primitive.AffectedSOPClassUID = CT_IMAGE_STORAGE
    primitive.AffectedSOPInstanceUID = INSTANCE_UID  # odd length: NUL padded
    primitive.Priority = priority
    if move:
        primitive.MoveOriginatorApplicationEntityTitle = move[0]
        primitive.MoveOriginatorMessageID = move[1]
    primitive.DataSet = BytesIO(b"\x08\x00\x18\x00")
    data = _pynetdicom_command_set(dimse_messages.C_STORE_RQ(), primitive)

    command = decode_command(data)
    assert command.command_field == C_STORE_RQ
    assert command.message_id == 12345
    assert command.message_id_being_responded_to is None
    assert command.affected_sop_class_uid == CT_IMAGE_STORAGE
    assert command.affected_sop_instance_uid == INSTANCE_UID
    assert command.priority == priority
    assert command.command_data_set_type != NO_DATA_SET
    assert command.has_data_set
    assert not command.is_response
    assert command.move_originator_ae_title == (move[0] if move else None)
    assert command.move_originator_message_id == (move[1] if move else None)
    assert command.status is None
    assert command.error_comment is None


def test_decode_pynetdicom_c_echo_rq() -> None:
    primitive = dimse_primitives.C_ECHO()
    primitive.MessageID = 1
    primitive.AffectedSOPClassUID = VERIFICATION_SOP_CLASS
    command = decode_command(_pynetdicom_command_set(dimse_messages.C_ECHO_RQ(), primitive))
    assert command.command_field == C_ECHO_RQ
    assert command.message_id == 1
    assert command.affected_sop_class_uid == VERIFICATION_SOP_CLASS
    assert command.command_data_set_type == NO_DATA_SET
    assert not command.has_data_set


@pytest.mark.parametrize(
    ("code", "comment"), [(0x0000, None), (0xA700, "Out of disk space"), (0xC000, "Bad file")]
)
def test_decode_pynetdicom_c_store_rsp(code: int, comment: str | None) -> None:
    primitive: Any = dimse_primitives.C_STORE()  # NOTE: pynetdicom infers ErrorComment: None
    primitive.MessageIDBeingRespondedTo = 9
    primitive.AffectedSOPClassUID = CT_IMAGE_STORAGE
    primitive.AffectedSOPInstanceUID = INSTANCE_UID
    primitive.Status = code
    primitive.ErrorComment = comment
    command = decode_command(_pynetdicom_command_set(dimse_messages.C_STORE_RSP(), primitive))
    assert command.command_field == C_STORE_RSP
    assert command.message_id is None
    assert command.message_id_being_responded_to == 9
    assert command.affected_sop_class_uid == CT_IMAGE_STORAGE
    assert command.affected_sop_instance_uid == INSTANCE_UID
    assert command.status == code
    assert command.error_comment == comment


def test_decode_pynetdicom_c_echo_rsp() -> None:
    primitive = dimse_primitives.C_ECHO()
    primitive.MessageIDBeingRespondedTo = 3
    primitive.AffectedSOPClassUID = VERIFICATION_SOP_CLASS
    primitive.Status = status.SUCCESS
    command = decode_command(_pynetdicom_command_set(dimse_messages.C_ECHO_RSP(), primitive))
    assert (command.command_field, command.message_id_being_responded_to) == (C_ECHO_RSP, 3)
    assert command.status == status.SUCCESS


def test_decode_pynetdicom_c_find_rq() -> None:
    primitive = dimse_primitives.C_FIND()
    primitive.MessageID = 4
    primitive.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.1"
    primitive.Priority = PRIORITY_LOW
    primitive.Identifier = BytesIO(b"\x08\x00\x52\x00")
    command = decode_command(_pynetdicom_command_set(dimse_messages.C_FIND_RQ(), primitive))
    assert (command.command_field, command.message_id, command.priority) == (C_FIND_RQ, 4, 2)
    assert command.has_data_set


def test_decode_pynetdicom_c_cancel_rq() -> None:
    primitive = dimse_primitives.C_CANCEL()
    primitive.MessageIDBeingRespondedTo = 4
    command = decode_command(_pynetdicom_command_set(dimse_messages.C_CANCEL_RQ(), primitive))
    assert command.command_field == C_CANCEL_RQ
    assert command.message_id is None
    assert command.message_id_being_responded_to == 4


def test_decode_ignores_unknown_and_retired_group_0000_elements() -> None:
    ds = _c_store_rq_dataset()
    ds.add_new(0x00000600, "AE", "DEST")  # MoveDestination, not used by C-STORE
    ds.add_new(0x00000901, "AT", [0x00100010])  # OffendingElement
    ds.add_new(0x00004000, "LT", "retired Dialog Receiver")  # retired (0000,4000)
    command = decode_command(_encode_with_group_length(ds))
    assert command.affected_sop_instance_uid == INSTANCE_UID


def test_decode_strips_padding() -> None:
    ds = _c_store_rq_dataset()
    ds.add_new(0x00001030, "AE", "  MOVER")
    ds.add_new(0x00001031, "US", 2)
    data = _encode_with_group_length(ds)
    # pydicom pads UI with NUL; a space pad (seen from some peers) is stripped too.
    data = data.replace(b"1.2.826.0.1.3680043.8.498.1\0", b"1.2.826.0.1.3680043.8.498.1 ")
    command = decode_command(data)
    assert command.affected_sop_instance_uid == INSTANCE_UID
    assert command.move_originator_ae_title == "MOVER"


# -- our encodings read by pydicom --------------------------------------------------


def _read(data: bytes) -> Dataset:
    ds = decode(BytesIO(data), True, True)
    assert isinstance(ds, Dataset)
    return ds


def _check_layout(data: bytes) -> list[tuple[int, int]]:
    """Walk the elements: group 0000, ascending, even lengths, group length right."""
    assert data[:8] == bytes.fromhex("00000000 04000000")
    assert struct.unpack_from("<I", data, 8)[0] == len(data) - 12
    offset, seen = 12, []
    while offset < len(data):
        group, element, length = struct.unpack_from("<HHI", data, offset)
        assert group == 0
        assert length % 2 == 0, f"(0000,{element:04X}) has odd length {length}"
        seen.append((element, length))
        offset += 8 + length
    assert offset == len(data)
    assert [element for element, _ in seen] == sorted({element for element, _ in seen})
    return seen


def test_c_echo_rq_read_by_pydicom() -> None:
    data = encode_c_echo_rq(65535)
    _check_layout(data)
    ds = _read(data)
    assert ds.CommandGroupLength == len(data) - 12
    assert ds.AffectedSOPClassUID == VERIFICATION_SOP_CLASS
    assert ds.CommandField == C_ECHO_RQ
    assert ds.MessageID == 65535
    assert ds.CommandDataSetType == NO_DATA_SET
    assert len(ds) == 5


@pytest.mark.parametrize("code", [status.SUCCESS, status.SOP_CLASS_NOT_SUPPORTED])
def test_c_echo_rsp_read_by_pydicom(code: int) -> None:
    data = encode_c_echo_rsp(42, code)
    _check_layout(data)
    ds = _read(data)
    assert ds.CommandGroupLength == len(data) - 12
    assert ds.AffectedSOPClassUID == VERIFICATION_SOP_CLASS
    assert ds.CommandField == C_ECHO_RSP
    assert ds.MessageIDBeingRespondedTo == 42
    assert ds.CommandDataSetType == NO_DATA_SET
    assert ds.Status == code
    assert len(ds) == 6
    primitive = dimse_primitives.C_ECHO()
    primitive.MessageIDBeingRespondedTo = 42
    primitive.AffectedSOPClassUID = VERIFICATION_SOP_CLASS
    primitive.Status = code
    assert _pynetdicom_command_set(dimse_messages.C_ECHO_RSP(), primitive) == data
    assert "AffectedSOPClassUID" not in _read(encode_c_echo_rsp(42, code, None))


@pytest.mark.parametrize(
    ("code", "comment"),
    [
        (status.SUCCESS, None),
        (status.OUT_OF_RESOURCES, "Out of disk space"),  # odd length: space padded
        (status.CANNOT_UNDERSTAND, "cannot parse"),
        (status.WARNING_ELEMENTS_DISCARDED, "x"),
    ],
)
def test_c_store_rsp_read_by_pydicom(code: int, comment: str | None) -> None:
    data = encode_c_store_rsp(0xFFFF, CT_IMAGE_STORAGE, INSTANCE_UID, code, comment)
    elements = _check_layout(data)
    ds = _read(data)
    assert ds.CommandGroupLength == len(data) - 12
    assert ds.AffectedSOPClassUID == CT_IMAGE_STORAGE
    assert ds.CommandField == C_STORE_RSP
    assert ds.MessageIDBeingRespondedTo == 0xFFFF
    assert ds.CommandDataSetType == NO_DATA_SET
    assert ds.Status == code
    assert ds.AffectedSOPInstanceUID == INSTANCE_UID
    assert ds.get("ErrorComment") == comment
    assert [e for e, _ in elements] == [
        0x0002,
        0x0100,
        0x0120,
        0x0800,
        0x0900,
        *([0x0902] if comment else []),
        0x1000,
    ]
    # pynetdicom encodes the same primitive to the same bytes.
    primitive: Any = dimse_primitives.C_STORE()  # NOTE: pynetdicom infers ErrorComment: None
    primitive.MessageIDBeingRespondedTo = 0xFFFF
    primitive.AffectedSOPClassUID = CT_IMAGE_STORAGE
    primitive.AffectedSOPInstanceUID = INSTANCE_UID
    primitive.Status = code
    primitive.ErrorComment = comment
    assert _pynetdicom_command_set(dimse_messages.C_STORE_RSP(), primitive) == data


def test_c_store_rsp_error_comment_is_cut_cleaned_and_omitted_on_success() -> None:
    long = "disk full: " + "x" * 100
    ds = _read(encode_c_store_rsp(1, CT_IMAGE_STORAGE, INSTANCE_UID, 0xA700, long))
    assert ds.ErrorComment == long[:64]
    ds = _read(encode_c_store_rsp(1, CT_IMAGE_STORAGE, INSTANCE_UID, 0xC000, "a\\b\nc\x00é"))
    assert ds.ErrorComment == "a b c ?"
    ds = _read(encode_c_store_rsp(1, CT_IMAGE_STORAGE, INSTANCE_UID, 0, "ignored"))
    assert "ErrorComment" not in ds
    ds = _read(encode_c_store_rsp(1, CT_IMAGE_STORAGE, INSTANCE_UID, 0xA700, "  \n "))
    assert "ErrorComment" not in ds


@pytest.mark.parametrize("move", [None, ("MOVER", 17)])
def test_c_store_rq_read_by_pydicom_and_equal_to_pynetdicom(move: tuple[str, int] | None) -> None:
    kwargs: dict[str, Any] = {}
    if move:
        kwargs = {"move_originator_ae_title": move[0], "move_originator_message_id": move[1]}
    data = encode_c_store_rq(5, CT_IMAGE_STORAGE, INSTANCE_UID, priority=PRIORITY_HIGH, **kwargs)
    _check_layout(data)
    ds = _read(data)
    assert ds.CommandGroupLength == len(data) - 12
    assert ds.AffectedSOPClassUID == CT_IMAGE_STORAGE
    assert ds.CommandField == C_STORE_RQ
    assert ds.MessageID == 5
    assert ds.Priority == PRIORITY_HIGH
    assert ds.CommandDataSetType != NO_DATA_SET
    assert ds.AffectedSOPInstanceUID == INSTANCE_UID
    assert ds.get("MoveOriginatorApplicationEntityTitle") == (move[0] if move else None)
    assert ds.get("MoveOriginatorMessageID") == (move[1] if move else None)
    primitive = dimse_primitives.C_STORE()
    primitive.MessageID = 5
    primitive.AffectedSOPClassUID = CT_IMAGE_STORAGE
    primitive.AffectedSOPInstanceUID = INSTANCE_UID
    primitive.Priority = PRIORITY_HIGH
    if move:
        primitive.MoveOriginatorApplicationEntityTitle = move[0]
        primitive.MoveOriginatorMessageID = move[1]
    primitive.DataSet = BytesIO(b"\x08\x00")
    assert _pynetdicom_command_set(dimse_messages.C_STORE_RQ(), primitive) == data


# PS3.5 9.1: at most 64 characters (the regex alone allows up to 69).
_uids = st.from_regex(r"\A[1-9][0-9]{0,8}(\.(0|[1-9][0-9]{0,8})){0,6}\Z").filter(
    lambda uid: len(uid) <= 64
)
_aes = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="\\"))


@settings(max_examples=200, deadline=None)
@given(
    message_id=st.integers(0, 0xFFFF),
    sop_class=_uids,
    sop_instance=_uids,
    priority=st.sampled_from([PRIORITY_MEDIUM, PRIORITY_HIGH, PRIORITY_LOW]),
    move=st.none() | st.tuples(_aes.filter(lambda s: 1 <= len(s) <= 16), st.integers(0, 0xFFFF)),
)
def test_c_store_rq_round_trip(
    message_id: int,
    sop_class: str,
    sop_instance: str,
    priority: int,
    move: tuple[str, int] | None,
) -> None:
    data = encode_c_store_rq(
        message_id,
        sop_class,
        sop_instance,
        priority=priority,
        move_originator_ae_title=move[0] if move else None,
        move_originator_message_id=move[1] if move else None,
    )
    _check_layout(data)
    assert decode_command(data) == Command(
        command_field=C_STORE_RQ,
        message_id=message_id,
        message_id_being_responded_to=None,
        affected_sop_class_uid=sop_class,
        affected_sop_instance_uid=sop_instance,
        command_data_set_type=0x0001,
        priority=priority,
        move_originator_ae_title=move[0] if move else None,
        move_originator_message_id=move[1] if move else None,
        status=None,
        error_comment=None,
    )


@pytest.mark.parametrize(
    "call",
    [
        lambda: encode_c_store_rq(70000, CT_IMAGE_STORAGE, INSTANCE_UID),
        lambda: encode_c_store_rq(-1, CT_IMAGE_STORAGE, INSTANCE_UID),
        lambda: encode_c_store_rq(1, CT_IMAGE_STORAGE, "1.2.x"),
        lambda: encode_c_store_rq(1, CT_IMAGE_STORAGE, "1." + "2" * 63),
        lambda: encode_c_store_rq(1, CT_IMAGE_STORAGE, INSTANCE_UID, priority=3),
        lambda: encode_c_store_rq(1, CT_IMAGE_STORAGE, INSTANCE_UID, move_originator_ae_title="A"),
        lambda: encode_c_store_rq(
            1,
            CT_IMAGE_STORAGE,
            INSTANCE_UID,
            move_originator_ae_title="A" * 17,
            move_originator_message_id=1,
        ),
        lambda: encode_c_store_rsp(1, "../../etc", INSTANCE_UID, 0),
        lambda: encode_c_echo_rsp(1, 0x10000),
    ],
)
def test_encoders_refuse_bad_arguments(call: Any) -> None:
    with pytest.raises(ValueError):
        call()


# -- malformed command sets -------------------------------------------------------------


def _c_store_rq_dataset() -> Dataset:
    ds = Dataset()
    ds.AffectedSOPClassUID = CT_IMAGE_STORAGE
    ds.CommandField = C_STORE_RQ
    ds.MessageID = 77
    ds.Priority = PRIORITY_MEDIUM
    ds.CommandDataSetType = 0x0001
    ds.AffectedSOPInstanceUID = INSTANCE_UID
    return ds


def _encode_with_group_length(ds: Dataset) -> bytes:
    body = encode(ds, True, True)
    assert body is not None
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


def _with_group_length(body: bytes) -> bytes:
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


VALID = encode_c_store_rq(
    77, CT_IMAGE_STORAGE, INSTANCE_UID, move_originator_ae_title="M", move_originator_message_id=1
)


def _decode_error(data: bytes) -> CommandError:
    with pytest.raises(CommandError) as info:
        decode_command(data)
    assert isinstance(info.value, DicomGwError)
    return info.value


def test_truncated_at_every_offset() -> None:
    for end in range(len(VALID)):
        _decode_error(VALID[:end])


def test_truncated_with_group_length_fixed_up_at_every_offset() -> None:
    # The group length is made to agree, so each cut must be caught element by element.
    decoded = set()
    for end in range(12, len(VALID)):
        try:
            decode_command(_with_group_length(VALID[12:end]))
        except CommandError:
            continue
        decoded.add(end)
    # Only a cut just before an optional element (0000,1030) MoveOriginatorAE or
    # (0000,1031) MoveOriginatorMessageID leaves a valid command set.
    move_ae = VALID.index(struct.pack("<HHI", 0, 0x1030, 2))
    assert decoded == {move_ae, move_ae + 10}


@pytest.mark.parametrize("delta", [-2, -1, 1, 2, 0x10000])
def test_group_length_wrong(delta: int) -> None:
    data = bytearray(VALID)
    struct.pack_into("<I", data, 8, len(VALID) - 12 + delta)
    error = _decode_error(bytes(data))
    assert "CommandGroupLength" in error.problem


def test_trailing_bytes_after_the_group() -> None:
    _decode_error(VALID + b"\x00\x00")


def test_group_length_not_first() -> None:
    error = _decode_error(VALID[12:])
    assert "(0000,0000)" in error.problem


def test_group_length_with_wrong_length() -> None:
    body = VALID[12:]
    _decode_error(struct.pack("<HHIH", 0, 0, 2, len(body)) + body)


def test_tag_outside_group_0000() -> None:
    data = _with_group_length(VALID[12:] + struct.pack("<HHI", 0x0008, 0x0016, 2) + b"1\0")
    error = _decode_error(data)
    assert "(0008,0016)" in error.problem
    assert error.status == status.MISTYPED_ARGUMENT
    # The command was identified before the stray element, so it can be answered.
    assert (error.command_field, error.message_id) == (C_STORE_RQ, 77)


@pytest.mark.parametrize("length", [0, 1, 3, 4])
def test_us_with_wrong_length(length: int) -> None:
    body = (
        struct.pack("<HHIH", 0, 0x0100, 2, C_STORE_RQ)
        + struct.pack("<HHI", 0, 0x0110, length)
        + b"\x01\x00\x00\x00"[:length]
        + struct.pack("<HHIH", 0, 0x0700, 2, 0)
    )
    error = _decode_error(_with_group_length(body))
    assert f"MessageID is US but has length {length}" in error.problem
    assert error.status == status.MISTYPED_ARGUMENT
    assert (error.command_field, error.message_id) == (C_STORE_RQ, None)


def test_value_runs_past_the_end() -> None:
    body = struct.pack("<HHIH", 0, 0x0100, 2, C_STORE_RQ) + struct.pack("<HHI", 0, 0x1000, 100)
    error = _decode_error(_with_group_length(body + b"1.2\0"))
    assert "runs past the end" in error.problem
    error = _decode_error(_with_group_length(body[:-4] + struct.pack("<I", 0xFFFFFFFF)))
    assert "runs past the end" in error.problem


def test_stray_bytes_shorter_than_a_header() -> None:
    _decode_error(_with_group_length(VALID[12:] + b"\x00\x00\x00\x00"))


def test_elements_out_of_order_or_repeated() -> None:
    echo = encode_c_echo_rq(1)[12:]
    uid, rest = echo[:26], echo[26:]
    _decode_error(_with_group_length(rest + uid))
    _decode_error(_with_group_length(uid + rest[:10] + rest))


@pytest.mark.parametrize(
    "keyword",
    [
        "AffectedSOPClassUID",
        "CommandField",
        "MessageID",
        "Priority",
        "CommandDataSetType",
        "AffectedSOPInstanceUID",
    ],
)
def test_c_store_rq_missing_required_element(keyword: str) -> None:
    ds = _c_store_rq_dataset()
    delattr(ds, keyword)
    error = _decode_error(_encode_with_group_length(ds))
    assert keyword in error.problem
    assert error.status == status.MISTYPED_ARGUMENT


@pytest.mark.parametrize("keyword", ["MessageIDBeingRespondedTo", "Status"])
def test_response_missing_required_element(keyword: str) -> None:
    ds = _read(encode_c_store_rsp(1, CT_IMAGE_STORAGE, INSTANCE_UID, 0))
    del ds.CommandGroupLength
    delattr(ds, keyword)
    assert keyword in _decode_error(_encode_with_group_length(ds)).problem


def test_empty_uid_counts_as_missing() -> None:
    ds = _c_store_rq_dataset()
    ds.AffectedSOPInstanceUID = ""
    assert (
        "AffectedSOPInstanceUID is missing" in _decode_error(_encode_with_group_length(ds)).problem
    )


@pytest.mark.parametrize(
    ("keyword", "value", "expected"),
    [
        ("AffectedSOPInstanceUID", "../../etc/passwd", status.INVALID_OBJECT_INSTANCE),
        ("AffectedSOPInstanceUID", "1.2..3", status.INVALID_OBJECT_INSTANCE),
        ("AffectedSOPInstanceUID", "1." + "2" * 63, status.INVALID_OBJECT_INSTANCE),
        ("AffectedSOPClassUID", "1.2.3\0x", status.SOP_CLASS_NOT_SUPPORTED),
        ("AffectedSOPClassUID", "1.2.3.\xe9", status.SOP_CLASS_NOT_SUPPORTED),
    ],
)
def test_invalid_uid(keyword: str, value: str, expected: int) -> None:
    data = _encode_with_group_length(_c_store_rq_dataset())
    old = (CT_IMAGE_STORAGE if keyword == "AffectedSOPClassUID" else INSTANCE_UID).encode() + b"\0"
    new = value.encode("latin-1")
    new += b"\0" * (len(new) % 2)
    start = data.index(old)
    data = data[: start - 4] + struct.pack("<I", len(new)) + new + data[start + len(old) :]
    error = _decode_error(_with_group_length(data[12:]))
    assert error.status == expected
    assert (error.command_field, error.message_id) == (
        (None, None) if keyword == "AffectedSOPClassUID" else (C_STORE_RQ, 77)
    )


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_command_error(data: bytes) -> None:
    for candidate in (data, _with_group_length(data)):
        with contextlib.suppress(CommandError):
            decode_command(candidate)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=4))
def test_mutated_command_set_raises_only_command_error(flips: list[tuple[int, int]]) -> None:
    data = bytearray(VALID)
    for offset, value in flips:
        data[offset] = value
    try:
        command = decode_command(bytes(data))
    except CommandError:
        return
    assert isinstance(command.command_field, int)


# -- statuses ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "category"),
    [
        (status.SUCCESS, "success"),
        (status.PENDING, "pending"),
        (status.PENDING_WARNING, "pending"),
        (status.CANCEL, "cancel"),
        (status.WARNING_COERCION, "warning"),
        (status.WARNING_ELEMENTS_DISCARDED, "warning"),
        (status.WARNING_DATASET_DOES_NOT_MATCH, "warning"),
        (0xB001, "warning"),
        (0xBFFF, "warning"),
        (status.WARNING_OPTIONAL_ATTRIBUTES_NOT_SUPPORTED, "warning"),
        (status.ATTRIBUTE_LIST_ERROR, "warning"),
        (status.ATTRIBUTE_VALUE_OUT_OF_RANGE, "warning"),
        (status.OUT_OF_RESOURCES, "failure"),
        (0xA7FF, "failure"),
        (0xA701, "failure"),
        (status.MOVE_DESTINATION_UNKNOWN, "failure"),
        (status.DATASET_DOES_NOT_MATCH_SOP_CLASS, "failure"),
        (0xA9FF, "failure"),
        (status.CANNOT_UNDERSTAND, "failure"),
        (0xCFFF, "failure"),
        (status.SOP_CLASS_NOT_SUPPORTED, "failure"),
        (status.DUPLICATE_SOP_INSTANCE, "failure"),
        (status.PROCESSING_FAILURE, "failure"),
        (status.INVALID_ARGUMENT_VALUE, "failure"),
        (status.INVALID_OBJECT_INSTANCE, "failure"),
        (status.NOT_AUTHORIZED, "failure"),
        (status.DUPLICATE_INVOCATION, "failure"),
        (status.UNRECOGNIZED_OPERATION, "failure"),
        (status.MISTYPED_ARGUMENT, "failure"),
        (status.RESOURCE_LIMITATION, "failure"),
        (0xD000, "failure"),  # undefined by PS3.7 C: never taken for success
    ],
)
def test_status_category(code: int, category: str) -> None:
    assert status.status_category(code) == category


def test_status_values() -> None:
    # PS3.4 Table B.2-1: B006 is "Elements Discarded", B007 "Data Set does not match".
    assert status.WARNING_ELEMENTS_DISCARDED == 0xB006
    assert status.WARNING_DATASET_DOES_NOT_MATCH == 0xB007
    assert status.SOP_CLASS_NOT_SUPPORTED == 0x0122
    assert status.DUPLICATE_SOP_INSTANCE == 0x0111


def test_c_store_rsp_without_affected_uids() -> None:
    """Answering a request whose UIDs were not UIDs: both are U(=), left out."""
    data = encode_c_store_rsp(7, None, None, 0x0117, "Affected SOP Instance UID invalid")
    ds = _read(data)
    assert "AffectedSOPClassUID" not in ds
    assert "AffectedSOPInstanceUID" not in ds
    assert (ds.CommandField, ds.MessageIDBeingRespondedTo, ds.Status) == (0x8001, 7, 0x0117)
    assert ds.ErrorComment == "Affected SOP Instance UID invalid"
    assert ds.CommandGroupLength == len(data) - 12
    decoded = decode_command(data)
    assert decoded.affected_sop_instance_uid is None
    assert decoded.status == 0x0117
