"""Types of dicomgw._core, the compiled core built from csrc/_core.pyx."""

import os
from collections.abc import Callable

class PDUFramer:
    """Splits a received byte stream into whole PDUs (PS3.8 9.3); see csrc/pdu_framer.pyx.

    feed() raises dicomgw.errors.UnrecognizedPDU, PDUTooLarge or InvalidPDU, after
    which the framer is poisoned and every later feed() raises the same error.
    """

    def __init__(self, max_pdata_length: int, max_associate_length: int = 65536) -> None: ...
    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]: ...
    @property
    def pending(self) -> int: ...
    @property
    def pdus(self) -> int: ...
    @property
    def bytes_in(self) -> int: ...
    def set_max_pdata_length(self, n: int) -> None: ...

# CRC-32C (Castagnoli); see csrc/crc32c.pyx and csrc/crc32c.h.
CRC32C_HARDWARE: bool
"""True when crc32c() uses CPU instructions (SSE4.2 / ARMv8 CRC), not the tables."""

def crc32c(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC-32C of data continuing from crc; crc32c(b, crc32c(a)) == crc32c(a + b)."""

def _crc32c_portable(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """crc32c() forced through the portable slicing-by-8 tables; for tests and benchmarks."""

# Metadata scan of a received data set's first bytes (PS3.5 7); see csrc/metadata_scan.pyx.
METADATA_TAGS: tuple[int, ...]
"""The wanted top-level tags, ascending, as ints (0x00100020 is PatientID)."""

def scan_metadata(
    head: bytes | bytearray | memoryview, explicit_vr: bool, little_endian: bool, complete: bool
) -> dict[int, bytes]:
    """{tag: raw value, trailing spaces/NULs stripped} for METADATA_TAGS at top level.

    Raises dicomgw.errors.MalformedDataSet for impossible structure or, when complete,
    for anything running past the end of head; ValueError for implicit VR big endian.
    """

# The commit of a received file; see csrc/durable_commit.pyx.

def commit_file(
    fd: int,
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    directory: str | os.PathLike[str],
    sync: bool,
) -> None:
    """fsync fd (if sync) and close it, rename src to dst, fsync directory (if sync),
    without the GIL. fd is always closed; OSError names the failed step."""

# The acceptor's receive parser; see csrc/receive_stream.pyx.

HEAD_ONLY_FD: int
"""expect_dataset's fd for a data set of which only the head is kept."""

class ReceiveStream:
    """Parses an association's bytes in place; P-DATA data sets go straight to a file.

    feed() raises dicomgw.errors.PDUError subclasses (the stream is then poisoned)
    and whatever the callbacks raise.
    """

    bytes_in: int
    pdus_in: int
    pdvs_in: int
    datasets_in: int
    dataset_bytes_in: int

    def __init__(
        self,
        on_control: Callable[[bytes], None],
        on_command: Callable[[int, bytes], None],
        on_dataset: Callable[[int], None],
        max_pdata_length: int,
        max_associate_length: int = 65536,
        head_budget: int = 65536,
        write_behind: bool = False,
        max_dataset_bytes: int = 0,
    ) -> None: ...
    def accept_context(self, context_id: int) -> None: ...
    def set_max_pdata_length(self, n: int) -> None: ...
    def expect_dataset(self, context_id: int, fd: int) -> None: ...
    def finish_dataset(self) -> tuple[int, int, bytes, int]:
        """(crc32c, size, head, write_errno) of the data set just completed."""
    def stop(self) -> None: ...
    @property
    def in_message(self) -> bool: ...
    def feed(self, data: bytes | bytearray | memoryview) -> None: ...

# The forward path's data set sender; see csrc/send_stream.pyx.

class ChecksumMismatch(ValueError):
    """The data set's CRC-32C differs from the expected one; its last PDU is unsent."""

    expected: int
    actual: int

class DataSetSender:
    """Sends one data set as P-DATA-TF PDUs of one PDV each over a non-blocking socket.

    data is the data set (bytes, or a memoryview of an mmap of the stored file);
    max_pdu_length is the peer's Maximum Length Received (PS3.8 D.1). send()
    returns True once the last PDU is out, False when the socket is full (wait
    until it is writable and call again); it raises OSError for socket errors.
    With expected_crc (0 to 0xFFFFFFFF) the data set is checksummed as it goes
    and the last PDU is held back (ChecksumMismatch) unless it matches.
    """

    bytes_out: int
    pdus_out: int

    def __init__(
        self,
        sock_fd: int,
        data: bytes | bytearray | memoryview,
        max_pdu_length: int,
        context_id: int,
        expected_crc: int = -1,
    ) -> None: ...
    @property
    def sent(self) -> int: ...
    @property
    def done(self) -> bool: ...
    def send(self) -> bool: ...
