"""The embedded PostgreSQL: start, migrate, stop, restart keeps data, attach, adopt."""

from __future__ import annotations

import asyncio
import os
import pwd
import signal
from pathlib import Path

import asyncpg
import pytest

from dicomgw.db import migrate
from dicomgw.db.embedded import EmbeddedPostgres, PostmasterInfo, find_bindir
from dicomgw.errors import DatabaseError


async def scalar(dsn: str, sql: str) -> object:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def test_binaries_are_found() -> None:
    bindir = find_bindir()
    assert (bindir / "pg_ctl").exists()
    assert (bindir / "postgres").exists()


async def test_start_migrate_stop_restart_keeps_data(state_dir: Path) -> None:
    server = EmbeddedPostgres(state_dir / "pg", run_as="dicomgw")
    dsn = server.start(adopt=True)
    assert server.owned
    await asyncio.to_thread(migrate.upgrade, dsn)
    conn = await asyncpg.connect(dsn)
    await conn.execute("INSERT INTO audit_log (actor, action) VALUES ('test', 'kept')")
    await conn.close()
    pid = PostmasterInfo.read(state_dir / "pg")
    assert pid is not None and pid.is_alive()
    server.stop()
    assert PostmasterInfo.read(state_dir / "pg") is None
    assert not pid.is_alive()

    again = EmbeddedPostgres(state_dir / "pg", run_as="dicomgw")
    dsn = again.start(adopt=True)
    try:
        assert await scalar(dsn, "SELECT action FROM audit_log") == "kept"
        assert migrate.current(dsn) == migrate.head()
    finally:
        again.stop()


async def test_no_tcp_listener_and_private_socket(state_dir: Path) -> None:
    server = EmbeddedPostgres(state_dir / "pg", run_as="dicomgw")
    dsn = server.start(adopt=True)
    try:
        assert await scalar(dsn, "SHOW listen_addresses") == ""
        info = PostmasterInfo.read(state_dir / "pg")
        assert info is not None
        assert oct(info.socket_dir.stat().st_mode & 0o777) == "0o700"
    finally:
        server.stop()


async def test_attach_does_not_stop_a_server_it_did_not_start(state_dir: Path) -> None:
    owner = EmbeddedPostgres(state_dir / "pg", run_as="dicomgw")
    dsn = owner.start(adopt=True)
    try:
        guest = EmbeddedPostgres(state_dir / "pg", run_as="dicomgw")
        assert guest.start(adopt=False) == dsn
        assert not guest.owned
        guest.stop()
        assert await scalar(dsn, "SELECT 1") == 1
    finally:
        owner.stop()


async def test_adopt_takes_over_an_orphaned_server(state_dir: Path) -> None:
    """A serve that crashed left its server running: the next owner stops it at exit."""
    first = EmbeddedPostgres(state_dir / "pg", run_as="dicomgw")
    first.start(adopt=True)
    info = PostmasterInfo.read(state_dir / "pg")
    assert info is not None
    second = EmbeddedPostgres(state_dir / "pg", run_as="dicomgw")
    second.start(adopt=True)
    assert second.owned
    second.stop()
    assert not info.is_alive()


@pytest.mark.skipif(os.geteuid() != 0, reason="checks the root-only privilege drop")
def test_untraversable_parent_is_a_clear_error(state_dir: Path) -> None:
    locked = state_dir / "locked"
    locked.mkdir(mode=0o700)
    with pytest.raises(DatabaseError, match=r"cannot enter .*locked.*chmod o\+x"):
        EmbeddedPostgres(locked / "state" / "pg", run_as="dicomgw").start(adopt=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="checks the root-only privilege drop")
async def test_root_created_state_dir_is_shared_with_the_server_user(state_dir: Path) -> None:
    """`dicom-gw serve` as root creates state_dir 0750 root:root; the server must still start."""
    private = state_dir / "private"
    private.mkdir(mode=0o750)
    server = EmbeddedPostgres(private / "pg", run_as="dicomgw")
    dsn = server.start(adopt=True)
    try:
        assert await scalar(dsn, "SELECT 1") == 1
        assert private.stat().st_gid == pwd.getpwnam("dicomgw").pw_gid
        assert private.stat().st_mode & 0o007 == 0  # nothing opened to others
    finally:
        server.stop()


async def test_keep_running_restarts_a_killed_server_and_retries_a_failed_start(
    state_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = EmbeddedPostgres(state_dir / "pg", run_as="dicomgw")
    dsn = server.start(adopt=True)
    conf = state_dir / "pg" / "postgresql.conf"
    good_conf = conf.read_text()
    restarted: list[int] = []
    keeper = asyncio.create_task(server.keep_running(lambda: restarted.append(1), check_s=0.05))
    try:
        await scalar(dsn, "CREATE TABLE kept AS SELECT 7 AS x")
        killed = PostmasterInfo.read(state_dir / "pg")
        assert killed is not None
        # The next start fails (a bad setting) until the setting is fixed.
        conf.write_text(good_conf + "\nshared_buffers = 'plenty'\n")
        os.kill(killed.pid, signal.SIGKILL)
        async with asyncio.timeout(60):
            while "embedded PostgreSQL did not start again" not in caplog.text:
                await asyncio.sleep(0.05)
        assert not restarted
        conf.write_text(good_conf)
        async with asyncio.timeout(60):
            while not restarted:
                await asyncio.sleep(0.05)
        assert await scalar(dsn, "SELECT x FROM kept") == 7
        assert server.restarts == 1
    finally:
        keeper.cancel()
        server.stop()
