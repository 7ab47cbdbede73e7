"""Random bytes and random chunkings never crash the receive parser."""

from __future__ import annotations

import contextlib
import os
import tempfile

from hypothesis import given, settings
from hypothesis import strategies as st

from dicomgw._core import ReceiveStream
from dicomgw.errors import PDUError
from tests.unit.test_receive_stream import DATASET, STREAM, Recorder


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2000), st.lists(st.integers(1, 300), max_size=20))
def test_random_bytes_only_raise_pdu_errors(data: bytes, cuts: list[int]) -> None:
    rec = Recorder(-1)
    pos = 0
    try:
        for cut in [*cuts, len(data)]:
            rec.stream.feed(data[pos : pos + cut])
            pos += cut
    except PDUError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 700), min_size=1, max_size=40))
def test_valid_stream_any_chunking(cuts: list[int]) -> None:
    fd, path = tempfile.mkstemp()
    os.unlink(path)
    try:
        rec = Recorder(fd)
        pos = 0
        while pos < len(STREAM):
            for cut in cuts:
                rec.stream.feed(STREAM[pos : pos + cut])
                pos += cut
        assert os.pread(fd, 1 << 20, 0) == DATASET
        assert rec.finished[0][1] == len(DATASET)
    finally:
        os.close(fd)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(STREAM) - 1), st.integers(0, 255))
def test_single_byte_mutations(index: int, value: int) -> None:
    mutated = bytearray(STREAM)
    mutated[index] = value
    stream = ReceiveStream(lambda pdu: None, lambda c, b: None, lambda c: None, 65536)
    stream.accept_context(1)
    with contextlib.suppress(PDUError):
        stream.feed(bytes(mutated))
