"""dicomgw._core.crc32c (CRC-32C, Castagnoli) against RFC 3720 vectors and a bitwise oracle.

Both paths are checked: crc32c() (hardware when CRC32C_HARDWARE, else the
tables) and _crc32c_portable() (always the slicing-by-8 tables).
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from dicomgw._core import CRC32C_HARDWARE, _crc32c_portable, crc32c

Crc = Callable[[bytes | bytearray | memoryview, int], int]

POLY = 0x82F63B78  # CRC-32C, reflected (RFC 3720 B.4)


def reference_crc32c(data: bytes, crc: int = 0) -> int:
    """Bit at a time, straight from the definition; slow but obviously right."""
    reg = crc ^ 0xFFFFFFFF
    for byte in data:
        reg ^= byte
        for _ in range(8):
            reg = (reg >> 1) ^ POLY if reg & 1 else reg >> 1
    return reg ^ 0xFFFFFFFF


IMPLEMENTATIONS = [
    pytest.param(crc32c, id="crc32c"),
    pytest.param(_crc32c_portable, id="portable"),
]

# RFC 3720 B.4 (iSCSI CRC-32C examples) and the usual check value.
VECTORS = [
    (b"", 0x00000000),
    (b"123456789", 0xE3069283),
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
]


def test_hardware_flag_is_bool() -> None:
    assert isinstance(CRC32C_HARDWARE, bool)


def test_reference_matches_vectors() -> None:
    for data, expected in VECTORS:
        assert reference_crc32c(data) == expected


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize(("data", "expected"), VECTORS)
def test_known_vectors(impl: Crc, data: bytes, expected: int) -> None:
    assert impl(data, 0) == expected


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_accepts_bytes_bytearray_memoryview(impl: Crc) -> None:
    data = b"123456789"
    assert impl(bytearray(data), 0) == 0xE3069283
    assert impl(memoryview(data), 0) == 0xE3069283
    assert impl(memoryview(b"xx123456789yy")[2:-2], 0) == 0xE3069283


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_every_length_and_alignment_against_reference(impl: Crc) -> None:
    rng = random.Random(3720)
    pool = rng.randbytes(300 + 16)
    view = memoryview(pool)
    for length in range(301):
        # Offsets 0..15 move the start across every 8- and 16-byte alignment.
        offset = rng.randrange(16)
        chunk = view[offset : offset + length]
        assert impl(chunk, 0) == reference_crc32c(bytes(chunk)), (length, offset)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_nonzero_start_against_reference(impl: Crc) -> None:
    rng = random.Random(7)
    for length in (0, 1, 7, 8, 9, 63, 64, 65, 255):
        data = rng.randbytes(length)
        start = rng.getrandbits(32)
        assert impl(data, start) == reference_crc32c(data, start)


# Lengths around the hardware path's block boundaries: 3 x 256 and 3 x 8192
# bytes run as three interleaved chains joined by the shift tables.
BLOCK_LENGTHS = [767, 768, 769, 1536 + 5, 24575, 24576, 24577, 3 * 24576 + 768 + 13]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("length", BLOCK_LENGTHS)
def test_block_boundaries_against_portable_and_reference(impl: Crc, length: int) -> None:
    data = random.Random(length).randbytes(length + 3)[3:]
    expected = reference_crc32c(data)
    assert impl(data, 0) == expected


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_incremental_equals_one_shot(impl: Crc) -> None:
    rng = random.Random(42)
    for _ in range(200):
        data = rng.randbytes(rng.randrange(0, 4000))
        view = memoryview(data)
        cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randrange(1, 5)))
        crc = 0
        start = 0
        for cut in [*cuts, len(data)]:
            crc = impl(view[start:cut], crc)
            start = cut
        assert crc == impl(data, 0)


def test_large_input_both_paths_agree() -> None:
    # Over the GIL-release threshold (64 KiB) and over several 24 KiB blocks.
    data = random.Random(1).randbytes(1 << 20)
    one_shot = crc32c(data)
    assert _crc32c_portable(data) == one_shot
    view = memoryview(data)
    assert crc32c(view[300_001:], crc32c(view[:300_001])) == one_shot


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_bad_start_value_is_rejected(impl: Crc) -> None:
    with pytest.raises(ValueError, match="crc must be"):
        impl(b"x", -1)
    with pytest.raises(ValueError, match="crc must be"):
        impl(b"x", 1 << 32)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_non_contiguous_or_non_buffer_is_rejected(impl: Crc) -> None:
    with pytest.raises(BufferError):
        impl(memoryview(b"abcdef")[::2], 0)
    with pytest.raises(TypeError):
        impl("abc", 0)  # type: ignore[arg-type]
