"""TOTP enrolment and login with it, single-use codes, recovery codes; API tokens."""

from __future__ import annotations

import time
from pathlib import Path

import asyncpg
import pyotp

from dicomgw.api.mfa import matching_step
from tests.api.inprocess import Api, api_config, logged_in, migrated


async def login(api: Api, password: str = "in-process-password", **extra: str) -> int:
    result = await api.conductor.simulate_post(
        "/api/v1/auth/login",
        json={"username": api.username, "password": password, **extra},
    )
    return result.status_code


def code_for_next_step(secret: str) -> str:
    """A code of the next 30 s step: accepted (window), and never the one just used."""
    totp = pyotp.TOTP(secret)
    return totp.generate_otp(int(time.time() // totp.interval) + 1)


async def test_enrol_confirm_then_login_needs_a_fresh_code(empty_db: str, tmp_path: Path) -> None:
    await migrated(empty_db)
    async with logged_in(api_config(empty_db, tmp_path), "viewer") as api:
        enrol = await api.call("POST", "/me/totp")
        assert enrol.status_code == 201
        assert enrol.json["otpauth_uri"].startswith("otpauth://totp/dicom-gw:")
        assert enrol.json["qr_svg"].lstrip().startswith("<svg")
        secret = enrol.json["secret"]

        wrong = await api.call("POST", "/me/totp/confirm", json={"code": "000000"})
        assert wrong.status_code == 403
        code = pyotp.TOTP(secret).now()
        confirm = await api.call("POST", "/me/totp/confirm", json={"code": code})
        assert confirm.status_code == 200
        recovery = confirm.json["recovery_codes"]
        assert len(recovery) == 10

        # The password alone is no longer enough.
        needs = await api.conductor.simulate_post(
            "/api/v1/auth/login",
            json={"username": api.username, "password": "in-process-password"},
        )
        assert needs.status_code == 401
        assert needs.json["type"] == "urn:dicom-gw:problem:totp-required"
        # The code used to confirm cannot be used again (replay).
        assert await login(api, totp=code) == 401
        fresh = code_for_next_step(secret)
        assert await login(api, totp=fresh) == 200
        assert await login(api, totp=fresh) == 401  # single use
        # A recovery code works once.
        assert await login(api, totp=recovery[0]) == 200
        assert await login(api, totp=recovery[0]) == 401

        # Disabling needs a current code.
        assert (await api.call("POST", "/me/totp/disable", json={"code": "123"})).status_code == 403
        totp = pyotp.TOTP(secret)
        later = totp.generate_otp(int(time.time() // totp.interval) + 2)
        assert matching_step(secret, later) is None  # outside the window: refused
        assert (await api.call("POST", "/me/totp/disable", json={"code": later})).status_code == 403


async def test_disable_with_a_current_code(empty_db: str, tmp_path: Path) -> None:
    await migrated(empty_db)
    async with logged_in(api_config(empty_db, tmp_path), "operator") as api:
        secret = (await api.call("POST", "/me/totp")).json["secret"]
        confirm = await api.call(
            "POST", "/me/totp/confirm", json={"code": pyotp.TOTP(secret).now()}
        )
        assert confirm.status_code == 200
        again = await api.call("POST", "/me/totp")
        assert again.status_code == 409
        off = await api.call("POST", "/me/totp/disable", json={"code": code_for_next_step(secret)})
        assert off.status_code == 204
        assert await login(api) == 200
        conn = await asyncpg.connect(empty_db)
        try:
            actions = {
                r["action"]
                for r in await conn.fetch(
                    "SELECT action FROM audit_log WHERE actor = $1", api.username
                )
            }
            secret_column = await conn.fetchval(
                "SELECT totp_secret FROM users WHERE username = $1", api.username
            )
        finally:
            await conn.close()
        assert {"mfa.enable", "mfa.disable", "auth.login"} <= actions
        assert secret_column is None


async def test_totp_secret_is_stored_encrypted(empty_db: str, tmp_path: Path) -> None:
    await migrated(empty_db)
    async with logged_in(api_config(empty_db, tmp_path), "viewer") as api:
        secret = (await api.call("POST", "/me/totp")).json["secret"]
        conn = await asyncpg.connect(empty_db)
        try:
            stored = await conn.fetchval(
                "SELECT totp_secret FROM users WHERE username = $1", api.username
            )
        finally:
            await conn.close()
    assert secret.encode() not in bytes(stored)


async def test_api_tokens_are_shown_once_and_can_be_revoked(empty_db: str, tmp_path: Path) -> None:
    await migrated(empty_db)
    async with logged_in(api_config(empty_db, tmp_path), "viewer") as api:
        made = await api.call("POST", "/me/tokens", json={"name": "backup script"})
        assert made.status_code == 201
        token = made.json["token"]
        assert token.startswith("dgw_")
        listed = (await api.call("GET", "/me/tokens")).json["items"]
        assert [t["name"] for t in listed] == ["backup script"]
        assert "token" not in listed[0]

        bearer = {"Authorization": f"Bearer {token}"}
        me = await api.conductor.simulate_get("/api/v1/me", headers=bearer)
        assert me.status_code == 200
        assert me.json["username"] == api.username
        # A token needs no CSRF header, but cannot mint more tokens.
        more = await api.conductor.simulate_post(
            "/api/v1/me/tokens", headers=bearer, json={"name": "x"}
        )
        assert more.status_code == 403

        revoked = await api.call("DELETE", f"/me/tokens/{made.json['id']}")
        assert revoked.status_code == 204
        gone = await api.conductor.simulate_get("/api/v1/me", headers=bearer)
        assert gone.status_code == 401
        conn = await asyncpg.connect(empty_db)
        try:
            hashes = await conn.fetch("SELECT token_hash FROM api_tokens")
        finally:
            await conn.close()
        assert all(token.encode() not in bytes(r["token_hash"]) for r in hashes)


async def test_token_validation(empty_db: str, tmp_path: Path) -> None:
    await migrated(empty_db)
    async with logged_in(api_config(empty_db, tmp_path), "viewer") as api:
        bad = await api.call("POST", "/me/tokens", json={"name": "x", "expires_in_days": 0})
        assert bad.status_code == 422
        assert bad.json["field"] == "expires_in_days"
        expiring = await api.call("POST", "/me/tokens", json={"name": "x", "expires_in_days": 30})
        assert expiring.json["expires_at"] is not None
