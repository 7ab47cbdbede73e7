"""commit_file: the received file made durable in one call without the GIL."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from dicomgw._core import commit_file


def closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError as exc:
        return exc.errno == errno.EBADF
    return False


def part(tmp_path: Path, data: bytes = b"DICM data") -> tuple[int, Path]:
    path = tmp_path / "incoming.part"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o640)
    os.write(fd, data)
    return fd, path


@pytest.mark.parametrize("sync", [True, False])
def test_moves_the_file_into_place_and_closes_it(tmp_path: Path, sync: bool) -> None:
    fd, src = part(tmp_path)
    (tmp_path / "objects").mkdir()
    dst = tmp_path / "objects" / "x.dcm"
    commit_file(fd, src, dst, dst.parent, sync)
    assert closed(fd)
    assert not src.exists()
    assert dst.read_bytes() == b"DICM data"


def test_a_failed_rename_names_the_step_and_leaves_the_source(tmp_path: Path) -> None:
    fd, src = part(tmp_path)
    dst = tmp_path / "missing" / "x.dcm"
    with pytest.raises(OSError) as caught:
        commit_file(fd, src, dst, dst.parent, True)
    assert caught.value.errno == errno.ENOENT
    assert "rename into objects/" in str(caught.value)
    assert caught.value.filename == str(src)
    assert closed(fd)
    assert src.exists()


def test_a_failed_fsync_renames_nothing(tmp_path: Path) -> None:
    # fsync(2) of a pipe fails (EINVAL): the stand-in for a failed disk write.
    read_end, write_end = os.pipe()
    os.close(read_end)
    src = tmp_path / "incoming.part"
    src.write_bytes(b"data")
    (tmp_path / "objects").mkdir()
    dst = tmp_path / "objects" / "x.dcm"
    with pytest.raises(OSError) as caught:
        commit_file(write_end, src, dst, dst.parent, True)
    assert caught.value.errno == errno.EINVAL
    assert "fsync of the received file" in str(caught.value)
    assert closed(write_end)
    assert src.exists() and not dst.exists()
