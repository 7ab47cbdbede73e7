"""argon2 runs off the event loop, at most HASHING_SLOTS at once per worker: a
burst of logins neither stalls the worker's other requests nor piles up 64 MiB
hashes."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import asyncpg
import falcon.testing
import pytest

from dicomgw.accounts import add_user
from dicomgw.api import auth
from dicomgw.api.app import create_app
from tests.api.inprocess import api_config, migrated


async def test_logins_hash_in_bounded_threads(
    empty_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await migrated(empty_db)
    conn = await asyncpg.connect(empty_db)
    try:
        await add_user(conn, "dora", "viewer", "dora's long password")
    finally:
        await conn.close()
    threads: set[str] = set()
    running = peak = 0
    lock = threading.Lock()
    real = auth.check_password

    def watched(password_hash: str | None, password: str) -> bool:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            threads.add(threading.current_thread().name)
        try:
            time.sleep(0.05)  # long enough for the logins to overlap
            return real(password_hash, password)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(auth, "check_password", watched)
    async with falcon.testing.ASGIConductor(create_app(api_config(empty_db, tmp_path))) as api:
        logins = [
            api.simulate_post(
                "/api/v1/auth/login",
                json={"username": "dora", "password": "dora's long password"},
            )
            for _ in range(6)
        ]
        results = await asyncio.gather(*logins)
    assert [r.status_code for r in results] == [200] * 6
    assert threading.main_thread().name not in threads
    assert peak == auth.HASHING_SLOTS
