"""Migrations up to head and back down on a real PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from dicomgw.db import migrate
from tests.cli import cli_env, run_cli

TABLES = {
    "studies",
    "series",
    "instances",
    "ingest_events",
    "destinations",
    "routing_rules",
    "routing_rule_destinations",
    "forward_jobs",
    "forward_attempts",
    "sessions",
    "api_tokens",
    "recovery_codes",
    "login_addresses",
    "throttle_events",
    "upload_batches",
    "uploads",
    "upload_instances",
    "users",
    "audit_log",
    "metrics_rollup",
}


async def tables(dsn: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT tablename FROM pg_tables "
            "WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
        )
    finally:
        await conn.close()
    return {r["tablename"] for r in rows}


async def test_upgrade_to_head_then_down_to_base_and_up_again(empty_db: str) -> None:
    assert migrate.current(empty_db) is None
    await asyncio.to_thread(migrate.upgrade, empty_db)
    assert migrate.current(empty_db) == migrate.head()
    assert await tables(empty_db) == TABLES

    await asyncio.to_thread(migrate.downgrade, empty_db, "base")
    assert migrate.current(empty_db) is None
    assert await tables(empty_db) == set()

    await asyncio.to_thread(migrate.upgrade, empty_db)
    assert await tables(empty_db) == TABLES


async def test_upgrade_is_idempotent(empty_db: str) -> None:
    await asyncio.to_thread(migrate.upgrade, empty_db)
    await asyncio.to_thread(migrate.upgrade, empty_db)
    assert migrate.current(empty_db) == migrate.head()


async def test_audit_log_is_append_only(empty_db: str) -> None:
    await asyncio.to_thread(migrate.upgrade, empty_db)
    conn = await asyncpg.connect(empty_db)
    try:
        await conn.execute("INSERT INTO audit_log (actor, action) VALUES ('t', 'test.write')")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await conn.execute("UPDATE audit_log SET actor = 'x'")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await conn.execute("DELETE FROM audit_log")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await conn.execute("TRUNCATE audit_log")
        assert await conn.fetchval("SELECT count(*) FROM audit_log") == 1
    finally:
        await conn.close()


async def test_job_claim_query_uses_the_partial_index(empty_db: str) -> None:
    """The forwarder's claim (state + due time) must not scan the whole queue."""
    await asyncio.to_thread(migrate.upgrade, empty_db)
    conn = await asyncpg.connect(empty_db)
    try:
        await conn.execute("SET enable_seqscan = off")
        rows = await conn.fetch(
            "EXPLAIN SELECT id FROM forward_jobs WHERE state = 'pending' AND destination_id = 1 "
            "AND due_at <= now() ORDER BY due_at LIMIT 50 FOR UPDATE SKIP LOCKED"
        )
        plan = "\n".join(r[0] for r in rows)
        assert "forward_jobs_claim" in plan
    finally:
        await conn.close()


def test_bad_dsn_scheme_is_a_clear_error() -> None:
    with pytest.raises(Exception, match=r"must start with postgresql://"):
        migrate.upgrade("mysql://x/y")


async def test_a_schema_from_a_newer_version_is_refused_by_name(
    empty_db: str, tmp_path: Path
) -> None:
    await asyncio.to_thread(migrate.upgrade, empty_db)
    conn = await asyncpg.connect(empty_db)
    try:
        await conn.execute("UPDATE alembic_version SET version_num = '9999'")
    finally:
        await conn.close()
    expected = "database schema is at revision 9999, which this version of dicom-gw does not know"
    env = cli_env(tmp_path, DICOMGW_DATABASE__DSN=empty_db)
    for command in (["db", "status"], ["db", "upgrade"], ["serve"]):
        done = await asyncio.to_thread(run_cli, *command, env=env)
        assert done.returncode == 1, command
        assert expected in done.stderr, (command, done.stderr)
