# The acceptor's receive path: every PDU of an association, with P-DATA-TF
# streamed (PS3.8 9.3.5, Annex E): data set fragments go from the receive
# buffer straight to the open file with writev(2), never copied into Python
# objects and never reassembled. Included by _core.pyx after crc32c.pyx.

from libc.errno cimport EINTR, errno
from libc.string cimport memset
from posix.uio cimport iovec, writev

cdef extern from "<fcntl.h>" nogil:
    # Linux (pyconfig.h defines _GNU_SOURCE): start writeback without waiting.
    int sync_file_range(int fd, long long offset, long long nbytes, unsigned int flags)
    const unsigned int SYNC_FILE_RANGE_WRITE


cdef enum:
    # PS3.8 9.3.5.1 Table 9-23 and Annex E.2: a PDV item is item-length (4 bytes,
    # big endian, counting what follows), presentation-context-ID (1 byte), the
    # message control header (1 byte) and the fragment.
    PDV_HEADER_LENGTH = 6
    PDV_MIN_ITEM_LENGTH = 2
    MCH_COMMAND = 0x01
    MCH_LAST = 0x02
    # Command sets are a few hundred bytes; anything near this is an attack.
    MAX_COMMAND_LENGTH = 65536
    IOV_BATCH = 64
    # expect_dataset's fd for a data set of which only the head is wanted.
    HEAD_ONLY = -2

HEAD_ONLY_FD = HEAD_ONLY


cdef inline uint32_t _read_be32(const unsigned char* p) noexcept nogil:
    return ((<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | <uint32_t>p[3])


# NOTE: a stream is the state of one live association; never pickled.
@cython.auto_pickle(False)
cdef class ReceiveStream:
    """Parses everything an association receives, with a cursor over the buffer.

    Control PDUs (A-ASSOCIATE, A-RELEASE, A-ABORT) are small: they are held
    until complete and handed to ``on_control(pdu)``. P-DATA-TF is parsed in
    place: command fragments are gathered (a command set is small) and handed
    to ``on_command(context_id, command)`` once complete; data set fragments
    are written to the sink file descriptor set by :meth:`expect_dataset`,
    checksummed (CRC32C) and their first ``head_budget`` bytes kept for the
    metadata scan; ``on_dataset(context_id)`` is called at the last fragment.
    With ``write_behind``, writeback of what was written starts at once
    (sync_file_range), for receivers that fsync every instance anyway.
    So Python is entered once per message, not once per fragment.

    A PDU or PDV split across reads is tracked by remaining counts. Every
    length is checked before use; a violation raises a PDUError and poisons
    the stream (the association is aborted, PS3.8 9.2 Evt19).
    """

    cdef object _on_control
    cdef object _on_command
    cdef object _on_dataset
    cdef uint32_t _max_pdata_length
    cdef uint32_t _max_associate_length
    cdef object _error
    cdef bint _stopped
    # PDU level: header bytes held (a split header) and body bytes still due.
    cdef unsigned char _hdr[PDU_HEADER_LENGTH]
    cdef int _hdr_have
    cdef unsigned char _pdu_type
    cdef uint64_t _pdu_left
    cdef bytearray _control
    # PDV level (inside a P-DATA-TF body).
    cdef unsigned char _pdv_hdr[PDV_HEADER_LENGTH]
    cdef int _pdv_hdr_have
    cdef uint64_t _pdv_left
    cdef unsigned char _pdv_context
    cdef unsigned char _pdv_mch
    # Presentation contexts accepted at negotiation (PS3.8 9.3.3.2).
    cdef unsigned char _accepted[256]
    cdef bint _established
    # Message level.
    cdef bytearray _command
    cdef int _command_context
    cdef int _dataset_context      # -1: no data set is expected
    cdef int _fd                   # -1: fragments are consumed and discarded
    cdef int _write_errno
    cdef uint32_t _crc
    cdef uint64_t _dataset_bytes
    cdef uint64_t _max_dataset_bytes  # 0: no limit
    cdef bytearray _head
    cdef Py_ssize_t _head_budget
    cdef iovec _iov[IOV_BATCH]
    cdef int _iov_n
    cdef bint _write_behind
    # Counters read by the metrics collector.
    cdef readonly uint64_t bytes_in
    cdef readonly uint64_t pdus_in
    cdef readonly uint64_t pdvs_in
    cdef readonly uint64_t datasets_in
    cdef readonly uint64_t dataset_bytes_in

    def __init__(
        self,
        on_control,
        on_command,
        on_dataset,
        long long max_pdata_length,
        long long max_associate_length=65536,
        Py_ssize_t head_budget=65536,
        bint write_behind=False,
        unsigned long long max_dataset_bytes=0,
    ):
        self._on_control = on_control
        self._on_command = on_command
        self._on_dataset = on_dataset
        self._max_pdata_length = _pdu_length_cap("max_pdata_length", max_pdata_length)
        self._max_associate_length = _pdu_length_cap("max_associate_length", max_associate_length)
        self._control = bytearray()
        self._command = bytearray()
        self._head = bytearray()
        self._head_budget = head_budget
        self._write_behind = write_behind
        self._max_dataset_bytes = max_dataset_bytes
        self._dataset_context = -1
        self._command_context = -1
        self._fd = -1
        memset(self._accepted, 0, sizeof(self._accepted))

    def accept_context(self, int context_id):
        """Marks a presentation context as accepted (P-DATA on others aborts).

        P-DATA-TF before the first accepted context is an unexpected PDU (Sta2).
        """
        if context_id < 1 or context_id > 255:
            raise ValueError(f"presentation context ID {context_id} is not 1-255")
        self._accepted[context_id] = 1
        self._established = True

    def set_max_pdata_length(self, long long n):
        self._max_pdata_length = _pdu_length_cap("max_pdata_length", n)

    def expect_dataset(self, int context_id, int fd):
        """The command just delivered announced a data set: write it to ``fd``
        (-1: consume and discard it, e.g. when the store is refused anyway;
        HEAD_ONLY (-2): keep only its head, e.g. a C-FIND identifier)."""
        self._dataset_context = context_id
        self._fd = fd
        self._write_errno = 0
        self._crc = 0
        self._dataset_bytes = 0
        PyByteArray_Resize(self._head, 0)

    def finish_dataset(self):
        """(crc32c, size, head, write_errno) of the data set just completed."""
        head = bytes(self._head)
        PyByteArray_Resize(self._head, 0)
        result = (self._crc, self._dataset_bytes, head, self._write_errno)
        self._fd = -1
        return result

    def stop(self):
        """Ignore everything after this (Sta13: awaiting transport close)."""
        self._stopped = True
        self._iov_n = 0

    @property
    def in_message(self):
        """True while a command or data set is partly received."""
        return PyByteArray_GET_SIZE(self._command) > 0 or self._dataset_context >= 0

    cdef int _fail(self, object error) except -1:
        self._error = error
        self._iov_n = 0
        raise error

    cdef int _check_header(self, unsigned char pdu_type, uint32_t length) except -1:
        error = _pdu_length_error(
            pdu_type, length, self._max_pdata_length, self._max_associate_length
        )
        if error is not None:
            self._fail(error)
        if pdu_type == PDU_P_DATA_TF and not self._established:
            self._fail(UnexpectedPDU(pdu_type, "before the association is established"))
        if pdu_type == PDU_P_DATA_TF and length < PDV_HEADER_LENGTH:
            self._fail(InvalidPDU(pdu_type, f"P-DATA-TF of {length} bytes holds no PDV item"))
        return 0

    def feed(self, const unsigned char[::1] data not None):
        """Consumes ``data`` (read in place), calling back as messages complete."""
        if self._error is not None:
            raise self._error.with_traceback(None)
        cdef Py_ssize_t n = data.shape[0]
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t take
        cdef const unsigned char* p
        if n == 0 or self._stopped:
            return
        p = &data[0]
        self.bytes_in += <uint64_t>n
        try:
            while pos < n and not self._stopped:
                if self._pdu_left == 0 and self._hdr_have < PDU_HEADER_LENGTH:
                    take = min(PDU_HEADER_LENGTH - self._hdr_have, n - pos)
                    # Judge the type byte at once: an HTTP request fails here.
                    if self._hdr_have == 0:
                        error = _pdu_type_error(p[pos])
                        if error is not None:
                            self._fail(error)
                    memcpy(&self._hdr[self._hdr_have], p + pos, <size_t>take)
                    self._hdr_have += <int>take
                    pos += take
                    if self._hdr_have < PDU_HEADER_LENGTH:
                        break
                    self._pdu_type = self._hdr[0]
                    self._pdu_left = _pdu_read_length(self._hdr)
                    self._check_header(self._pdu_type, <uint32_t>self._pdu_left)
                    self.pdus_in += 1
                    if self._pdu_type != PDU_P_DATA_TF:
                        PyByteArray_Resize(self._control, 0)
                        _pdu_append(self._control, self._hdr, PDU_HEADER_LENGTH)
                    if self._pdu_left == 0:
                        self._pdu_done()
                    continue
                if self._pdu_type == PDU_P_DATA_TF:
                    pos = self._pdata(p, pos, n)
                else:
                    take = <Py_ssize_t>min(self._pdu_left, <uint64_t>(n - pos))
                    _pdu_append(self._control, p + pos, take)
                    pos += take
                    self._pdu_left -= <uint64_t>take
                    if self._pdu_left == 0:
                        self._pdu_done()
        finally:
            # The iovecs point into `data`: they must be written before we return.
            self._flush()

    cdef int _pdu_done(self) except -1:
        self._hdr_have = 0
        if self._pdu_type == PDU_P_DATA_TF:
            if self._pdv_hdr_have != 0 or self._pdv_left != 0:
                self._fail(InvalidPDU(PDU_P_DATA_TF, "a PDV item runs past the end of its PDU"))
            return 0
        pdu = bytes(self._control)
        PyByteArray_Resize(self._control, 0)
        self._on_control(pdu)
        return 0

    cdef Py_ssize_t _pdata(self, const unsigned char* p, Py_ssize_t pos, Py_ssize_t n) except -1:
        """Consumes P-DATA-TF body bytes from p[pos:n]; returns the new pos."""
        cdef Py_ssize_t take
        cdef uint32_t item_length
        while pos < n and self._pdu_left > 0 and not self._stopped:
            if self._pdv_left == 0 and self._pdv_hdr_have < PDV_HEADER_LENGTH:
                take = <Py_ssize_t>min(
                    <uint64_t>(PDV_HEADER_LENGTH - self._pdv_hdr_have),
                    min(<uint64_t>(n - pos), self._pdu_left),
                )
                memcpy(&self._pdv_hdr[self._pdv_hdr_have], p + pos, <size_t>take)
                self._pdv_hdr_have += <int>take
                pos += take
                self._pdu_left -= <uint64_t>take
                if self._pdv_hdr_have < PDV_HEADER_LENGTH:
                    if self._pdu_left == 0:
                        self._fail(InvalidPDU(PDU_P_DATA_TF, "PDU ends inside a PDV item header"))
                    break
                item_length = _read_be32(self._pdv_hdr)
                self._pdv_begin(item_length)
                if self._pdv_left == 0:
                    self._pdv_end()
                if self._pdu_left == 0:
                    self._pdu_done()
                continue
            take = <Py_ssize_t>min(self._pdv_left, <uint64_t>(n - pos))
            self._fragment(p + pos, take)
            pos += take
            self._pdv_left -= <uint64_t>take
            self._pdu_left -= <uint64_t>take
            if self._pdv_left == 0:
                self._pdv_end()
                if self._pdu_left == 0:
                    self._pdu_done()
        return pos

    cdef int _pdv_begin(self, uint32_t item_length) except -1:
        cdef unsigned char context = self._pdv_hdr[4]
        cdef unsigned char mch = self._pdv_hdr[5]
        self.pdvs_in += 1
        if item_length < PDV_MIN_ITEM_LENGTH:
            self._fail(InvalidPDU(PDU_P_DATA_TF, f"PDV item-length {item_length} is below 2"))
        if <uint64_t>(item_length - PDV_MIN_ITEM_LENGTH) > self._pdu_left:
            self._fail(InvalidPDU(
                PDU_P_DATA_TF,
                f"PDV item-length {item_length} runs past the end of its PDU",
            ))
        if not self._accepted[context]:
            self._fail(InvalidPDU(
                PDU_P_DATA_TF, f"presentation context ID {context} was not accepted"
            ))
        if mch & MCH_COMMAND:
            if self._dataset_context >= 0:
                self._fail(InvalidPDU(PDU_P_DATA_TF, "a command fragment arrived inside a data set"))
            if PyByteArray_GET_SIZE(self._command) and context != self._command_context:
                self._fail(InvalidPDU(PDU_P_DATA_TF, "command fragments on two presentation contexts"))
            self._command_context = context
        else:
            if self._dataset_context < 0:
                self._fail(InvalidPDU(PDU_P_DATA_TF, "a data set fragment arrived with no command announcing it"))
            if context != self._dataset_context:
                self._fail(InvalidPDU(
                    PDU_P_DATA_TF,
                    f"data set fragment on presentation context {context}, "
                    f"its command came on {self._dataset_context}",
                ))
        self._pdv_context = context
        self._pdv_mch = mch
        self._pdv_left = item_length - PDV_MIN_ITEM_LENGTH
        self._pdv_hdr_have = 0
        return 0

    cdef int _fragment(self, const unsigned char* src, Py_ssize_t length) except -1:
        cdef Py_ssize_t head_have, head_take
        if length == 0:
            return 0
        if self._pdv_mch & MCH_COMMAND:
            if PyByteArray_GET_SIZE(self._command) + length > MAX_COMMAND_LENGTH:
                self._fail(InvalidPDU(PDU_P_DATA_TF, f"command set over {MAX_COMMAND_LENGTH} bytes"))
            _pdu_append(self._command, src, length)
            return 0
        self._dataset_bytes += <uint64_t>length
        self.dataset_bytes_in += <uint64_t>length
        if self._max_dataset_bytes and self._dataset_bytes > self._max_dataset_bytes:
            self._fail(DataSetTooLarge(self._max_dataset_bytes))
        if self._fd < 0 and self._fd != HEAD_ONLY:
            return 0
        head_have = PyByteArray_GET_SIZE(self._head)
        if head_have < self._head_budget:
            head_take = min(self._head_budget - head_have, length)
            _pdu_append(self._head, src, head_take)
        if self._fd < 0:
            return 0
        self._crc = dgw_crc32c(self._crc, src, <size_t>length)
        self._iov[self._iov_n].iov_base = <void*>src
        self._iov[self._iov_n].iov_len = <size_t>length
        self._iov_n += 1
        if self._iov_n == IOV_BATCH:
            self._flush()
        return 0

    cdef int _pdv_end(self) except -1:
        cdef int context
        if not (self._pdv_mch & MCH_LAST):
            return 0
        context = self._pdv_context
        if self._pdv_mch & MCH_COMMAND:
            command = bytes(self._command)
            PyByteArray_Resize(self._command, 0)
            self._command_context = -1
            self._on_command(context, command)
        else:
            self._flush()
            self._dataset_context = -1
            self.datasets_in += 1
            self._on_dataset(context)
        return 0

    cdef void _flush(self) noexcept:
        """writev the gathered fragments; a failure is kept for finish_dataset().

        NOTE: after a write error the rest of the data set is still consumed (the
        peer keeps sending) but not written; the store then fails with 0xA700.
        """
        cdef int first = 0
        cdef ssize_t written
        if self._iov_n == 0:
            return
        if self._fd < 0 or self._write_errno:
            self._iov_n = 0
            return
        while first < self._iov_n:
            written = writev(self._fd, &self._iov[first], self._iov_n - first)
            if written < 0:
                if errno == EINTR:
                    continue
                self._write_errno = errno
                break
            while first < self._iov_n and <size_t>written >= self._iov[first].iov_len:
                written -= <ssize_t>self._iov[first].iov_len
                first += 1
            if first < self._iov_n and written > 0:
                self._iov[first].iov_base = <char*>self._iov[first].iov_base + written
                self._iov[first].iov_len -= <size_t>written
        self._iov_n = 0
        if self._write_behind and not self._write_errno:
            # PERF: the pages start going to disk while the rest arrives, so the
            # fsync before Success waits for little more than the journal.
            sync_file_range(self._fd, 0, 0, SYNC_FILE_RANGE_WRITE)
