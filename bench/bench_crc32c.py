"""Throughput of dicomgw._core.crc32c against zlib.crc32 and hashlib.sha256.

Run from the repository root after an in-place build:

    PYTHONPATH=src python bench/bench_crc32c.py

Each function checksums the same 64 MiB of random bytes; the best of a few runs
is reported in GB/s (10^9 bytes per second). The receiver computes crc32c on
every data set it streams to disk, so its cost at ~1 GB/s is 1 / (GB/s) of a core.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import zlib
from collections.abc import Callable

from dicomgw._core import CRC32C_HARDWARE, _crc32c_portable, crc32c

SIZE = 64 * 1024 * 1024
REPEAT = 5


def best_gbps(func: Callable[[bytes], object], data: bytes) -> float:
    best = float("inf")
    for _ in range(REPEAT):
        start = time.perf_counter()
        func(data)
        best = min(best, time.perf_counter() - start)
    return len(data) / best / 1e9


def main() -> None:
    data = os.urandom(SIZE)
    path = "hardware" if CRC32C_HARDWARE else "portable tables"
    cases: list[tuple[str, Callable[[bytes], object]]] = [
        (f"crc32c ({path})", crc32c),
        ("crc32c (portable tables)", _crc32c_portable),
        ("zlib.crc32", zlib.crc32),
        ("hashlib.sha256", lambda b: hashlib.sha256(b).digest()),
    ]
    sys.stdout.write(f"{SIZE >> 20} MiB, best of {REPEAT}\n")
    for name, func in cases:
        sys.stdout.write(f"{name:<28} {best_gbps(func, data):7.2f} GB/s\n")


if __name__ == "__main__":
    main()
