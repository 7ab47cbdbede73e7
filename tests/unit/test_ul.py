"""The Upper Layer's PDU builders (golden bytes, decoded beside them) and the UID rule."""

from __future__ import annotations

import pytest
from pynetdicom.pdu import A_ABORT_RQ, P_DATA_TF

from dicomgw.ul.pdu import (
    ABORT_SOURCE_PROVIDER,
    ABORT_UNEXPECTED_PDU,
    MCH_LAST,
    PDU_NAMES,
    a_abort,
    p_data_command,
    p_data_dataset,
    p_data_headers,
)
from dicomgw.ul.uids import is_valid_uid


def test_a_abort_golden() -> None:
    # 07 type, 00 reserved, 00000004 length, 00 00 reserved, 02 source
    # (service-provider), 02 reason (unexpected-PDU): PS3.8 9.3.8.
    assert a_abort(ABORT_SOURCE_PROVIDER, ABORT_UNEXPECTED_PDU) == bytes.fromhex(
        "07 00 00000004 0000 02 02"
    )
    decoded = A_ABORT_RQ()
    decoded.decode(a_abort(ABORT_SOURCE_PROVIDER, ABORT_UNEXPECTED_PDU))
    assert (decoded.source, decoded.reason_diagnostic) == (2, 2)


def test_p_data_command_golden() -> None:
    # 04 type, 00, 0000000A PDU-length (4 + 6), 00000006 PDV item-length
    # (context ID + MCH + 4 bytes), 01 context ID, 03 MCH (command, last): PS3.8 9.3.5.
    pdu = p_data_command(1, b"\x01\x02\x03\x04")
    assert pdu == bytes.fromhex("04 00 0000000A 00000006 01 03 01020304")
    decoded = P_DATA_TF()
    decoded.decode(pdu)
    [item] = decoded.presentation_data_value_items
    assert (item.presentation_context_id, item.presentation_data_value) == (
        1,
        b"\x03\x01\x02\x03\x04",
    )


def test_p_data_headers_of_a_last_data_set_fragment() -> None:
    assert p_data_headers(5, MCH_LAST, 0) == bytes.fromhex("04 00 00000006 00000002 05 02")


def test_pdu_names_are_the_standards() -> None:
    assert [PDU_NAMES[t] for t in range(1, 8)] == [
        "A-ASSOCIATE-RQ",
        "A-ASSOCIATE-AC",
        "A-ASSOCIATE-RJ",
        "P-DATA-TF",
        "A-RELEASE-RQ",
        "A-RELEASE-RP",
        "A-ABORT",
    ]


@pytest.mark.parametrize(
    ("uid", "valid"),
    [
        ("1.2.840.10008.1.1", True),
        ("0", True),
        ("1.0.2", True),
        ("1." + "2" * 62, True),  # 64 characters
        ("1." + "2" * 63, False),  # 65
        ("", False),
        ("1.02", False),  # a leading zero (PS3.5 9.1)
        ("1..2", False),
        ("1.2.", False),
        (".1", False),
        ("1.2\n", False),  # $ would match before a final newline
        ("1.2/3", False),
        ("1.2 ", False),
    ],
)
def test_one_uid_rule(uid: str, valid: bool) -> None:
    assert is_valid_uid(uid) is valid


@pytest.mark.parametrize(
    ("size", "peer_max_pdu", "pdus"),
    [(0, 16384, 1), (100, 16384, 1), (40, 16, 4), (30, 16, 3), (5000, 0, 1)],
)
def test_p_data_dataset_fragments_within_the_peers_maximum(
    size: int, peer_max_pdu: int, pdus: int
) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    wire, got, flags = p_data_dataset(3, data, peer_max_pdu), b"", []
    while wire:
        pdu = P_DATA_TF()
        length = int.from_bytes(wire[2:6], "big")
        assert peer_max_pdu == 0 or length <= peer_max_pdu
        pdu.decode(wire[: 6 + length])
        wire = wire[6 + length :]
        (item,) = pdu.presentation_data_value_items
        assert item.presentation_context_id == 3
        flags.append(item.presentation_data_value[0])
        got += item.presentation_data_value[1:]
    assert got == data
    assert flags == [0x00] * (pdus - 1) + [MCH_LAST]  # data set fragments, the last marked
