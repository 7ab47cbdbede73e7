"""ReceiveStream: P-DATA-TF parsed in place, data sets written straight to a file.

Golden PDUs (PS3.8 9.3.5 / Annex E), every stream split at every offset, and the
errors each malformed input must raise."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest

from dicomgw._core import ReceiveStream, crc32c
from dicomgw.errors import InvalidPDU, PDUError, PDUTooLarge, UnexpectedPDU, UnrecognizedPDU
from tests.support.pdus import p_data, pdv

COMMAND = b"\x00\x00\x00\x00\x04\x00\x00\x00\x10\x00\x00\x00" + b"C" * 20
DATASET = bytes(range(256)) * 8 + b"tail"


# A-RELEASE-RQ: type 05, reserved, length 4, four reserved bytes.
RELEASE_RQ = bytes.fromhex("05 00 00000004 00000000")

# One C-STORE: the command in two fragments (mch 01, then 03 = command + last),
# the data set in three fragments over two PDUs (00, 00 | 02 = last).
MESSAGE = [
    p_data(pdv(1, 0x01, COMMAND[:10]), pdv(1, 0x03, COMMAND[10:])),
    p_data(pdv(1, 0x00, DATASET[:1000]), pdv(1, 0x00, DATASET[1000:1500])),
    p_data(pdv(1, 0x02, DATASET[1500:])),
]
STREAM = b"".join(MESSAGE) + RELEASE_RQ


class Recorder:
    def __init__(self, fd: int = -1, head_budget: int = 100) -> None:
        self.events: list[tuple[str, object]] = []
        self.fd = fd
        self.finished: list[tuple[int, int, bytes, int]] = []
        self.stream = ReceiveStream(
            self.on_control, self.on_command, self.on_dataset, 65536, head_budget=head_budget
        )
        self.stream.accept_context(1)

    def on_control(self, pdu: bytes) -> None:
        self.events.append(("control", pdu))

    def on_command(self, context_id: int, command: bytes) -> None:
        self.events.append(("command", (context_id, command)))
        self.stream.expect_dataset(context_id, self.fd)

    def on_dataset(self, context_id: int) -> None:
        self.finished.append(self.stream.finish_dataset())
        self.events.append(("dataset", context_id))


@pytest.fixture
def sink() -> Iterator[int]:
    fd, path = tempfile.mkstemp()
    os.unlink(path)
    yield fd
    os.close(fd)


def written(fd: int) -> bytes:
    return os.pread(fd, 1 << 20, 0)


def test_whole_stream(sink: int) -> None:
    rec = Recorder(sink)
    rec.stream.feed(STREAM)
    assert rec.events == [("command", (1, COMMAND)), ("dataset", 1), ("control", RELEASE_RQ)]
    assert written(sink) == DATASET
    crc, size, head, errno = rec.finished[0]
    assert (crc, size, head, errno) == (crc32c(DATASET), len(DATASET), DATASET[:100], 0)
    assert rec.stream.bytes_in == len(STREAM)
    assert rec.stream.pdus_in == 4
    assert rec.stream.pdvs_in == 5
    assert rec.stream.datasets_in == 1
    assert rec.stream.dataset_bytes_in == len(DATASET)
    assert not rec.stream.in_message


@pytest.mark.parametrize("split", range(1, len(STREAM)))
def test_split_at_every_offset(split: int, sink: int) -> None:
    rec = Recorder(sink)
    rec.stream.feed(STREAM[:split])
    rec.stream.feed(STREAM[split:])
    assert rec.events == [("command", (1, COMMAND)), ("dataset", 1), ("control", RELEASE_RQ)]
    assert written(sink) == DATASET
    assert rec.finished[0][0] == crc32c(DATASET)


def test_one_byte_at_a_time(sink: int) -> None:
    rec = Recorder(sink)
    for i in range(len(STREAM)):
        rec.stream.feed(STREAM[i : i + 1])
    assert written(sink) == DATASET
    assert rec.finished[0][:2] == (crc32c(DATASET), len(DATASET))


def test_discard_sink_consumes_without_writing() -> None:
    rec = Recorder(-1)
    rec.stream.feed(STREAM)
    crc, size, head, errno = rec.finished[0]
    assert size == len(DATASET)
    assert (crc, head, errno) == (0, b"", 0)


def test_write_error_is_reported_not_raised() -> None:
    read_end, write_end = os.pipe()
    os.close(write_end)  # EBADF on the closed descriptor
    rec = Recorder(write_end)
    rec.stream.feed(STREAM)
    assert rec.finished[0][3] != 0
    os.close(read_end)


def test_in_message_between_fragments(sink: int) -> None:
    rec = Recorder(sink)
    rec.stream.feed(MESSAGE[0] + MESSAGE[1])
    assert rec.stream.in_message
    rec.stream.feed(MESSAGE[2])
    assert not rec.stream.in_message


def test_empty_last_fragment(sink: int) -> None:
    rec = Recorder(sink)
    rec.stream.feed(MESSAGE[0] + p_data(pdv(1, 0x00, DATASET)) + p_data(pdv(1, 0x02, b"")))
    assert written(sink) == DATASET
    assert rec.events[-1] == ("dataset", 1)


def test_stop_ignores_the_rest(sink: int) -> None:
    rec = Recorder(sink)
    rec.stream.stop()
    rec.stream.feed(STREAM)
    assert rec.events == []


def fresh() -> ReceiveStream:
    return Recorder().stream


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        (b"GET / HTTP/1.1\r\n", UnrecognizedPDU, "0x47"),
        (bytes.fromhex("00 00 00000004"), UnrecognizedPDU, "0x00"),
        (bytes.fromhex("04 00 FFFFFFFF"), PDUTooLarge, "4294967295"),
        (bytes.fromhex("01 00 00010001"), PDUTooLarge, "65537"),
        (bytes.fromhex("05 00 00000005"), InvalidPDU, "always has PDU-length 4"),
        (bytes.fromhex("04 00 00000003 000000"), InvalidPDU, "no PDV"),
        (p_data(pdv(3, 0x03, b"x")), InvalidPDU, "context ID 3 was not accepted"),
        (p_data(pdv(1, 0x00, b"x")), InvalidPDU, "no command announcing it"),
        (p_data(b"\x00\x00\x00\x01\x01\x03"), InvalidPDU, "below 2"),
        (p_data(b"\x00\x00\x10\x00\x01\x03" + b"x" * 10), InvalidPDU, "past the end"),
        (p_data(pdv(1, 0x01, b"") + b"\x00\x00\x00"), InvalidPDU, "ends inside a PDV item header"),
    ],
)
def test_malformed_input(data: bytes, error: type[PDUError], match: str) -> None:
    stream = fresh()
    with pytest.raises(error, match=match):
        stream.feed(data)
    with pytest.raises(error):
        stream.feed(b"\x05")  # poisoned


def test_pdata_before_any_accepted_context() -> None:
    stream = ReceiveStream(print, print, print, 65536)
    with pytest.raises(UnexpectedPDU):
        stream.feed(p_data(pdv(1, 0x03, b"x")))


def test_command_inside_a_data_set(sink: int) -> None:
    rec = Recorder(sink)
    with pytest.raises(InvalidPDU, match="command fragment arrived inside a data set"):
        rec.stream.feed(MESSAGE[0] + p_data(pdv(1, 0x01, b"x")))


def test_data_set_on_another_context(sink: int) -> None:
    rec = Recorder(sink)
    rec.stream.accept_context(3)
    with pytest.raises(InvalidPDU, match="its command came on 1"):
        rec.stream.feed(MESSAGE[0] + p_data(pdv(3, 0x00, b"x")))


def test_oversized_command_set() -> None:
    stream = fresh()
    with pytest.raises(InvalidPDU, match="command set over"):
        for _ in range(10):
            stream.feed(p_data(pdv(1, 0x01, b"x" * 8000)))


def test_bad_context_id_to_accept() -> None:
    with pytest.raises(ValueError, match="not 1-255"):
        fresh().accept_context(0)
