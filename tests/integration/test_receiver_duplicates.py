"""A SOP Instance UID received again: identical bytes are one stored copy and a
Success; other bytes are refused (0x0111) or kept as a new version, per
storage.duplicate_policy; concurrent identical sends still make one copy."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from tests.gateway import Gateway, running
from tests.integration.scu import (
    dataset_checksum,
    encode_dataset,
    events,
    files_with_uid,
    instance_rows,
    make_dataset,
    send,
    send_concurrently,
)

SUCCESS = 0x0000
DUPLICATE_SOP_INSTANCE = 0x0111


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_identical_resend_is_success_with_one_copy(session_gateway: Gateway) -> None:
    gw = session_gateway
    ds = make_dataset()
    uid = ds.SOPInstanceUID

    assert send(gw.dimse_port, [ds]) == [SUCCESS]
    assert send(gw.dimse_port, [ds]) == [SUCCESS]
    # ... and again on the same association.
    assert send(gw.dimse_port, [ds, ds]) == [SUCCESS, SUCCESS]

    files = files_with_uid(gw.storage, uid)
    assert len(files) == 1, files
    rows = await instance_rows(gw.dsn or "", uid)
    assert len(rows) == 1
    assert rows[0]["version"] == 1
    assert gw.storage / rows[0]["file_path"] == files[0]
    assert rows[0]["checksum"] == dataset_checksum(files[0])
    kinds = [e["event"] for e in await events(gw.dsn or "", uid)]
    assert kinds == ["stored", "duplicate", "duplicate", "duplicate"]


async def test_other_bytes_same_uid_are_rejected_and_original_kept(
    session_gateway: Gateway,
) -> None:
    gw = session_gateway
    original = make_dataset(patient_name="ORIGINAL^ONE")
    uid = original.SOPInstanceUID
    assert send(gw.dimse_port, [original]) == [SUCCESS]
    [stored] = files_with_uid(gw.storage, uid)
    before_digest = digest(stored)
    [before_row] = await instance_rows(gw.dsn or "", uid)

    changed = make_dataset(
        sop_instance_uid=uid,
        study_uid=original.StudyInstanceUID,
        series_uid=original.SeriesInstanceUID,
        patient_name="CHANGED^TWO",
    )
    assert encode_dataset(changed) != encode_dataset(original)
    assert send(gw.dimse_port, [changed]) == [DUPLICATE_SOP_INSTANCE]

    assert files_with_uid(gw.storage, uid) == [stored]
    assert digest(stored) == before_digest
    [after_row] = await instance_rows(gw.dsn or "", uid)
    assert dict(after_row) == dict(before_row)
    assert after_row["checksum"] == dataset_checksum(stored)
    recorded = [(e["event"], e["dimse_status"]) for e in await events(gw.dsn or "", uid)]
    assert recorded == [("stored", 0), ("rejected", DUPLICATE_SOP_INSTANCE)]


async def test_keep_both_stores_a_second_version(
    gateway_factory: Callable[..., Gateway],
) -> None:
    keep_both = gateway_factory(DICOMGW_STORAGE__DUPLICATE_POLICY="keep-both")
    with running(keep_both) as gw:
        original = make_dataset(patient_name="ORIGINAL^ONE")
        uid = original.SOPInstanceUID
        changed = make_dataset(
            sop_instance_uid=uid,
            study_uid=original.StudyInstanceUID,
            series_uid=original.SeriesInstanceUID,
            patient_name="CHANGED^TWO",
        )
        assert send(gw.dimse_port, [original]) == [SUCCESS]
        assert send(gw.dimse_port, [changed]) == [SUCCESS]
        # Identical bytes of either version are still one copy.
        assert send(gw.dimse_port, [original, changed]) == [SUCCESS, SUCCESS]

        rows = await instance_rows(gw.dsn or "", uid)
        assert [r["version"] for r in rows] == [1, 2]
        files = files_with_uid(gw.storage, uid)
        assert len(files) == 2
        assert sorted(gw.storage / r["file_path"] for r in rows) == files
        for row in rows:
            assert row["checksum"] == dataset_checksum(gw.storage / row["file_path"])
        assert rows[0]["checksum"] != rows[1]["checksum"]
        kinds = [e["event"] for e in await events(gw.dsn or "", uid)]
        assert kinds == ["stored", "stored", "duplicate", "duplicate"]


async def test_same_instance_on_four_associations_at_once(session_gateway: Gateway) -> None:
    gw = session_gateway
    ds = make_dataset()
    uid = ds.SOPInstanceUID

    results = send_concurrently(gw.dimse_port, [[ds]] * 4)

    assert results == [[SUCCESS]] * 4
    files = files_with_uid(gw.storage, uid)
    assert len(files) == 1, files
    rows = await instance_rows(gw.dsn or "", uid)
    assert len(rows) == 1
    assert gw.storage / rows[0]["file_path"] == files[0]
    assert rows[0]["checksum"] == dataset_checksum(files[0])
    kinds = sorted(e["event"] for e in await events(gw.dsn or "", uid))
    assert kinds == ["duplicate", "duplicate", "duplicate", "stored"]
