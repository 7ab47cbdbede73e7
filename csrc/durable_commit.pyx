# The end of the stream to disk: a received instance made durable in one call
# without the GIL (fsync the temp file, close it, rename it into objects/,
# fsync the directory). Included by _core.pyx after receive_stream.pyx.
#
# PERF: the commit threads run this while the event loop writes the instance's
# index rows. In Python, each step took the GIL back in between, and each time
# waited for the event loop (or the spare-file thread) to let go of it: the
# commit took ~2 ms for ~0.5 ms of system calls (strace, 23 Nov, 2 vCPUs).

import os

from posix.fcntl cimport O_RDONLY
from posix.fcntl cimport open as c_open
from posix.unistd cimport close, fsync

cdef extern from "<stdio.h>" nogil:
    int rename(const char* old, const char* new)

cdef extern from "<fcntl.h>" nogil:
    const int O_DIRECTORY
    const int O_CLOEXEC


cdef enum:
    STEP_NONE = 0
    STEP_FSYNC = 1
    STEP_CLOSE = 2
    STEP_RENAME = 3
    STEP_DIRECTORY = 4

_STEPS = {
    STEP_FSYNC: "fsync of the received file",
    STEP_CLOSE: "close of the received file",
    STEP_RENAME: "rename into objects/",
    STEP_DIRECTORY: "fsync of the object's directory",
}


def commit_file(int fd, src, dst, directory, bint sync):
    """fsync ``fd`` (if ``sync``) and close it, rename ``src`` to ``dst``, then
    fsync ``directory`` (if ``sync``), without the GIL.

    ``fd`` is closed whatever happens. Raises OSError naming the failed step;
    after a failed fsync or close nothing was renamed and ``src`` is left for
    the caller to remove (it is never fsynced again: the kernel may have
    dropped its dirty pages).
    """
    cdef bytes b_src = os.fsencode(src)
    cdef bytes b_dst = os.fsencode(dst)
    cdef bytes b_dir = os.fsencode(directory)
    cdef const char* c_src = b_src
    cdef const char* c_dst = b_dst
    cdef const char* c_dir = b_dir
    cdef int step = STEP_NONE
    cdef int err = 0
    cdef int dfd
    with nogil:
        if sync and fsync(fd) != 0:
            step, err = STEP_FSYNC, errno
        if close(fd) != 0 and step == STEP_NONE:
            step, err = STEP_CLOSE, errno
        if step == STEP_NONE:
            if rename(c_src, c_dst) != 0:
                step, err = STEP_RENAME, errno
            elif sync:
                dfd = c_open(c_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
                if dfd < 0:
                    step, err = STEP_DIRECTORY, errno
                else:
                    if fsync(dfd) != 0:
                        step, err = STEP_DIRECTORY, errno
                    close(dfd)
    if step != STEP_NONE:
        raise OSError(err, f"{_STEPS[step]} failed: {os.strerror(err)}", os.fsdecode(b_src))
