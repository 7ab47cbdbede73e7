"""The client's address behind a reverse proxy (api.trusted_proxies): what login
throttling and the audit log see."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import falcon.testing
import pytest

from dicomgw.api.app import create_app
from dicomgw.api.clients import client_address, networks
from tests.api.inprocess import api_config, migrated, new_user

NGINX = networks(["127.0.0.1", "10.9.0.0/16"])


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("192.0.2.7", None, "192.0.2.7"),  # no proxy
        ("192.0.2.7", "203.0.113.5", "192.0.2.7"),  # not a trusted proxy: header ignored
        ("127.0.0.1", None, "127.0.0.1"),
        ("127.0.0.1", "203.0.113.5", "203.0.113.5"),
        ("127.0.0.1", "1.1.1.1, 203.0.113.5", "203.0.113.5"),  # the client wrote 1.1.1.1
        ("127.0.0.1", "203.0.113.5, 10.9.1.1", "203.0.113.5"),  # two trusted hops
        ("127.0.0.1", "10.9.1.2, 10.9.1.1", "10.9.1.2"),  # only proxies: the first
        ("127.0.0.1", "not-an-ip", "127.0.0.1"),
        ("127.0.0.1", "2001:db8::1", "2001:db8::1"),
    ],
)
def test_client_address(peer: str, forwarded: str | None, expected: str) -> None:
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    req = falcon.testing.create_asgi_req(remote_addr=peer, headers=headers)
    assert client_address(req, NGINX) == expected


async def test_login_audit_and_throttle_see_the_forwarded_client(
    empty_db: str, tmp_path: Path
) -> None:
    await migrated(empty_db)
    config = api_config(empty_db, tmp_path, DICOMGW_API__TRUSTED_PROXIES="[127.0.0.1]")
    await new_user(empty_db, "bob", "viewer", "bob's long password")
    async with falcon.testing.ASGIConductor(create_app(config)) as api:
        for password in ("wrong password", "bob's long password"):
            await api.simulate_post(
                "/api/v1/auth/login",
                json={"username": "bob", "password": password},
                headers={"X-Forwarded-For": "198.51.100.23"},
                remote_addr="127.0.0.1",
            )
    conn = await asyncpg.connect(empty_db)
    try:
        rows = await conn.fetch(
            "SELECT outcome, host(source_ip) AS ip FROM audit_log "
            "WHERE action = 'auth.login' ORDER BY id"
        )
        session_ip = await conn.fetchval("SELECT host(source_ip) FROM sessions")
    finally:
        await conn.close()
    assert [(r["outcome"], r["ip"]) for r in rows] == [
        ("failure", "198.51.100.23"),
        ("success", "198.51.100.23"),
    ]
    assert session_ip == "198.51.100.23"
