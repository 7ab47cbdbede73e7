"""DCMTK as the peer: echoscu and storescu against a running gateway."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from tests.gateway import Gateway
from tests.interop.conftest import DCMTK_MISSING, require_dcmtk
from tests.interop.corpus import (
    EXPLICIT_LE,
    Item,
    Received,
    dcmtk_env,
    index_rows,
    small_images,
    stored_files,
    storescu,
    verify_stored,
)


def as_sent(items: list[Item]) -> dict[str, tuple[Item, Received]]:
    """storescu sends these plain Explicit VR LE files as they are: the file is the oracle."""
    return {
        item.sop_instance_uid: (item, Received(item.dataset_bytes(), EXPLICIT_LE)) for item in items
    }


def stored(gateway: Gateway, items: list[Item]) -> list[str]:
    assert gateway.dsn is not None
    return verify_stored(gateway.storage, gateway.dsn, as_sent(items))


def test_without_dcmtk_ci_fails_and_elsewhere_skips(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A storescu that is not DCMTK's, like pynetdicom's console script in a virtualenv.
    impostor = tmp_path / "storescu"
    impostor.write_text("#!/bin/sh\necho 'usage: storescu [options] addr port path'\n")
    impostor.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="install the 'dcmtk' package"):
        require_dcmtk()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception) as skipped:
        require_dcmtk()
    assert str(skipped.value) == DCMTK_MISSING


def test_echoscu(session_gateway: Gateway, dcmtk: Path) -> None:
    done = subprocess.run(
        [
            dcmtk / "echoscu",
            "-aet",
            "IOPECHO",
            "-aec",
            "DICOMGW",
            "127.0.0.1",
            str(session_gateway.dimse_port),
        ],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_storescu_stores_and_indexes(session_gateway: Gateway, dcmtk: Path, tmp_path: Path) -> None:
    items = small_images(tmp_path, 3, "CT") + small_images(tmp_path / "mr", 2, "MR")
    done = storescu(dcmtk, [item.path for item in items], session_gateway.dimse_port)
    assert done.returncode == 0, done.stderr
    problems = stored(session_gateway, items)
    assert problems == [], "\n".join(problems)


def test_storescu_to_a_wrong_called_ae_title_stores_nothing(
    session_gateway: Gateway, dcmtk: Path, tmp_path: Path
) -> None:
    items = small_images(tmp_path, 2)
    done = storescu(
        dcmtk, [item.path for item in items], session_gateway.dimse_port, called="WRONG"
    )
    assert done.returncode != 0
    assert "Called AE Title Not Recognized" in done.stderr, done.stderr
    assert session_gateway.dsn is not None
    uids = [item.sop_instance_uid for item in items]
    assert index_rows(session_gateway.dsn, uids) == {uid: [] for uid in uids}
    files = stored_files(session_gateway.storage)
    assert [uid for uid in uids if uid in files] == []


def test_eight_storescu_in_parallel(session_gateway: Gateway, dcmtk: Path, tmp_path: Path) -> None:
    batches = [small_images(tmp_path / f"p{n}", 6, rows=128) for n in range(8)]
    procs = [
        subprocess.Popen(
            [
                dcmtk / "storescu",
                "-aet",
                f"IOPPAR{n}",
                "-aec",
                "DICOMGW",
                "127.0.0.1",
                str(session_gateway.dimse_port),
                *(str(i.path) for i in batch),
            ],
            env=dcmtk_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n, batch in enumerate(batches)
    ]
    results = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 8, [err for _, err in results]
    items = [item for batch in batches for item in batch]
    problems = stored(session_gateway, items)
    assert problems == [], "\n".join(problems)


def test_resend_after_restart_is_success_with_one_copy(
    gateway_factory: Callable[..., Gateway], dcmtk: Path, tmp_path: Path
) -> None:
    gateway = gateway_factory()
    items = small_images(tmp_path, 4)
    files = [item.path for item in items]
    gateway.start()
    first = storescu(dcmtk, files, gateway.dimse_port)
    assert first.returncode == 0, first.stderr
    assert stored(gateway, items) == []
    before = stored_files(gateway.storage)
    assert gateway.stop() == 0

    gateway.start()
    again = storescu(dcmtk, files, gateway.dimse_port)
    assert again.returncode == 0, again.stderr
    problems = stored(gateway, items)
    assert problems == [], "\n".join(problems)
    assert stored_files(gateway.storage) == before  # the first copies, untouched
    assert gateway.dsn is not None
    with psycopg.connect(gateway.dsn, autocommit=True) as conn:
        events = conn.execute(
            "SELECT event, count(*) FROM ingest_events WHERE sop_instance_uid = ANY(%s) "
            "GROUP BY event ORDER BY event",
            ([item.sop_instance_uid for item in items],),
        ).fetchall()
    assert events == [("duplicate", 4), ("stored", 4)]
