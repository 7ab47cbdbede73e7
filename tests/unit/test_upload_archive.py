"""uploads/archive.py: a ZIP is checked whole, from its central directory, before
any entry is read; what comes out is bounded by the declared sizes."""

from __future__ import annotations

import random
import time
import zipfile
from pathlib import Path

import pytest

from dicomgw.uploads.archive import (
    READ_ERRORS,
    ArchiveError,
    ArchiveLimits,
    open_archive,
)

LIMITS = ArchiveLimits()


def make(path: Path, entries: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return path


def central(raw: bytes | bytearray, n: int = 0) -> int:
    """Offset of the n-th central directory header (APPNOTE 4.3.12)."""
    at = -1
    for _ in range(n + 1):
        at = raw.index(b"PK\x01\x02", at + 1)
    return at


def taken(path: Path, limits: ArchiveLimits = LIMITS) -> dict[str, bytes]:
    with open_archive(path, limits) as archive:
        out = {}
        for entry in archive.entries():
            with entry.open() as f:
                out[entry.name] = f.read()
            assert entry.size == len(out[entry.name])
        return out


def test_files_at_any_depth_come_out_without_folders_dicomdir_or_os_litter(
    tmp_path: Path,
) -> None:
    path = make(
        tmp_path / "a.zip",
        {
            "PATIENT/STUDY/SERIES1/IM1": b"one",
            "PATIENT/STUDY/SERIES2/IM2": b"two" * 1000,
            "IM3.dcm": b"three",
            "PATIENT/STUDY/": b"",
            "DICOMDIR": b"index",
            "PATIENT/dicomdir": b"index",
            "__MACOSX/PATIENT/._IM1": b"fork",
            "PATIENT/__macosx/x": b"fork",
            "PATIENT/._IM1": b"fork",
            "PATIENT/.DS_Store": b"x",
            "PATIENT/STUDY/THUMBS.DB": b"x",
            "inner.zip": b"PK\x05\x06" + bytes(18),
        },
    )
    assert taken(path) == {
        "PATIENT/STUDY/SERIES1/IM1": b"one",
        "PATIENT/STUDY/SERIES2/IM2": b"two" * 1000,
        "IM3.dcm": b"three",
        # Not expanded: the caller refuses it as not DICOM.
        "inner.zip": b"PK\x05\x06" + bytes(18),
    }


def test_stored_entries_backslash_folders_and_an_empty_archive(tmp_path: Path) -> None:
    path = make(
        tmp_path / "s.zip", {"A\\B\\IM1": b"x" * 10, "A\\DICOMDIR": b"i"}, zipfile.ZIP_STORED
    )
    assert taken(path) == {"A/B/IM1": b"x" * 10}
    assert taken(make(tmp_path / "empty.zip", {})) == {}
    assert (tmp_path / "empty.zip").read_bytes()[:4] == b"PK\x05\x06"


def test_too_many_entries(tmp_path: Path) -> None:
    path = make(tmp_path / "many.zip", {f"f{n}": b"x" for n in range(11)})
    with pytest.raises(ArchiveError, match="11 entries; at most 10"):
        open_archive(path, ArchiveLimits(max_entries=10))
    assert len(taken(path, ArchiveLimits(max_entries=11))) == 11


def test_a_huge_central_directory_is_refused_before_zipfile_parses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = make(tmp_path / "many.zip", {f"{n:040d}": b"" for n in range(2000)})

    def parse(*args: object) -> None:
        raise AssertionError("zipfile was asked to parse the directory")

    monkeypatch.setattr(zipfile, "ZipFile", parse)
    with pytest.raises(ArchiveError, match=r"central directory is \d+ bytes"):
        open_archive(path, ArchiveLimits(max_entries=10))


def test_too_many_bytes_in_all_or_in_one_entry(tmp_path: Path) -> None:
    path = make(tmp_path / "big.zip", {f"f{n}": bytes(100) for n in range(11)})
    with pytest.raises(ArchiveError, match="hold 1100 bytes uncompressed; at most 1000"):
        open_archive(path, ArchiveLimits(max_total_bytes=1000))
    with pytest.raises(ArchiveError, match="is 100 bytes; at most 99"):
        open_archive(path, ArchiveLimits(max_entry_bytes=99))


def test_a_bomb_is_refused_by_its_ratio_before_anything_is_inflated(tmp_path: Path) -> None:
    path = make(tmp_path / "bomb.zip", {"IM1": b"x", "zeros": bytes(50 << 20)})
    assert path.stat().st_size < 100_000
    started = time.perf_counter()
    with pytest.raises(ArchiveError, match=r"'zeros' expands \d+ times \(at most 200\)"):
        open_archive(path, LIMITS)
    assert time.perf_counter() - started < 0.5  # inflating 50 MiB takes longer


def test_small_entries_are_not_held_to_the_ratio(tmp_path: Path) -> None:
    path = make(tmp_path / "small.zip", {"zeros": bytes((1 << 20) - 1)})
    assert taken(path) == {"zeros": bytes((1 << 20) - 1)}


def test_a_size_smaller_than_the_data_lets_no_more_out(tmp_path: Path) -> None:
    path = make(tmp_path / "liar.zip", {"a": b"A" * 5000})
    raw = bytearray(path.read_bytes())
    at = central(raw)
    raw[at + 24 : at + 28] = (10).to_bytes(4, "little")  # uncompressed size
    path.write_bytes(bytes(raw))
    with open_archive(path, LIMITS) as archive:
        [entry] = archive.entries()
        assert entry.size == 10
        out = b""
        with pytest.raises(zipfile.BadZipFile, match="CRC"), entry.open() as f:
            while chunk := f.read(1):
                out += chunk
        assert len(out) <= 10  # none, in fact: the CRC is checked as the 10th is read


@pytest.mark.parametrize(
    "name",
    ["../evil", "a/../../evil", "/etc/passwd", "C:/x", "c:x", "a\\..\\b", "\\\\server\\share\\x"],
)
def test_a_path_out_of_the_archive_refuses_it_all(tmp_path: Path, name: str) -> None:
    path = make(tmp_path / "evil.zip", {"good": b"x", name: b"y"})
    with pytest.raises(ArchiveError, match="outside the archive"):
        open_archive(path, LIMITS)


def test_a_nul_in_a_name_refuses_it_all(tmp_path: Path) -> None:
    # zipfile would show this entry as "IM1.dcm".
    path = make(tmp_path / "nul.zip", {"IM1.dcmXtxt": b"x"})
    path.write_bytes(path.read_bytes().replace(b"IM1.dcmXtxt", b"IM1.dcm\x00txt"))
    with pytest.raises(ArchiveError, match="outside the archive"):
        open_archive(path, LIMITS)


@pytest.mark.parametrize(("bit", "words"), [(0x1, "encrypted"), (0x40, "encrypted")])
def test_an_encrypted_entry_refuses_it_all(tmp_path: Path, bit: int, words: str) -> None:
    path = make(tmp_path / "enc.zip", {"a": b"x", "b": b"y"})
    raw = bytearray(path.read_bytes())
    raw[central(raw, 1) + 8] |= bit  # general purpose flags of "b"
    path.write_bytes(bytes(raw))
    with pytest.raises(ArchiveError, match=f"'b' is {words}"):
        open_archive(path, LIMITS)


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_methods_other_than_stored_and_deflate_are_refused(tmp_path: Path, method: int) -> None:
    path = make(tmp_path / "m.zip", {"a": b"x" * 10}, method)
    with pytest.raises(ArchiveError, match=f"compression method {method}"):
        open_archive(path, LIMITS)


@pytest.mark.parametrize(
    "content",
    [b"", b"not a zip at all", b"PK\x03\x04 and nothing else", b"%PDF-1.4\n" + bytes(100)],
)
def test_not_a_zip(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.zip"
    path.write_bytes(content)
    with pytest.raises(ArchiveError, match="not a readable ZIP archive"):
        open_archive(path, LIMITS)


def test_a_truncated_zip(tmp_path: Path) -> None:
    path = make(tmp_path / "t.zip", {"a": b"x" * 1000, "b": b"y" * 1000})
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(ArchiveError, match="not a readable ZIP archive"):
        open_archive(path, LIMITS)


def test_damage_anywhere_raises_only_archive_or_read_errors(tmp_path: Path) -> None:
    """Random bytes changed in a small archive: refused whole (ArchiveError) or
    an entry fails to read (READ_ERRORS), never anything else."""
    good = make(tmp_path / "g.zip", {"d/IM1": b"one" * 300, "IM2": bytes(700)}).read_bytes()
    path = tmp_path / "f.zip"
    rng = random.Random(7)
    for _ in range(1500):
        raw = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        path.write_bytes(bytes(raw))
        try:
            archive = open_archive(path, LIMITS)
        except ArchiveError:
            continue
        with archive:
            for entry in archive.entries():
                try:
                    with entry.open() as f:
                        assert len(f.read()) <= entry.size
                except READ_ERRORS:
                    pass
