"""DataSetSender: a data set as P-DATA-TF PDUs (PS3.8 9.3.5, Annex E), parsed back.

The receiver side of every test checks each PDU's headers field by field and
that the fragments join up to exactly the data set; the partial-write tests
make the kernel cut PDUs everywhere, inside the 12 header bytes too."""

from __future__ import annotations

import mmap
import os
import random
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomgw._core import ChecksumMismatch, DataSetSender, crc32c

MAX_PDU = 1024
FRAGMENT = MAX_PDU - 6  # PS3.8 D.1: PDU-length counts the PDV header (item-length, ID, MCH)
CONTEXT_ID = 5


def parse_pdata(stream: bytes, context_id: int, max_pdu: int) -> bytes:
    """The data set carried by ``stream``, checking every header on the way.

    Each PDU must be: 04H, 00H, PDU-length (BE) = item-length + 4; one PDV whose
    item-length (BE) = fragment + 2, our context ID, MCH 00H except the last (02H).
    """
    fragments: list[bytes] = []
    pos = 0
    while pos < len(stream):
        pdu_type, reserved, pdu_length = struct.unpack_from(">BBI", stream, pos)
        item_length, cx, mch = struct.unpack_from(">IBB", stream, pos + 6)
        assert (pdu_type, reserved) == (0x04, 0)
        assert pdu_length == item_length + 4 <= max_pdu
        assert cx == context_id
        fragment = stream[pos + 12 : pos + 6 + pdu_length]
        assert len(fragment) == item_length - 2
        pos += 6 + pdu_length
        last = pos == len(stream)
        assert mch == (0x02 if last else 0x00), f"MCH {mch:02X} at PDU {len(fragments)}"
        assert last or len(fragment) == max_pdu - 6, "only the last PDU may be short"
        fragments.append(fragment)
    assert fragments, "no PDU at all"
    return b"".join(fragments)


def send_all(sender: DataSetSender, peer: socket.socket, chunk: int = 1 << 20) -> bytes:
    """Runs the sender to completion, reading from ``peer`` whenever the socket is full."""
    received = bytearray()
    while not sender.send():
        received += peer.recv(chunk)
    return bytes(received)


def drain(peer: socket.socket) -> bytes:
    received = bytearray()
    while True:
        data = peer.recv(1 << 20)
        if not data:
            return bytes(received)
        received += data


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.settimeout(10)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """Loopback TCP with the smallest send buffer the kernel allows: many partial writes.

    NOTE: a tiny receive buffer too would leave the sender waiting on TCP's
    zero-window probes (up to minutes), not on us."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)
    a.setblocking(False)
    b.settimeout(10)
    yield a, b
    a.close()
    b.close()


@pytest.mark.parametrize(
    "length", [0, 1, FRAGMENT - 1, FRAGMENT, FRAGMENT + 1, 2 * FRAGMENT, 33 * FRAGMENT + 7, 3 << 20]
)
def test_bytes_arrive_exactly(pair: tuple[socket.socket, socket.socket], length: int) -> None:
    a, b = pair
    data = random.Random(length).randbytes(length)
    sender = DataSetSender(a.fileno(), data, MAX_PDU, CONTEXT_ID)
    received = send_all(sender, b)
    a.shutdown(socket.SHUT_WR)
    stream = received + drain(b)
    assert parse_pdata(stream, CONTEXT_ID, MAX_PDU) == data
    pdus = max(1, -(-length // FRAGMENT))
    assert (sender.done, sender.sent, sender.pdus_out) == (True, length, pdus)
    assert sender.bytes_out == len(stream) == length + 12 * pdus
    assert sender.send() is True, "a finished sender has nothing more to write"


def test_file_through_mmap(tmp_path: Path, pair: tuple[socket.socket, socket.socket]) -> None:
    """The forward path: a slice of an mmap of the stored file, its data set region."""
    a, b = pair
    meta = b"\0" * 128 + b"DICM" + b"M" * 200
    dataset = random.Random(7).randbytes(5 * FRAGMENT + 11)
    path = tmp_path / "x.dcm"
    path.write_bytes(meta + dataset)
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        view = memoryview(mapped)[len(meta) :]
        sender = DataSetSender(a.fileno(), view, MAX_PDU, CONTEXT_ID)
        received = send_all(sender, b)
        del sender  # NOTE: it holds the buffer; the mmap cannot close while it does.
        view.release()
    a.shutdown(socket.SHUT_WR)
    assert parse_pdata(received + drain(b), CONTEXT_ID, MAX_PDU) == dataset


@pytest.mark.parametrize("max_pdu", [7, 8, 13, 100, 4096])
def test_partial_writes_resume_anywhere(
    tcp_pair: tuple[socket.socket, socket.socket], max_pdu: int
) -> None:
    """A tiny send buffer and reads of random sizes cut PDUs at all kinds of offsets;
    resuming must still produce well-formed PDUs and exactly the data."""
    a, b = tcp_pair
    rng = random.Random(max_pdu)
    data = rng.randbytes(200_000)
    sender = DataSetSender(a.fileno(), data, max_pdu, CONTEXT_ID)
    received = bytearray()
    stops = inside_header = 0
    while not sender.send():
        stops += 1
        # bytes_out = 12 per finished PDU + the current PDU's header bytes + data bytes.
        if 0 < sender.bytes_out - sender.sent - 12 * sender.pdus_out < 12:
            inside_header += 1
        received += b.recv(rng.randint(1, 5000))
    a.shutdown(socket.SHUT_WR)
    received += drain(b)
    assert parse_pdata(bytes(received), CONTEXT_ID, max_pdu) == data
    assert stops > 10, "the socket never filled: the test did not exercise resumption"
    if max_pdu <= 13:
        assert inside_header > 0, "no write stopped inside a header"


@pytest.mark.parametrize("length", [0, 1, FRAGMENT, 33 * FRAGMENT + 7, 3 << 20])
def test_checksummed_while_sent(pair: tuple[socket.socket, socket.socket], length: int) -> None:
    a, b = pair
    data = random.Random(length).randbytes(length)
    sender = DataSetSender(a.fileno(), data, MAX_PDU, CONTEXT_ID, crc32c(data))
    received = send_all(sender, b)
    a.shutdown(socket.SHUT_WR)
    assert parse_pdata(received + drain(b), CONTEXT_ID, MAX_PDU) == data


@pytest.mark.parametrize("length", [1, FRAGMENT, 33 * FRAGMENT + 7, 3 << 20])
def test_a_mismatch_holds_back_the_last_pdu(
    tcp_pair: tuple[socket.socket, socket.socket], length: int
) -> None:
    """Through partial writes too: everything but the PDU with the last-fragment
    bit may go; that one never does, so the peer cannot store the data set."""
    a, b = tcp_pair
    data = random.Random(length).randbytes(length)
    wrong = crc32c(data) ^ 1
    sender = DataSetSender(a.fileno(), data, MAX_PDU, CONTEXT_ID, wrong)
    received = bytearray()
    with pytest.raises(ChecksumMismatch) as raised:
        while not sender.send():
            received += b.recv(1 << 16)
    assert (raised.value.expected, raised.value.actual) == (wrong, crc32c(data))
    assert f"expected crc32c:{wrong:08x}" in str(raised.value)
    a.shutdown(socket.SHUT_WR)
    received += drain(b)
    assert not sender.done
    # Whole PDUs (then at most part of one, the association to be aborted), none last.
    pos = 0
    while pos + 12 <= len(received):
        pdu_length = struct.unpack_from(">I", received, pos + 2)[0]
        assert received[pos + 11] == 0x00, "the last PDU went out"
        pos += 6 + pdu_length
    pdus = -(-length // FRAGMENT)
    assert len(received) <= length + 12 * pdus - 13  # the last PDU's headers and byte


def test_peer_gone_raises_oserror(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    b.close()
    sender = DataSetSender(a.fileno(), b"x" * 100_000, MAX_PDU, CONTEXT_ID)
    with pytest.raises(OSError) as raised:
        sender.send()
    assert raised.value.errno in (32, 104)  # EPIPE, ECONNRESET


@pytest.mark.parametrize(
    ("max_pdu", "context_id", "problem"),
    [
        (6, 1, "max_pdu_length"),
        (1 << 32, 1, "max_pdu_length"),
        (MAX_PDU, 0, "context ID"),
        (MAX_PDU, 2, "context ID"),
        (MAX_PDU, 257, "context ID"),
    ],
)
def test_invalid_arguments(max_pdu: int, context_id: int, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        DataSetSender(os.open(os.devnull, os.O_WRONLY), b"x", max_pdu, context_id)
