# PDU stream framer: cuts a TCP byte stream into whole DICOM Upper Layer PDUs
# (PS3.8 9.3). Included by _core.pyx.

cimport cython
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy

from dicomgw.errors import (
    DataSetTooLarge,
    InvalidPDU,
    PDUTooLarge,
    UnexpectedPDU,
    UnrecognizedPDU,
)


cdef enum:
    # PS3.8 9.3 (Tables 9-11, 9-17, 9-21, 9-22, 9-24, 9-25, 9-26): every PDU starts
    # with PDU-type (offset 0), a reserved byte (offset 1) and PDU-length (offsets
    # 2-5, unsigned 32-bit big endian, counting the bytes after the header).
    PDU_HEADER_LENGTH = 6
    PDU_LENGTH_OFFSET = 2
    PDU_A_ASSOCIATE_RQ = 0x01
    PDU_A_ASSOCIATE_AC = 0x02
    PDU_A_ASSOCIATE_RJ = 0x03
    PDU_P_DATA_TF = 0x04
    PDU_A_RELEASE_RQ = 0x05
    PDU_A_RELEASE_RP = 0x06
    PDU_A_ABORT = 0x07
    # A-ASSOCIATE-RJ, A-RELEASE-RQ/RP and A-ABORT carry exactly 4 bytes after the
    # header (PS3.8 9.3.4, 9.3.6, 9.3.7, 9.3.8).
    PDU_FIXED_LENGTH = 4

# The PDU-length field is 32 bits, so no cap above this can ever bind.
cdef uint32_t PDU_LENGTH_MAX = 0xFFFFFFFF


cdef inline uint32_t _pdu_read_length(const unsigned char* header) noexcept nogil:
    """PDU-length at offsets 2-5 of a complete 6-byte header (big endian, PS3.8 9.3)."""
    return ((<uint32_t>header[2] << 24) | (<uint32_t>header[3] << 16)
            | (<uint32_t>header[4] << 8) | <uint32_t>header[5])


cdef inline bint _pdu_is_fixed_length(unsigned char pdu_type) noexcept nogil:
    return (pdu_type == PDU_A_ASSOCIATE_RJ or pdu_type == PDU_A_RELEASE_RQ
            or pdu_type == PDU_A_RELEASE_RP or pdu_type == PDU_A_ABORT)


cdef uint32_t _pdu_length_cap(str name, long long value) except? 0:
    if value < 0 or value > PDU_LENGTH_MAX:
        raise ValueError(
            f"{name} must be between 0 and {PDU_LENGTH_MAX} (PDU-length is an unsigned "
            f"32-bit field, PS3.8 9.3), got {value}"
        )
    return <uint32_t>value


cdef object _pdu_type_error(unsigned char pdu_type):
    """UnrecognizedPDU for a type byte outside 01H-07H, else None."""
    if pdu_type < PDU_A_ASSOCIATE_RQ or pdu_type > PDU_A_ABORT:
        return UnrecognizedPDU(pdu_type)
    return None


cdef object _pdu_length_error(
    unsigned char pdu_type, uint32_t length, uint32_t max_pdata_length, uint32_t max_associate_length
):
    """The error for a PDU-length this type may not have, else None (PS3.8 9.3)."""
    cdef uint32_t cap
    if _pdu_is_fixed_length(pdu_type):
        if length != PDU_FIXED_LENGTH:
            return InvalidPDU(
                pdu_type,
                f"PDU-length is {length}, but this PDU type always has "
                f"PDU-length {PDU_FIXED_LENGTH} (PS3.8 9.3)",
            )
        return None
    cap = max_pdata_length if pdu_type == PDU_P_DATA_TF else max_associate_length
    if length > cap:
        return PDUTooLarge(pdu_type, length, cap)
    return None


cdef int _pdu_append(bytearray buf, const unsigned char* src, Py_ssize_t count) except -1:
    """Appends count bytes at src to buf; growth is amortized by CPython's bytearray."""
    cdef Py_ssize_t held = PyByteArray_GET_SIZE(buf)
    if count > 0:
        PyByteArray_Resize(buf, held + count)
        memcpy(PyByteArray_AS_STRING(buf) + held, src, <size_t>count)
    return 0


# NOTE: a framer is the state of one live connection; pickling it is never meant.
@cython.auto_pickle(False)
cdef class PDUFramer:
    """Splits a received byte stream into whole PDUs (PS3.8 9.3).

    Each PDU is PDU-type (offset 0), reserved (offset 1, not tested on receipt as
    PS3.8 9.3 requires), PDU-length (offsets 2-5, unsigned 32-bit big endian) and
    PDU-length bytes. The framer checks only what is needed to find the next
    PDU boundary safely: the type is one of 01H-07H, the length is within the cap
    for that type, and the four fixed-length PDUs have PDU-length 4. The fields
    inside a PDU are left to the codecs.

    A PDU split across feed() calls, anywhere including inside the header, is
    held in one bytearray until complete. Held bytes grow only as they arrive, so
    a peer that announces a large PDU and then stalls costs no more memory than it
    actually sent.

    Any error poisons the framer: the association is going to be aborted
    (PS3.8 9.2, Evt19), so every later feed() raises the same exception, and PDUs
    completed earlier in the failing call are dropped rather than acted upon.
    """

    cdef bytearray _buf
    # Total size (header + PDU-length) of the held PDU once its header is
    # complete and checked; 0 while at a boundary or inside the header.
    cdef uint64_t _need
    cdef uint32_t _max_pdata_length
    cdef uint32_t _max_associate_length
    cdef object _error
    cdef uint64_t _pdus
    cdef uint64_t _bytes_in

    def __init__(self, long long max_pdata_length, long long max_associate_length=65536):
        self._max_pdata_length = _pdu_length_cap("max_pdata_length", max_pdata_length)
        self._max_associate_length = _pdu_length_cap(
            "max_associate_length", max_associate_length
        )
        self._buf = bytearray()
        self._need = 0
        self._error = None
        self._pdus = 0
        self._bytes_in = 0

    @property
    def pending(self):
        """Bytes held for an incomplete PDU (0 at a PDU boundary)."""
        return PyByteArray_GET_SIZE(self._buf)

    @property
    def pdus(self):
        """Complete PDUs returned by feed() so far."""
        return self._pdus

    @property
    def bytes_in(self):
        """Bytes consumed so far; after an error, up to the end of the offending field."""
        return self._bytes_in

    def set_max_pdata_length(self, long long n):
        """Sets the P-DATA-TF cap, e.g. after negotiation (PS3.8 D.1).

        It applies to P-DATA-TF PDUs whose header has not been completed yet; a
        P-DATA-TF already being held was checked against the cap at the time.
        """
        self._max_pdata_length = _pdu_length_cap("max_pdata_length", n)

    cdef int _fail(self, object error, Py_ssize_t consumed) except -1:
        # NOTE: the held bytes are released at once; the framer never resumes.
        self._error = error
        self._bytes_in += <uint64_t>consumed
        self._need = 0
        PyByteArray_Resize(self._buf, 0)
        raise error

    cdef int _check_type(self, unsigned char pdu_type, Py_ssize_t consumed) except -1:
        error = _pdu_type_error(pdu_type)
        if error is not None:
            self._fail(error, consumed)
        return 0

    cdef int _check_length(
        self, unsigned char pdu_type, uint32_t length, Py_ssize_t consumed
    ) except -1:
        error = _pdu_length_error(
            pdu_type, length, self._max_pdata_length, self._max_associate_length
        )
        if error is not None:
            self._fail(error, consumed)
        return 0

    def feed(self, const unsigned char[::1] data not None):
        """Consumes all of data and returns the PDUs it completed, in order.

        data is bytes, bytearray or a C-contiguous byte memoryview; it is read in
        place, not copied. Each returned item is a whole PDU (6-byte header +
        body) as bytes. Raises UnrecognizedPDU as soon as the type byte is seen,
        PDUTooLarge or InvalidPDU as soon as the header is complete (before any
        body byte is held).
        """
        if self._error is not None:
            # with_traceback(None): re-raising must not grow the stored traceback.
            raise self._error.with_traceback(None)
        cdef Py_ssize_t n = data.shape[0]
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t held, take
        cdef const unsigned char* p
        cdef const unsigned char* header
        cdef uint32_t length
        cdef list out = []
        if n == 0:
            return out
        p = &data[0]
        while pos < n:
            held = PyByteArray_GET_SIZE(self._buf)
            if self._need == 0:
                if held == 0 and n - pos >= PDU_HEADER_LENGTH:
                    # PERF: the header is in the input, so check it there and, when
                    # the whole PDU is too, copy it out once without holding it.
                    header = p + pos
                    self._check_type(header[0], pos + 1)
                    length = _pdu_read_length(header)
                    self._check_length(header[0], length, pos + PDU_HEADER_LENGTH)
                    if <uint64_t>length <= <uint64_t>(n - pos - PDU_HEADER_LENGTH):
                        out.append(PyBytes_FromStringAndSize(
                            <const char*>header, PDU_HEADER_LENGTH + <Py_ssize_t>length
                        ))
                        pos += PDU_HEADER_LENGTH + <Py_ssize_t>length
                        continue
                    self._need = PDU_HEADER_LENGTH + <uint64_t>length
                else:
                    # The header itself is split: hold what there is of it.
                    if held == 0:
                        self._check_type(p[pos], pos + 1)
                    take = min(PDU_HEADER_LENGTH - held, n - pos)
                    _pdu_append(self._buf, p + pos, take)
                    pos += take
                    if held + take < PDU_HEADER_LENGTH:
                        break
                    header = <const unsigned char*>PyByteArray_AS_STRING(self._buf)
                    length = _pdu_read_length(header)
                    self._check_length(header[0], length, pos)
                    self._need = PDU_HEADER_LENGTH + <uint64_t>length
                    held = PDU_HEADER_LENGTH
            # The header is checked and self._need >= held: hold the body bytes.
            take = <Py_ssize_t>min(self._need - <uint64_t>held, <uint64_t>(n - pos))
            _pdu_append(self._buf, p + pos, take)
            pos += take
            if <uint64_t>(held + take) == self._need:
                out.append(bytes(self._buf))
                PyByteArray_Resize(self._buf, 0)
                self._need = 0
        self._bytes_in += <uint64_t>n
        self._pdus += <uint64_t>len(out)
        return out
