"""Start-up recovery lists only the objects that can be missing from the index."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from dicomgw.ingest.recovery import RECOVERY_MARGIN, candidates


def put(objects: Path, day: dt.date, name: str, mtime: dt.datetime) -> Path:
    path = objects / day.strftime("%Y/%m/%d") / "ab" / f"{name}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    os.utime(path, (mtime.timestamp(), mtime.timestamp()))
    return path


def test_only_recent_days_and_files(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    newest = now - dt.timedelta(minutes=5)
    old_day = put(tmp_path, (now - dt.timedelta(days=3)).date(), "old", now)
    stale = put(tmp_path, now.date(), "stale", newest - RECOVERY_MARGIN - dt.timedelta(minutes=1))
    fresh = put(tmp_path, now.date(), "fresh", newest - RECOVERY_MARGIN + dt.timedelta(minutes=1))
    latest = put(tmp_path, now.date(), "latest", now)
    found = set(candidates(tmp_path, newest))
    assert found == {fresh, latest}
    assert old_day not in found and stale not in found


def test_empty_index_lists_everything(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    files = {
        put(
            tmp_path, (now - dt.timedelta(days=400)).date(), "ancient", now - dt.timedelta(days=400)
        ),
        put(tmp_path, now.date(), "today", now),
    }
    assert set(candidates(tmp_path, None)) == files


def test_window_across_midnight(tmp_path: Path) -> None:
    midnight = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    newest = midnight + dt.timedelta(minutes=10)
    yesterday = put(
        tmp_path, (midnight - dt.timedelta(days=1)).date(), "y", midnight - dt.timedelta(minutes=20)
    )
    assert set(candidates(tmp_path, newest)) == {yesterday}
