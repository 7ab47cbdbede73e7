"""C-STOREs that must not become stored instances: an association ended inside a
data set, a data set that is not the one the command announced, a hostile SOP
Instance UID, a full disk, an index database that went away. Each leaves
nothing under objects/ and no partial file in incoming/."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import pytest

from dicomgw.db.embedded import EmbeddedPostgres, PostmasterInfo
from dicomgw.ul.pdu import A_ABORT
from tests.gateway import Gateway, running
from tests.integration.scu import (
    CT_IMAGE_STORAGE,
    encode_dataset,
    files_with_uid,
    instance_rows,
    make_dataset,
    object_files,
    parts,
    raw_association,
    raw_c_store_rq,
    send,
    send_concurrently,
    store_status,
)
from tests.support.pdus import (
    A_RELEASE_RQ,
    MCH_COMMAND_LAST,
    MCH_DATASET,
    MCH_DATASET_LAST,
    c_store_command,
    p_data,
    pdv,
)
from tests.support.wait import wait_until

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
INVALID_OBJECT_INSTANCE = 0x0117


def start_partial_store(gateway: Gateway, raw_send: Callable[[bytes], None]) -> tuple[str, Path]:
    """C-STORE-RQ and the first half of its data set; the .part file it opened."""
    before = parts(gateway.storage)
    ds = make_dataset()
    data = encode_dataset(ds)
    raw_send(c_store_command(ds.SOPInstanceUID))
    raw_send(p_data(pdv(1, MCH_DATASET, data[: len(data) // 2])))
    assert wait_until(lambda: len(parts(gateway.storage) - before) == 1), "no .part was opened"
    [part] = parts(gateway.storage) - before
    return ds.SOPInstanceUID, part


async def assert_not_stored(gateway: Gateway, uid: str) -> None:
    assert files_with_uid(gateway.storage, uid) == []
    assert await instance_rows(gateway.dsn or "", uid) == []


async def test_release_inside_a_data_set_is_aborted(session_gateway: Gateway) -> None:
    gw = session_gateway
    with raw_association(gw.dimse_port) as raw:
        uid, part = start_partial_store(gw, raw.send)
        raw.send(A_RELEASE_RQ)
        pdu = raw.read_pdu()
    assert pdu is not None and pdu[0] == A_ABORT, pdu
    assert wait_until(lambda: not part.exists()), f"{part.name} left in incoming/"
    await assert_not_stored(gw, uid)


async def test_connection_dropped_inside_a_data_set(session_gateway: Gateway) -> None:
    gw = session_gateway
    with raw_association(gw.dimse_port) as raw:
        uid, part = start_partial_store(gw, raw.send)
        # RST rather than FIN: the harshest way for a peer to vanish.
        raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    assert wait_until(lambda: not part.exists()), f"{part.name} left in incoming/"
    await assert_not_stored(gw, uid)
    assert send(gw.dimse_port, [make_dataset()]) == [SUCCESS]


async def test_data_set_uid_differs_from_the_command(session_gateway: Gateway) -> None:
    gw = session_gateway
    announced = make_dataset()
    ds = make_dataset()
    before = parts(gw.storage)
    with raw_association(gw.dimse_port) as raw:
        raw.send(c_store_command(announced.SOPInstanceUID))
        raw.send(p_data(pdv(1, MCH_DATASET_LAST, encode_dataset(ds))))
        status = store_status(raw.read_pdu())
    assert status == DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert wait_until(lambda: not parts(gw.storage) - before)
    await assert_not_stored(gw, announced.SOPInstanceUID)
    await assert_not_stored(gw, ds.SOPInstanceUID)


async def test_second_c_store_before_the_first_response(session_gateway: Gateway) -> None:
    """Without asynchronous operations negotiated a peer must wait for each response
    (PS3.7 D.3.3.3); one that does not is served in order or aborted, and leaves no
    partial file either way."""
    gw = session_gateway
    first, second = make_dataset(), make_dataset()
    data = encode_dataset(second)
    before = parts(gw.storage)
    with raw_association(gw.dimse_port) as raw:
        raw.send(
            c_store_command(first.SOPInstanceUID, 1)
            + p_data(pdv(1, MCH_DATASET_LAST, encode_dataset(first)))
            + c_store_command(second.SOPInstanceUID, 2)
            + p_data(pdv(1, MCH_DATASET, data[:4000]))
        )
        assert store_status(raw.read_pdu()) == SUCCESS
        with contextlib.suppress(OSError):
            raw.send(p_data(pdv(1, MCH_DATASET_LAST, data[4000:])))
        reply = raw.read_pdu()
    assert reply is not None, "connection dropped without A-ABORT"
    if reply[0] != A_ABORT:
        assert store_status(reply) == SUCCESS
    assert wait_until(lambda: not parts(gw.storage) - before), "a .part left in incoming/"


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
@pytest.mark.parametrize(
    "hostile",
    [
        "../../../../../../../../tmp/dicomgw-evil-{marker}",
        "1.2.3/../../../dicomgw-evil-{marker}",
        "1.2.840..{marker}",
        "..",
    ],
)
async def test_hostile_affected_sop_instance_uid(session_gateway: Gateway, hostile: str) -> None:
    gw = session_gateway
    marker = str(uuid.uuid4().int)[:12]
    uid = hostile.format(marker=marker)
    ds = make_dataset()
    ds.SOPInstanceUID = uid
    before = set(gw.storage.rglob("*"))
    with raw_association(gw.dimse_port) as raw:
        raw.send(p_data(pdv(1, MCH_COMMAND_LAST, raw_c_store_rq(1, CT_IMAGE_STORAGE, uid))))
        # The data set may already be refused (or the association gone).
        with contextlib.suppress(OSError):
            raw.send(p_data(pdv(1, MCH_DATASET_LAST, encode_dataset(ds))))
        pdu = raw.read_pdu()
    assert pdu is not None, "the connection was dropped without A-ABORT or a response"
    # PS3.7 C.4.9: 0117 invalid object instance; the association stays usable.
    assert store_status(pdu) == INVALID_OBJECT_INSTANCE
    assert wait_until(lambda: not parts(gw.storage) - before)
    assert files_with_uid(gw.storage, uid) == []
    elsewhere = {
        p
        for p in set(gw.storage.rglob("*")) - before
        if p.relative_to(gw.storage).parts[0] not in ("objects", "incoming")
    }
    assert not elsewhere
    assert not list(gw.state_dir.parent.rglob(f"*evil-{marker}*"))
    assert not list(Path("/tmp").glob(f"dicomgw-evil-{marker}*"))
    assert await instance_rows(gw.dsn or "", uid) == []


async def test_above_high_watermark_is_out_of_resources(
    gateway_factory: Callable[..., Gateway],
) -> None:
    refusing = gateway_factory(
        DICOMGW_STORAGE__HIGH_WATERMARK_PERCENT="0.001",
        DICOMGW_STORAGE__LOW_WATERMARK_PERCENT="0.0005",
    )
    with running(refusing) as gw:
        ds = make_dataset()
        assert send(gw.dimse_port, [ds, make_dataset()]) == [OUT_OF_RESOURCES] * 2
        assert not object_files(gw.storage)
        assert wait_until(lambda: not parts(gw.storage))
        conn = await asyncpg.connect(gw.dsn or "")
        try:
            assert await conn.fetchval("SELECT count(*) FROM instances") == 0
        finally:
            await conn.close()


async def test_one_unindexable_instance_does_not_fail_its_batch(
    gateway_factory: Callable[..., Gateway],
) -> None:
    # A long batch window so that both instances surely share one index transaction.
    batching = gateway_factory(DICOMGW_INDEX__MAX_DELAY_MS="300")
    with running(batching) as gw:
        bad, good = make_dataset(), make_dataset()
        bad.PatientID = "AB\x00CD"
        [[bad_status], [good_status]] = send_concurrently(gw.dimse_port, [[bad], [good]])
        assert bad_status is not None
        assert good_status == SUCCESS
        assert len(await instance_rows(gw.dsn or "", good.SOPInstanceUID)) == 1


async def test_embedded_database_killed_is_started_again(state_dir: Path) -> None:
    """The default install: serve started PostgreSQL itself. When the server is
    killed (the OOM killer), serve starts it again; until then C-STOREs fail
    with nothing stored, and nothing acknowledged before is lost."""
    with running(Gateway(state_dir, None)) as gw:
        first = make_dataset()
        assert send(gw.dimse_port, [first]) == [SUCCESS]
        killed = PostmasterInfo.read(state_dir / "pg")
        assert killed is not None
        os.kill(killed.pid, signal.SIGKILL)
        assert killed.wait_exit(10)

        stored = []

        def store_one() -> bool:
            ds = make_dataset()
            [status] = send(gw.dimse_port, [ds])
            if status == SUCCESS:
                stored.append(ds)
                return True
            assert status == OUT_OF_RESOURCES
            assert files_with_uid(gw.storage, ds.SOPInstanceUID) == []
            return False

        assert wait_until(store_one, timeout=60), gw.log()[-3000:]
        again = PostmasterInfo.read(state_dir / "pg")
        assert again is not None and again.pid != killed.pid and again.is_alive()
        # NOTE: logged once pg_ctl returns, which can be after the server serves.
        assert wait_until(lambda: "embedded PostgreSQL restarted" in gw.log(), timeout=30)
        # Attached, not owned: this does not stop the gateway's server.
        dsn = EmbeddedPostgres(state_dir / "pg", run_as="dicomgw").start(adopt=False)
        for ds in (first, *stored):
            assert len(await instance_rows(dsn, ds.SOPInstanceUID)) == 1


async def test_database_restarted_between_stores(workdir: Path, state_dir: Path) -> None:
    """The index writer's connection died while idle; the next C-STORE gets a new one."""
    server = EmbeddedPostgres(workdir / f"pg-{uuid.uuid4().hex[:8]}", run_as="dicomgw")
    dsn = server.start(adopt=True)
    try:
        with running(Gateway(state_dir, dsn)) as gw:
            assert send(gw.dimse_port, [make_dataset()]) == [SUCCESS]
            server.stop()
            assert server.start(adopt=True) == dsn
            after = make_dataset()
            assert send(gw.dimse_port, [after]) == [SUCCESS]
            assert len(await instance_rows(dsn, after.SOPInstanceUID)) == 1
    finally:
        server.stop()


async def test_file_kept_after_an_unconfirmed_commit_is_indexed_without_a_restart(
    gateway_factory: Callable[..., Gateway], empty_db: str
) -> None:
    """The connection to the database breaks during the index COMMIT: the
    sender gets 0xA700, the file is kept, and once the database answers the
    receiver settles it: indexed (event 'recovered'), not left for a restart."""
    with running(gateway_factory()) as gw:
        conn = await asyncpg.connect(empty_db)
        try:
            # A deferred trigger makes the writer's COMMIT wait for a lock held here.
            await conn.execute(
                """CREATE FUNCTION wait_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
                   BEGIN PERFORM pg_advisory_xact_lock(4243); RETURN NULL; END $$;
                   CREATE CONSTRAINT TRIGGER wait_at_commit AFTER INSERT ON instances
                   DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION wait_at_commit()"""
            )
            await conn.execute("SELECT pg_advisory_lock(4243)")
            ds = make_dataset()
            with ThreadPoolExecutor(1) as pool:
                sent = pool.submit(send, gw.dimse_port, [ds])
                pid = None
                for _ in range(200):
                    pid = await conn.fetchval(
                        "SELECT pid FROM pg_stat_activity "
                        "WHERE wait_event_type = 'Lock' AND query LIKE '%dicomgw_%'"
                    )
                    if pid is not None:
                        break
                    await asyncio.sleep(0.05)
                # NOTE: the fast path's statement is its own COMMIT (autocommit).
                assert pid is not None, "the writer never waited in its COMMIT"
                assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
                assert sent.result(30) == [OUT_OF_RESOURCES]
            assert len(files_with_uid(gw.storage, ds.SOPInstanceUID)) == 1
            assert "index commit unconfirmed: file kept" in gw.log()
            await conn.execute("SELECT pg_advisory_unlock(4243)")
            for _ in range(200):
                if await instance_rows(empty_db, ds.SOPInstanceUID):
                    break
                await asyncio.sleep(0.1)
            [row] = await instance_rows(empty_db, ds.SOPInstanceUID)
            event = await conn.fetchval(
                "SELECT event FROM ingest_events WHERE instance_id = $1", row["id"]
            )
            assert event == "recovered"
            [kept] = files_with_uid(gw.storage, ds.SOPInstanceUID)
            assert str(kept.relative_to(gw.storage)) == row["file_path"]
            assert wait_until(lambda: "unconfirmed index commit settled" in gw.log())
            assert gw.proc is not None and gw.proc.poll() is None
        finally:
            await conn.close()


async def test_index_database_goes_away_and_comes_back(workdir: Path, state_dir: Path) -> None:
    server = EmbeddedPostgres(workdir / f"pg-{uuid.uuid4().hex[:8]}", run_as="dicomgw")
    dsn = server.start(adopt=True)
    try:
        with running(Gateway(state_dir, dsn)) as gw:
            first = make_dataset()
            assert send(gw.dimse_port, [first]) == [SUCCESS]

            server.stop()
            lost = make_dataset()
            assert send(gw.dimse_port, [lost]) == [OUT_OF_RESOURCES]
            assert gw.proc is not None and gw.proc.poll() is None, "serve died with its database"
            assert files_with_uid(gw.storage, lost.SOPInstanceUID) == []
            assert wait_until(lambda: not parts(gw.storage))

            assert server.start(adopt=True) == dsn
            back = make_dataset()
            assert send(gw.dimse_port, [back]) == [SUCCESS]
            assert len(files_with_uid(gw.storage, back.SOPInstanceUID)) == 1
            assert len(await instance_rows(dsn, back.SOPInstanceUID)) == 1
            assert len(await instance_rows(dsn, first.SOPInstanceUID)) == 1
            assert await instance_rows(dsn, lost.SOPInstanceUID) == []
            assert len(object_files(gw.storage)) == 2
    finally:
        server.stop()
