"""The audit log: append-only, hash-chained, and `dicom-gw audit verify` finds tampering."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from dicomgw import audit
from dicomgw.config import DatabaseConfig
from dicomgw.db import migrate
from dicomgw.db.pool import APP_ROLE, create_pool
from tests.cli import cli_env, run_cli


@pytest.fixture
async def db(empty_db: str) -> str:
    await asyncio.to_thread(migrate.upgrade, empty_db)
    conn = await asyncpg.connect(empty_db)
    try:
        for n in range(5):
            await audit.record(
                conn,
                actor="alice",
                action="study.view",
                target=f"1.2.3.{n}",
                detail={"n": n},
                source_ip="10.0.0.7",
                request_id=f"r{n}",
                event_id=audit.INSTANCES_ACCESSED,
            )
    finally:
        await conn.close()
    return empty_db


def verify_cli(dsn: str, tmp_path: Path) -> tuple[int, str]:
    done = run_cli("audit", "verify", env=cli_env(tmp_path, DICOMGW_DATABASE__DSN=dsn))
    return done.returncode, done.stdout + done.stderr


async def test_intact_chain_verifies(db: str, tmp_path: Path) -> None:
    code, out = verify_cli(db, tmp_path)
    assert code == 0, out
    assert "5 rows, hash chain verified" in out


async def test_rows_written_before_the_chain_are_chained_by_the_migration(
    empty_db: str,
) -> None:
    await asyncio.to_thread(migrate.upgrade, empty_db, "0002")
    conn = await asyncpg.connect(empty_db)
    try:
        await conn.execute(
            "INSERT INTO audit_log (actor, action) VALUES ('cli', 'user.create'), ('cli', 'x')"
        )
        await asyncio.to_thread(migrate.upgrade, empty_db)
        await audit.record(conn, actor="bob", action="login")
        result = await audit.verify(conn)
    finally:
        await conn.close()
    assert result.ok and result.rows == 3


async def test_updates_and_deletes_are_refused(db: str) -> None:
    conn = await asyncpg.connect(db)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("UPDATE audit_log SET actor = 'mallory'")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM audit_log")
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("tamper", "bad_row", "problem"),
    [
        ("UPDATE audit_log SET actor = 'mallory' WHERE target = '1.2.3.2'", 3, "content"),
        ("DELETE FROM audit_log WHERE target = '1.2.3.1'", 3, "removed or inserted"),
        ("UPDATE audit_log SET detail = '{\"n\": 9}' WHERE target = '1.2.3.4'", 5, "content"),
    ],
)
async def test_tampering_is_detected(
    db: str, tmp_path: Path, tamper: str, bad_row: int, problem: str
) -> None:
    # Someone with the database superuser's power switches the guard off.
    conn = await asyncpg.connect(db)
    try:
        first = await conn.fetchval("SELECT min(id) FROM audit_log")
        await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
        await conn.execute(tamper)
        await conn.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only")
    finally:
        await conn.close()
    code, out = verify_cli(db, tmp_path)
    assert code == 1
    assert f"TAMPERED at row id {first + bad_row - 1}" in out
    assert problem in out


async def test_the_gateway_role_cannot_change_the_log(db: str) -> None:
    """Before the trigger: the pools' role holds no UPDATE, DELETE or TRUNCATE on it."""
    pool = await create_pool(db, DatabaseConfig())
    try:
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT current_user") == APP_ROLE
            await audit.record(conn, actor="bob", action="study.view")
            for statement in (
                "UPDATE audit_log SET actor = 'mallory'",
                "DELETE FROM audit_log",
                "TRUNCATE audit_log",
            ):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(statement)
            assert await conn.fetchval("SELECT count(*) FROM audit_log") == 6
    finally:
        await pool.close()
