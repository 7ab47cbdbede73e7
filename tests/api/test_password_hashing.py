"""Passwords: argon2 runs off the event loop, at most HASHING_SLOTS at once per
worker (a burst of logins neither stalls the worker's other requests nor piles
up 64 MiB hashes); new ones are checked (length, common passwords); a hash made
with weaker parameters is replaced at login."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import asyncpg
import falcon.testing
import pytest
from argon2 import PasswordHasher

from dicomgw.api import auth
from dicomgw.api.app import create_app
from tests.api.inprocess import api_config, logged_in, migrated, new_user


async def test_logins_hash_in_bounded_threads(
    empty_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await migrated(empty_db)
    await new_user(empty_db, "dora", "viewer", "dora's long password")
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
        # NOTE: from six addresses: attempts of one account from one address are
        # counted when they start, and only three at once go unthrottled.
        logins = [
            api.simulate_post(
                "/api/v1/auth/login",
                json={"username": "dora", "password": "dora's long password"},
                headers={"X-Forwarded-For": f"192.0.2.{n}"},
                remote_addr="127.0.0.1",
            )
            for n in range(6)
        ]
        results = await asyncio.gather(*logins)
    assert [r.status_code for r in results] == [200] * 6
    assert threading.main_thread().name not in threads
    assert peak == auth.HASHING_SLOTS


@pytest.mark.parametrize(
    ("password", "problem"),
    [
        ("short one", "password too short: at least 12 characters"),
        ("x" * 1025, "password too long: at most 1024 characters"),
        ("Qwerty123456", "one of the most common passwords"),
    ],
)
async def test_weak_new_passwords_are_refused(
    empty_db: str, tmp_path: Path, password: str, problem: str
) -> None:
    await migrated(empty_db)
    config = api_config(empty_db, tmp_path)
    async with logged_in(config, "admin") as admin:
        created = await admin.call(
            "POST", "/users", json={"username": "erin", "role": "viewer", "password": password}
        )
        assert created.status_code == 422
        assert problem in created.json["detail"]
        changed = await admin.call(
            "POST",
            "/me/password",
            json={"current_password": "in-process-password", "new_password": password},
        )
        assert changed.status_code == 422
        assert problem in changed.json["detail"]


async def test_minimum_length_is_configurable(empty_db: str, tmp_path: Path) -> None:
    await migrated(empty_db)
    config = api_config(empty_db, tmp_path, DICOMGW_API__PASSWORD_MIN_LENGTH="20")
    async with logged_in(config, "admin") as admin:
        created = await admin.call(
            "POST",
            "/users",
            json={"username": "finn", "role": "viewer", "password": "fifteen chars!!"},
        )
        assert created.status_code == 422
        assert "at least 20 characters" in created.json["detail"]


async def test_login_rehashes_a_hash_made_with_weaker_parameters(
    empty_db: str, tmp_path: Path
) -> None:
    await migrated(empty_db)
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
    await new_user(empty_db, "gina", "viewer", "gina's long password")
    conn = await asyncpg.connect(empty_db)
    try:
        await conn.execute(
            "UPDATE users SET password_hash = $1 WHERE username = 'gina'",
            weak.hash("gina's long password"),
        )
    finally:
        await conn.close()
    async with falcon.testing.ASGIConductor(create_app(api_config(empty_db, tmp_path))) as api:
        login = await api.simulate_post(
            "/api/v1/auth/login", json={"username": "gina", "password": "gina's long password"}
        )
        assert login.status_code == 200
    conn = await asyncpg.connect(empty_db)
    try:
        stored = await conn.fetchval("SELECT password_hash FROM users WHERE username = 'gina'")
    finally:
        await conn.close()
    assert not PasswordHasher().check_needs_rehash(stored)
    assert PasswordHasher().verify(stored, "gina's long password")
