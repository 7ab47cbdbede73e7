# The forward path's send loop: one data set as P-DATA-TF PDUs (PS3.8 9.3.5,
# Annex E) written to the requestor's non-blocking socket with writev(2), many
# PDUs per call. Included by _core.pyx after receive_stream.pyx, whose PDV
# constants it uses.
#
# PERF: writev over an mmap of the stored file beat sendfile(2) (the 12-byte
# header with MSG_MORE, then the fragment) at every peer maximum PDU measured:
# 200 x 0.5 MiB files to a draining process over loopback, 2 vCPUs, median of 9,
# 16 KiB PDUs 2.4 vs 1.3 GB/s, 256 KiB 2.4 vs 1.7, 1 MiB 2.3 vs 1.9. sendfile
# costs two system calls per PDU; writev one per 32 PDUs. sendfile did use less
# sender CPU from 256 KiB PDUs up (0.18 vs 0.27 s/GB); loopback cannot show what
# its zero-copy saves on a real NIC, so that is the case to re-measure.

import os


class ChecksumMismatch(ValueError):
    """The data set's CRC-32C is not the one expected: it was found before its last
    PDU went out, so the peer holds an incomplete data set (abort the association)."""

    def __init__(self, expected, actual):
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"data set checksum crc32c:{actual:08x}, expected crc32c:{expected:08x}"
        )

# NOTE: Linux only, like the receive path; there EWOULDBLOCK is EAGAIN.
from libc.errno cimport EAGAIN


cdef enum:
    # A P-DATA-TF carrying one PDV: PDU-type, reserved, PDU-length (PS3.8 9.3.5
    # Table 9-22), then item-length, presentation-context-ID and the message
    # control header (Table 9-23, Annex E.2) before the fragment.
    PDATA_HEADERS_LENGTH = PDU_HEADER_LENGTH + PDV_HEADER_LENGTH
    # PDUs gathered into one writev: 64 iovecs, far below IOV_MAX (1024).
    SEND_BATCH_PDUS = 32


cdef inline void _write_be32(unsigned char* p, uint32_t value) noexcept nogil:
    p[0] = <unsigned char>(value >> 24)
    p[1] = <unsigned char>(value >> 16)
    p[2] = <unsigned char>(value >> 8)
    p[3] = <unsigned char>value


cdef inline void _pdata_headers(
    unsigned char* h, uint32_t fragment, unsigned char context_id, bint last
) noexcept nogil:
    """The 12 bytes before a data set fragment.

    Offsets 0-5: PDU-type 04H, reserved, PDU-length = fragment + 6 (PS3.8 9.3.5);
    6-9: PDV item-length = fragment + 2; 10: presentation-context-ID; 11: message
    control header, 00H (data set, not last) or 02H (data set, last) (PS3.8 E.2).
    """
    h[0] = PDU_P_DATA_TF
    h[1] = 0
    _write_be32(h + 2, fragment + PDV_HEADER_LENGTH)
    _write_be32(h + 6, fragment + PDV_MIN_ITEM_LENGTH)
    h[10] = context_id
    h[11] = MCH_LAST if last else 0


# NOTE: a sender is the state of one transfer on a live socket; never pickled.
@cython.auto_pickle(False)
cdef class DataSetSender:
    """Sends one data set as P-DATA-TF PDUs of one PDV each (PS3.8 9.3.5, Annex E).

    ``data`` is the data set: bytes for a converted one, or a memoryview of an
    mmap of the stored file, so the file's pages go from the page cache to the
    socket without passing through Python objects. Each PDU carries as much as
    the peer's Maximum Length Received allows (``max_pdu_length``, PS3.8 D.1:
    it bounds PDU-length, which counts the 6-byte PDV header too); the last one
    has the last-fragment bit. A zero-length data set is one empty last PDV.

    :meth:`send` writes until the socket is full or the data set is out; a PDU
    cut anywhere, inside its header too, by a partial write is resumed at the
    next call. The caller owns ``sock_fd`` (non-blocking) and keeps ``data``
    alive; Python is entered once per socket-full, not once per PDU.

    With ``expected_crc`` (0 to 0xFFFFFFFF) each batch of PDUs is checksummed
    just before it is written, while its pages are in cache: the file is read
    once, not once to verify and again to send. The batch holding the last PDU
    goes out only if the whole data set matched; otherwise :meth:`send` raises
    :class:`ChecksumMismatch` with that PDU unsent.
    """

    cdef int _sock
    cdef unsigned char _context_id
    cdef uint32_t _max_fragment
    cdef const unsigned char[::1] _data
    cdef uint64_t _length
    cdef uint64_t _pos              # data set bytes sent
    cdef uint64_t _fragment_end     # where the current PDU's fragment ends
    cdef unsigned char _header[PDATA_HEADERS_LENGTH]
    cdef int _header_sent           # bytes of the current PDU's headers sent
    cdef bint _done
    cdef bint _verify
    cdef uint32_t _expected_crc
    cdef uint32_t _crc
    cdef uint64_t _crc_end          # data set bytes checksummed
    cdef uint64_t _batch_end        # where the fragments _gather gathered end
    cdef iovec _iov[2 * SEND_BATCH_PDUS]
    cdef unsigned char _ahead[SEND_BATCH_PDUS - 1][PDATA_HEADERS_LENGTH]
    # Counters read by the metrics collector.
    cdef readonly uint64_t bytes_out
    cdef readonly uint64_t pdus_out

    def __init__(
        self,
        int sock_fd,
        const unsigned char[::1] data not None,
        long long max_pdu_length,
        int context_id,
        long long expected_crc=-1,
    ):
        if context_id < 1 or context_id > 255 or not context_id & 1:
            raise ValueError(
                f"presentation context ID {context_id} is not an odd number 1-255 (PS3.8 9.3.2.2)"
            )
        if max_pdu_length <= PDV_HEADER_LENGTH or max_pdu_length > PDU_LENGTH_MAX:
            raise ValueError(
                f"max_pdu_length must be between {PDV_HEADER_LENGTH + 1} and {PDU_LENGTH_MAX} "
                f"(room for a PDV header and one byte), got {max_pdu_length}"
            )
        self._sock = sock_fd
        self._context_id = <unsigned char>context_id
        self._max_fragment = <uint32_t>(max_pdu_length - PDV_HEADER_LENGTH)
        self._data = data
        self._length = <uint64_t>data.shape[0]
        self._pos = 0
        self._verify = expected_crc >= 0
        if self._verify:
            self._expected_crc = _crc32c_start(expected_crc)
        self._crc = 0
        self._crc_end = 0
        self._start_fragment()

    @property
    def sent(self):
        """Data set bytes sent so far."""
        return self._pos

    @property
    def done(self):
        """True once the last PDU is wholly written."""
        return self._done

    cdef void _start_fragment(self) noexcept nogil:
        cdef uint64_t fragment = min(<uint64_t>self._max_fragment, self._length - self._pos)
        self._fragment_end = self._pos + fragment
        _pdata_headers(
            self._header, <uint32_t>fragment, self._context_id, self._fragment_end == self._length
        )
        self._header_sent = 0

    cdef int _gather(self) noexcept nogil:
        """iovecs for the rest of the current PDU and up to 31 whole PDUs after it."""
        cdef int n = 0
        cdef int k = 0
        cdef uint64_t p = self._fragment_end
        cdef uint64_t fragment
        cdef const unsigned char* data = NULL
        if self._length:
            data = &self._data[0]
        if self._header_sent < PDATA_HEADERS_LENGTH:
            self._iov[n].iov_base = <void*>(self._header + self._header_sent)
            self._iov[n].iov_len = <size_t>(PDATA_HEADERS_LENGTH - self._header_sent)
            n += 1
        if self._fragment_end > self._pos:
            self._iov[n].iov_base = <void*>(data + self._pos)
            self._iov[n].iov_len = <size_t>(self._fragment_end - self._pos)
            n += 1
        while p < self._length and k < SEND_BATCH_PDUS - 1:
            fragment = min(<uint64_t>self._max_fragment, self._length - p)
            _pdata_headers(
                self._ahead[k], <uint32_t>fragment, self._context_id, p + fragment == self._length
            )
            self._iov[n].iov_base = <void*>self._ahead[k]
            self._iov[n].iov_len = PDATA_HEADERS_LENGTH
            self._iov[n + 1].iov_base = <void*>(data + p)
            self._iov[n + 1].iov_len = <size_t>fragment
            n += 2
            k += 1
            p += fragment
        self._batch_end = p
        return n

    cdef bint _checked(self) noexcept nogil:
        """Checksums what the gathered batch adds; False if it completes the data
        set and the data set does not match (then nothing of it is written)."""
        cdef const unsigned char* data
        if self._batch_end > self._crc_end:
            data = &self._data[0]
            self._crc = dgw_crc32c(
                self._crc, data + self._crc_end, <size_t>(self._batch_end - self._crc_end)
            )
            self._crc_end = self._batch_end
        return self._crc_end < self._length or self._crc == self._expected_crc

    cdef void _advance(self, uint64_t n) noexcept nogil:
        """Accounts for n bytes written, from the current PDU's unsent part on."""
        cdef uint64_t take
        while True:
            take = min(n, <uint64_t>(PDATA_HEADERS_LENGTH - self._header_sent))
            self._header_sent += <int>take
            n -= take
            take = min(n, self._fragment_end - self._pos)
            self._pos += take
            n -= take
            if self._header_sent < PDATA_HEADERS_LENGTH or self._pos < self._fragment_end:
                return
            self.pdus_out += 1
            if self._fragment_end == self._length:
                self._done = True
                return
            self._start_fragment()
            if n == 0:
                return

    def send(self):
        """Writes until the data set is out (True) or the socket is full (False).

        After False, wait until the socket is writable and call again. Raises
        OSError for a socket error (EPIPE, ECONNRESET: the peer is gone).
        """
        cdef ssize_t n
        cdef int err = 0
        cdef int count
        cdef bint damaged = False
        with nogil:
            while not self._done:
                count = self._gather()
                if self._verify and not self._checked():
                    damaged = True
                    break
                n = writev(self._sock, self._iov, count)
                if n < 0:
                    if errno == EINTR:
                        continue
                    err = errno
                    break
                self.bytes_out += <uint64_t>n
                self._advance(<uint64_t>n)
        if damaged:
            raise ChecksumMismatch(self._expected_crc, self._crc)
        if err == EAGAIN:
            return False
        if err:
            raise OSError(err, f"sending P-DATA-TF: {os.strerror(err)}")
        return True
