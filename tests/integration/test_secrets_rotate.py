"""``dicom-gw secrets rotate``: every sealed value re-encrypted under a new key,
the old key gone from the file, running processes' boxes still opening them;
a value the current key cannot open stops it before anything changes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest
from cryptography.fernet import Fernet, InvalidToken

from dicomgw.accounts import add_user
from dicomgw.db import migrate
from dicomgw.send.secrets import KEY_FILE, SecretBox, SecretsError
from tests.cli import cli_env, run_cli


async def sealed(dsn: str) -> tuple[bytes, bytes]:
    conn = await asyncpg.connect(dsn)
    try:
        secret = await conn.fetchval("SELECT secret FROM destinations WHERE name = 'cloud'")
        totp = await conn.fetchval("SELECT totp_secret FROM users WHERE username = 'ann'")
        return secret, totp
    finally:
        await conn.close()


@pytest.fixture
async def db(empty_db: str, state_dir: Path) -> str:
    await asyncio.to_thread(migrate.upgrade, empty_db)
    state_dir.mkdir(parents=True, exist_ok=True)
    box = SecretBox.open(state_dir)
    conn = await asyncpg.connect(empty_db)
    try:
        await conn.execute(
            "INSERT INTO destinations (name, kind, secret) VALUES ('cloud', 'stowrs', $1)",
            box.seal({"token": "s3cret-token"}),
        )
        user = await add_user(conn, "ann", "viewer", "a long enough password")
        await conn.execute(
            "UPDATE users SET totp_secret = $1 WHERE id = $2", box.seal({"totp": "JBSWY3DP"}), user
        )
    finally:
        await conn.close()
    return empty_db


async def test_rotate(db: str, state_dir: Path) -> None:
    running = SecretBox.open(state_dir)  # a process started before the rotation
    old_key = (state_dir / KEY_FILE).read_bytes().strip()
    before = await sealed(db)
    done = await asyncio.to_thread(
        run_cli, "secrets", "rotate", env=cli_env(state_dir, DICOMGW_DATABASE__DSN=db)
    )
    assert done.returncode == 0, done.stderr
    assert "2 stored secrets re-encrypted" in done.stdout
    after = await sealed(db)
    assert all(a != b for a, b in zip(after, before, strict=True))
    keys = (state_dir / KEY_FILE).read_bytes().split()
    assert len(keys) == 1 and keys[0] != old_key
    assert oct((state_dir / KEY_FILE).stat().st_mode & 0o777) == "0o600"
    with pytest.raises(InvalidToken):
        Fernet(old_key).decrypt(after[0])
    assert running.unseal(after[0]) == {"token": "s3cret-token"}
    assert SecretBox.open(state_dir).unseal(after[1]) == {"totp": "JBSWY3DP"}
    conn = await asyncpg.connect(db)
    try:
        assert await conn.fetchval("SELECT count(*) FROM audit_log WHERE action = 'secrets.rotate'")
    finally:
        await conn.close()


async def test_a_foreign_secret_stops_it(db: str, state_dir: Path) -> None:
    conn = await asyncpg.connect(db)
    try:
        await conn.execute(
            "UPDATE destinations SET secret = $1",
            Fernet(Fernet.generate_key()).encrypt(b'{"token": "x"}'),
        )
    finally:
        await conn.close()
    before = await sealed(db)
    done = await asyncio.to_thread(
        run_cli, "secrets", "rotate", env=cli_env(state_dir, DICOMGW_DATABASE__DSN=db)
    )
    assert done.returncode == 1
    assert "destinations.secret of id 1 cannot be decrypted with the current key" in done.stderr
    assert await sealed(db) == before
    box = SecretBox.open(state_dir)
    assert box.unseal(before[1]) == {"totp": "JBSWY3DP"}
    with pytest.raises(SecretsError, match="is not the one it was encrypted with"):
        box.unseal(before[0])


async def test_the_forwarder_skips_a_destination_it_cannot_decrypt(
    db: str, state_dir: Path
) -> None:
    from dicomgw.send.destinations import load_destinations

    conn = await asyncpg.connect(db)
    try:
        await conn.execute(
            "INSERT INTO destinations (name, kind, settings) VALUES ('pacs', 'dimse', $1)",
            '{"ae_title": "PACS", "host": "127.0.0.1", "port": 104}',
        )
        await conn.execute(
            "UPDATE destinations SET settings = $1 WHERE name = 'cloud'",
            '{"url": "http://127.0.0.1:8042/dicom-web", "auth": "bearer"}',
        )
        box = SecretBox.open(state_dir)
        assert [r.destination.name for r in await load_destinations(conn, box)] == [
            "cloud",
            "pacs",
        ]
        await conn.execute(
            "UPDATE destinations SET secret = $1 WHERE name = 'cloud'",
            Fernet(Fernet.generate_key()).encrypt(b'{"token": "x"}'),
        )
        rows = await load_destinations(conn, box)
    finally:
        await conn.close()
    assert [r.destination.name for r in rows] == ["pacs"]
