# CRC-32C (Castagnoli) of received data sets, computed while they stream to disk.
# The work is in crc32c.h (SSE4.2 / ARMv8 instructions or slicing-by-8 tables);
# this part exposes it to Python. Included by _core.pyx.

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport uint32_t

cdef extern from "crc32c.h" nogil:
    int dgw_crc32c_init()
    uint32_t dgw_crc32c(uint32_t crc, const unsigned char* buf, size_t len)
    uint32_t dgw_crc32c_portable(uint32_t crc, const unsigned char* buf, size_t len)


cdef enum:
    # PERF: below this the GIL round trip costs more than the CRC itself
    # (~1 us at >10 GB/s); above it other threads run while we checksum.
    CRC32C_NOGIL_MIN = 65536

# NOTE: also builds the tables, so the first call from any thread needs no setup.
CRC32C_HARDWARE = bool(dgw_crc32c_init())


cdef uint32_t _crc32c_start(long long crc) except? 0:
    if crc < 0 or crc > 0xFFFFFFFF:
        raise ValueError(
            f"crc must be a CRC-32C value between 0 and 0xFFFFFFFF (0 to start), got {crc}"
        )
    return <uint32_t>crc


cdef object _crc32c_run(object data, long long crc, bint portable):
    cdef uint32_t value = _crc32c_start(crc)
    cdef Py_buffer view
    cdef const unsigned char* buf
    cdef size_t n
    # PyBUF_SIMPLE: any C-contiguous bytes-like object, read in place (as zlib.crc32).
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        buf = <const unsigned char*>view.buf
        n = <size_t>view.len
        if n >= CRC32C_NOGIL_MIN:
            # NOTE: the buffer export pins the memory (a bytearray cannot resize
            # while exported), so reading it without the GIL is safe.
            with nogil:
                if portable:
                    value = dgw_crc32c_portable(value, buf, n)
                else:
                    value = dgw_crc32c(value, buf, n)
        elif portable:
            value = dgw_crc32c_portable(value, buf, n)
        else:
            value = dgw_crc32c(value, buf, n)
    finally:
        PyBuffer_Release(&view)
    return value


def crc32c(data, long long crc=0):
    """CRC-32C (Castagnoli, RFC 3720 B.4) of data, continuing from crc.

    data is any C-contiguous bytes-like object (bytes, bytearray, memoryview),
    read in place. Same conventions as zlib.crc32: start from 0, and
    crc32c(b, crc32c(a)) == crc32c(a + b). crc32c(b"123456789") == 0xE3069283.
    The GIL is released for inputs of 64 KiB and more.
    """
    return _crc32c_run(data, crc, False)


def _crc32c_portable(data, long long crc=0):
    """crc32c() forced through the portable table path; for tests and benchmarks."""
    return _crc32c_run(data, crc, True)
