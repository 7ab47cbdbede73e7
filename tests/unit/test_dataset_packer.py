"""DataSetPacker (the TLS path's PDUs) against DataSetSender (the plain path's): the
same bytes for every data set length, peer maximum PDU and buffer size, whatever
the buffer boundaries cut (headers never, fragments anywhere)."""

from __future__ import annotations

import os
import socket

import pytest

from dicomgw._core import DataSetSender
from dicomgw.association.codec import PDATA_HEADERS, DataSetPacker
from tests.unit.test_send_stream import drain, parse_pdata, send_all

CONTEXT_ID = 7


def sender_bytes(data: bytes, max_pdu: int) -> bytes:
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        b.settimeout(10)
        sender = DataSetSender(a.fileno(), data, max_pdu, CONTEXT_ID)
        received = send_all(sender, b)
        a.shutdown(socket.SHUT_WR)
        return received + drain(b)


def packer_bytes(data: bytes, max_pdu: int, buffer_size: int, start: int = 0) -> bytes:
    packer = DataSetPacker(memoryview(data), max_pdu, CONTEXT_ID)
    out = memoryview(bytearray(buffer_size))
    chunks = []
    while not packer.done:
        end = packer.fill(out, start)
        assert end > start, "no progress"
        chunks.append(bytes(out[start:end]))
        start = 0
    assert packer.fill(out) == 0
    assert packer.pos == len(data)
    return b"".join(chunks)


LENGTHS = [0, 1, 4089, 4090, 4091, 3 * 4090, 100_000]
# NOTE: a maximum PDU of 7 carries one byte per PDU; long data sets add nothing there.
CASES = [(n, pdu) for pdu in (7, 4096, 16_384) for n in LENGTHS if pdu > 7 or n < 5000]


@pytest.mark.parametrize(("length", "max_pdu"), CASES)
@pytest.mark.parametrize("buffer_size", [PDATA_HEADERS.size, 13, 4096, 262_144])
def test_same_bytes_as_the_compiled_sender(length: int, max_pdu: int, buffer_size: int) -> None:
    data = os.urandom(length)
    packed = packer_bytes(data, max_pdu, buffer_size)
    assert packed == sender_bytes(data, max_pdu)
    assert parse_pdata(packed, CONTEXT_ID, max_pdu) == data


def test_after_held_bytes() -> None:
    """A command PDU held at the start of the first buffer-full."""
    data = os.urandom(50_000)
    assert packer_bytes(data, 16_384, 20_000, start=300) == sender_bytes(data, 16_384)


def test_header_is_never_split() -> None:
    """With 11 bytes of room left, the next PDU starts in the next buffer-full."""
    packer = DataSetPacker(os.urandom(100), 4096, CONTEXT_ID)
    out = memoryview(bytearray(200))
    assert packer.fill(out, 189) == 189
    assert packer.fill(out, 0) == 112
    assert packer.done


def test_room_for_data_is_required() -> None:
    with pytest.raises(ValueError, match="leaves no room for data"):
        DataSetPacker(b"x", 6, CONTEXT_ID)
