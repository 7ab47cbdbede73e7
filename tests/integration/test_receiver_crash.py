"""kill -9 in the middle of ingest, and what start-up recovery makes of the state
directory: every acknowledged instance is indexed with the right checksum, no
partial file survives, and objects/ and the index agree one to one."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path

import asyncpg
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicomgw.storage import deletions
from tests.gateway import Gateway, running
from tests.integration.scu import (
    dataset_checksum,
    encode_dataset,
    events,
    instance_rows,
    make_dataset,
    object_files,
    parts,
    send,
    send_concurrently,
)
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow

SUCCESS = 0x0000
INSTANCES = 200
ASSOCIATIONS = 2
KILL_AFTER = 40


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (the API server that ``serve`` spawns)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def gone(pid: int) -> bool:
    """Exited (a zombie has exited and only waits to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def kill_9(gateway: Gateway) -> None:
    """SIGKILL ``serve``, as a crash would; then end, by pid, the API server it
    spawned: NOTE: serve does not take it down when killed, so the orphan would
    live on (and keep serving on the API port)."""
    assert gateway.proc is not None
    left = descendants(gateway.proc.pid)
    gateway.kill()
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in left:
        assert wait_until(partial(gone, pid), timeout=10), f"pid {pid} lives on"


async def index_by_path(dsn: str) -> dict[str, asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT sop_instance_uid, file_path, checksum FROM instances")
    finally:
        await conn.close()
    by_path = {r["file_path"]: r for r in rows}
    assert len(by_path) == len(rows)
    return by_path


async def test_kill_9_mid_ingest_then_restart(gateway_factory: Callable[..., Gateway]) -> None:
    with running(gateway_factory()) as gw:
        study = generate_uid()
        series = [generate_uid() for _ in range(ASSOCIATIONS)]
        datasets = [
            make_dataset(study_uid=study, series_uid=series[i % ASSOCIATIONS], instance_number=i)
            for i in range(INSTANCES)
        ]
        sent = {ds.SOPInstanceUID: encode_dataset(ds) for ds in datasets}
        acknowledged: set[str] = set()
        lock = threading.Lock()
        enough = threading.Event()

        def on_status(ds: Dataset, status: int | None) -> None:
            if status == SUCCESS:
                with lock:
                    acknowledged.add(ds.SOPInstanceUID)
                    if len(acknowledged) >= KILL_AFTER:
                        enough.set()

        batches = [datasets[i::ASSOCIATIONS] for i in range(ASSOCIATIONS)]
        sender = threading.Thread(
            target=send_concurrently,
            args=(gw.dimse_port, batches),
            # NOTE: pynetdicom sometimes misses the dropped connection and waits
            # out its DIMSE timeout; a short one keeps the test fast (a late
            # answer only means "not acknowledged", which the checks allow).
            kwargs={"on_status": on_status, "timeout": 2.0},
        )
        sender.start()
        assert enough.wait(30), gw.log()[-2000:]
        kill_9(gw)
        sender.join(60)
        assert not sender.is_alive()
        with lock:
            seen = set(acknowledged)
        assert KILL_AFTER <= len(seen) < INSTANCES, "the kill did not land mid-way"

        gw.start()
        by_path = await index_by_path(gw.dsn or "")
        on_disk = {str(p.relative_to(gw.storage)) for p in object_files(gw.storage)}
        assert not parts(gw.storage)
        assert set(by_path) == on_disk
        indexed_uids = [r["sop_instance_uid"] for r in by_path.values()]
        assert len(indexed_uids) == len(set(indexed_uids)), "an instance indexed twice"
        assert seen <= set(indexed_uids)
        for relative, row in by_path.items():
            data = sent[row["sop_instance_uid"]]
            stored = (gw.storage / relative).read_bytes()
            assert stored.endswith(data), f"{relative}: data set differs from what was sent"
            assert row["checksum"] == dataset_checksum(gw.storage / relative)

        # The restarted gateway takes the rest.
        rest = [ds for ds in datasets if ds.SOPInstanceUID not in seen]
        assert set(send(gw.dimse_port, rest)) == {SUCCESS}
        assert len(await index_by_path(gw.dsn or "")) == INSTANCES
        assert len(object_files(gw.storage)) == INSTANCES


async def test_start_up_recovery(gateway_factory: Callable[..., Gateway]) -> None:
    with running(gateway_factory()) as gw:
        assert send(gw.dimse_port, [make_dataset()]) == [SUCCESS]
        gw.stop()
        [stored] = object_files(gw.storage)

        part = gw.storage / "incoming" / f"{uuid.uuid4().hex}.part"
        part.write_bytes(stored.read_bytes()[:1000])

        copy = pydicom.dcmread(stored)
        new_uid = generate_uid()
        copy.SOPInstanceUID = new_uid
        copy.file_meta.MediaStorageSOPInstanceUID = new_uid
        key = "abcd" + uuid.uuid4().hex[4:]
        today = time.strftime("%Y/%m/%d", time.gmtime())
        planted = gw.storage / "objects" / today / "ab" / f"{key}.dcm"
        planted.parent.mkdir(parents=True, exist_ok=True)
        copy.save_as(planted, enforce_file_format=True)

        # The stored instance again: the same bytes (removed), and other bytes
        # under its UID, refused by duplicate_policy: reject (kept aside).
        twin = gw.storage / "objects" / today / "ab" / f"ab{uuid.uuid4().hex[2:]}.dcm"
        twin.write_bytes(stored.read_bytes())
        other = pydicom.dcmread(stored)
        other.PatientName = "OTHER^BYTES"
        conflict = gw.storage / "objects" / today / "ab" / f"ab{uuid.uuid4().hex[2:]}.dcm"
        other.save_as(conflict, enforce_file_format=True)
        conflict_bytes = conflict.read_bytes()

        garbage_key = "ef01" + uuid.uuid4().hex[4:]
        garbage = gw.storage / "objects" / today / "ef" / f"{garbage_key}.dcm"
        garbage.parent.mkdir(parents=True, exist_ok=True)
        garbage.write_bytes(b"\x00" * 128 + b"NOPE" + os.urandom(300))
        garbage_bytes = garbage.read_bytes()

        gw.start()

        assert not part.exists()
        assert not parts(gw.storage)
        [row] = await instance_rows(gw.dsn or "", new_uid)
        assert row["file_path"] == str(planted.relative_to(gw.storage))
        assert row["checksum"] == dataset_checksum(planted)
        assert [(e["event"], e["instance_id"]) for e in await events(gw.dsn or "", new_uid)] == [
            ("recovered", row["id"])
        ]
        assert not garbage.exists()
        quarantined = gw.storage / "quarantine" / garbage.name
        assert quarantined.read_bytes() == garbage_bytes
        assert not twin.exists()
        assert not conflict.exists()
        assert (gw.storage / "quarantine" / conflict.name).read_bytes() == conflict_bytes
        assert set(await index_by_path(gw.dsn or "")) == {
            str(p.relative_to(gw.storage)) for p in object_files(gw.storage)
        }
        # A second start finds nothing left to do.
        gw.stop()
        gw.start()
        assert [e["event"] for e in await events(gw.dsn or "", new_uid)] == ["recovered"]


async def test_deleted_study_is_not_recovered_after_a_crash(
    gateway_factory: Callable[..., Gateway],
) -> None:
    """A study deleted just before a crash (rows gone, files not yet removed) must
    not come back as orphans: start-up settles the deletion manifest first."""
    with running(gateway_factory()) as gw:
        kept, deleted = make_dataset(), make_dataset()
        assert send(gw.dimse_port, [kept, deleted]) == [SUCCESS, SUCCESS]
        gw.stop()
        [row] = await instance_rows(gw.dsn or "", deleted.SOPInstanceUID)
        # What DELETE /studies does up to its COMMIT, then the crash.
        manifest = await deletions.write(gw.storage, [row["file_path"]], fsync=True)
        conn = await asyncpg.connect(gw.dsn or "")
        try:
            await conn.execute("DELETE FROM instances WHERE id = $1", row["id"])
        finally:
            await conn.close()
        assert (gw.storage / row["file_path"]).exists()

        gw.start()

        assert not (gw.storage / row["file_path"]).exists()
        assert not manifest.path.exists()
        assert await instance_rows(gw.dsn or "", deleted.SOPInstanceUID) == []
        assert len(await instance_rows(gw.dsn or "", kept.SOPInstanceUID)) == 1
        assert set(await index_by_path(gw.dsn or "")) == {
            str(p.relative_to(gw.storage)) for p in object_files(gw.storage)
        }
