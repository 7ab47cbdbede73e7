"""DiskGuard: refuse above the high watermark, resume only below the low one
(hysteresis), and call statvfs at most once per CHECK_INTERVAL_S."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from dicomgw.storage import disk
from dicomgw.storage.disk import CHECK_INTERVAL_S, DiskGuard

BLOCKS = 100_000
FRSIZE = 4096
ROOT = Path("/srv/dicom-gw/storage")


class FakeDisk:
    """os.statvfs for ROOT with a settable use; counts the calls."""

    def __init__(self) -> None:
        self.used_percent = 0.0
        self.reserved_blocks = 0
        self.blocks = BLOCKS
        self.calls = 0

    def statvfs(self, path: os.PathLike[str] | str) -> os.statvfs_result:
        assert Path(path) == ROOT
        self.calls += 1
        used = round(self.blocks * self.used_percent / 100)
        free = self.blocks - used
        avail = max(0, free - self.reserved_blocks)
        # f_bsize, f_frsize, f_blocks, f_bfree, f_bavail, f_files, f_ffree, f_favail,
        # f_flag, f_namemax
        return os.statvfs_result((FRSIZE, FRSIZE, self.blocks, free, avail, 0, 0, 0, 0, 255))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def tick(self, seconds: float = CHECK_INTERVAL_S) -> None:
        self.now += seconds


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeDisk:
    fake = FakeDisk()
    monkeypatch.setattr(os, "statvfs", fake.statvfs)
    return fake


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    # NOTE: only disk.py's view of time; asyncio and pytest keep the real clock.
    monkeypatch.setattr(disk, "time", SimpleNamespace(monotonic=clock.monotonic))
    return clock


def guard() -> DiskGuard:
    return DiskGuard(ROOT, high_percent=90.0, low_percent=85.0)


def test_hysteresis_between_the_watermarks(fake: FakeDisk, clock: Clock) -> None:
    g = guard()
    expected = [
        (50.0, True),
        (89.9, True),  # below high
        (87.0, True),  # between, coming from below: still accepting
        (90.0, False),  # crossing high
        (95.0, False),
        (87.0, False),  # between, coming from above: still refusing
        (85.0, False),  # at low is not below it
        (84.9, True),  # below low: accepting again
        (89.0, True),
        (92.0, False),
    ]
    seen = []
    for used, _ in expected:
        fake.used_percent = used
        clock.tick()
        seen.append((used, g.accepting()))
        assert g.refusing is not seen[-1][1]
        assert g.used_percent == pytest.approx(used, abs=0.01)
    assert seen == expected
    assert fake.calls == len(expected)


def test_statvfs_at_most_once_per_interval(fake: FakeDisk, clock: Clock) -> None:
    g = guard()
    fake.used_percent = 50.0
    assert g.accepting()
    assert fake.calls == 1

    fake.used_percent = 99.0
    for _ in range(100):
        assert g.accepting()  # the last measurement holds
    clock.tick(CHECK_INTERVAL_S - 0.001)
    assert g.accepting()
    assert fake.calls == 1

    clock.tick(0.001)
    assert not g.accepting()
    assert fake.calls == 2

    fake.used_percent = 10.0
    clock.tick(CHECK_INTERVAL_S / 2)
    assert not g.accepting()
    assert fake.calls == 2
    clock.tick(CHECK_INTERVAL_S / 2)
    assert g.accepting()
    assert fake.calls == 3


def test_first_call_measures(fake: FakeDisk, clock: Clock) -> None:
    fake.used_percent = 95.0
    assert not guard().accepting()
    assert fake.calls == 1


def test_used_percent_counts_reserved_blocks_like_df(fake: FakeDisk, clock: Clock) -> None:
    # 900 of 1000 blocks used, 50 of the 100 free ones reserved for root:
    # df says 900 / (900 + 50) = 94.7 %, above the high watermark.
    fake.blocks = 1000
    fake.used_percent = 90.0
    fake.reserved_blocks = 50
    g = guard()
    assert not g.accepting()
    assert g.used_percent == pytest.approx(100 * 900 / 950)
    assert g.free_bytes == 50 * FRSIZE


def test_empty_filesystem_report_is_treated_as_full(fake: FakeDisk, clock: Clock) -> None:
    fake.blocks = 0
    g = guard()
    assert not g.accepting()
    assert g.used_percent == 100.0
