"""Log in, log out, who am I, my sessions, my password."""

from __future__ import annotations

import datetime
from typing import Any

import asyncpg
import falcon
import falcon.asgi

from dicomgw import audit
from dicomgw.accounts import AccountError
from dicomgw.api.auditing import audit_request
from dicomgw.api.auth import (
    PUBLIC,
    ROLES,
    User,
    allow,
    create_session,
    new_password_hash,
    password_matches,
    session_cookie,
    upgraded_hash,
)
from dicomgw.api.context import ApiContext
from dicomgw.api.mfa import second_factor_ok
from dicomgw.api.middleware import PoolMiddleware
from dicomgw.api.problems import Problem, invalid, not_found
from dicomgw.api.throttle import begin_attempt, record_failure, succeeded, withdraw
from dicomgw.api.validation import body_of
from dicomgw.config import ApiConfig

LOGIN_FIELDS = {"username": str, "password": str}
EXPIRED = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def user_json(user: User) -> dict[str, Any]:
    return {"id": user.id, "username": user.username, "role": user.role}


class LoginResource:
    """Password, then (when the user enabled it) a TOTP or recovery code in ``totp``."""

    def __init__(self, api: ApiContext) -> None:
        self._api = api
        self._config = api.config.api
        self._pools = api.pools
        self._throttle = api.throttle

    @allow(PUBLIC)
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        body = await body_of(req, LOGIN_FIELDS, {"totp": str})
        username, password = body["username"], body["password"]
        ip = req.context.client_ip
        failed = Problem(401, "invalid-credentials", "Login failed", "wrong user name or password")
        async with self._pools.pool.acquire() as conn:
            attempt = await begin_attempt(conn, self._throttle, username, ip)
            if isinstance(attempt, int):
                wait = attempt
                await audit_request(
                    conn, req, "auth.login", detail={"reason": "throttled"}, actor=username,
                    event_id=audit.USER_AUTHENTICATION, outcome="failure",
                )  # fmt: skip
                raise Problem(
                    429,
                    "too-many-requests",
                    "Too many failed logins",
                    f"try again in {wait} s",
                    headers={"Retry-After": str(wait)},
                    retry_after_s=wait,
                )
            row = await conn.fetchrow(
                "SELECT id, username, password_hash, role, disabled, totp_confirmed FROM users "
                "WHERE lower(username) = lower($1)",
                username,
            )
        # NOTE: no pool connection is held while waiting for a hashing slot.
        usable = row is not None and not row["disabled"]
        right = await password_matches(row["password_hash"] if row and usable else None, password)
        # The hashing parameters went up since: rehash while we have the password.
        upgraded = await upgraded_hash(password, row["password_hash"]) if right and row else None
        async with self._pools.pool.acquire() as conn:
            if not right:
                await audit_request(
                    conn, req, "auth.login", actor=username,
                    event_id=audit.USER_AUTHENTICATION, outcome="failure",
                )  # fmt: skip
                raise failed
            assert row is not None
            if row["totp_confirmed"]:
                await withdraw(conn, attempt)
                await self._second_factor(conn, req, row, body.get("totp"))
            await succeeded(conn, attempt, row["id"], row["username"], ip)
            if upgraded:
                await conn.execute(
                    "UPDATE users SET password_hash = $1 WHERE id = $2", upgraded, row["id"]
                )
            token, csrf = await create_session(
                conn, row["id"], self._config, ip, req.get_header("User-Agent")
            )
            await audit_request(
                conn, req, "auth.login", actor=row["username"], event_id=audit.USER_AUTHENTICATION
            )
        resp.set_cookie(
            session_cookie(self._config),
            token,
            max_age=self._config.session_max_age_s,
            secure=self._config.behind_https,
            http_only=True,
            same_site="Strict",
            path="/",
        )
        resp.media = {
            "user": {"id": row["id"], "username": row["username"], "role": row["role"]},
            "csrf_token": csrf,
        }

    async def _second_factor(
        self,
        conn: asyncpg.Connection,
        req: falcon.asgi.Request,
        row: asyncpg.Record,
        code: str | None,
    ) -> None:
        if code is None:
            # The password was right; the client now asks for the code.
            raise Problem(
                401, "totp-required", "Second factor required",
                "send the code from the authenticator app (or a recovery code) as 'totp'",
            )  # fmt: skip
        async with conn.transaction():
            ok = await second_factor_ok(conn, self._api.box, row["id"], code)
        if not ok:
            await record_failure(conn, row["username"], req.context.client_ip)
            await audit_request(
                conn, req, "auth.login", detail={"reason": "second factor"},
                actor=row["username"], event_id=audit.USER_AUTHENTICATION, outcome="failure",
            )  # fmt: skip
            raise Problem(
                401, "invalid-credentials", "Login failed",
                "wrong or already used code",
            )  # fmt: skip


class LogoutResource:
    def __init__(self, pools: PoolMiddleware, config: ApiConfig) -> None:
        self._pools = pools
        self._config = config

    @allow(*ROLES)
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        user: User = req.context.user
        async with self._pools.pool.acquire() as conn:
            if user.session_id is not None:
                await conn.execute("DELETE FROM sessions WHERE id = $1", user.session_id)
            await audit_request(conn, req, "auth.logout", event_id=audit.USER_AUTHENTICATION)
        # NOTE: set, not unset_cookie: a __Host- cookie is replaced only by a Secure one.
        resp.set_cookie(
            session_cookie(self._config),
            "",
            expires=EXPIRED,
            secure=self._config.behind_https,
            http_only=True,
            same_site="Strict",
            path="/",
        )
        resp.status = falcon.HTTP_204


class MeResource:
    def __init__(self, pools: PoolMiddleware) -> None:
        self._pools = pools

    @allow(*ROLES)
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        user: User = req.context.user
        async with self._pools.pool.acquire() as conn:
            totp = await conn.fetchval("SELECT totp_confirmed FROM users WHERE id = $1", user.id)
        # A reloaded page gets its session's CSRF token back here: another site
        # cannot read this answer (same-origin policy, no CORS), so it cannot either.
        csrf = {"csrf_token": user.csrf_token} if user.csrf_token else {}
        resp.media = user_json(user) | {"totp_enabled": bool(totp)} | csrf


class MySessionsResource:
    def __init__(self, pools: PoolMiddleware) -> None:
        self._pools = pools

    @allow(*ROLES)
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        user: User = req.context.user
        async with self._pools.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT id, created_at, last_seen_at, expires_at, host(source_ip) AS source_ip, "
                "user_agent FROM sessions WHERE user_id = $1 AND expires_at > now() "
                "ORDER BY last_seen_at DESC",
                user.id,
            )
        resp.media = {
            "items": [
                {**dict(r), "current": r["id"] == user.session_id}
                | {k: r[k].isoformat() for k in ("created_at", "last_seen_at", "expires_at")}
                for r in rows
            ]
        }

    @allow(*ROLES)
    async def on_delete_one(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, session_id: int
    ) -> None:
        user: User = req.context.user
        async with self._pools.pool.acquire() as conn:
            done = await conn.execute(
                "DELETE FROM sessions WHERE id = $1 AND user_id = $2", session_id, user.id
            )
            if done.endswith(" 0"):
                raise not_found(f"session {session_id}")
            await audit_request(conn, req, "session.revoke", str(session_id))
        resp.status = falcon.HTTP_204


class MePasswordResource:
    def __init__(self, pools: PoolMiddleware, config: ApiConfig) -> None:
        self._pools = pools
        self._config = config

    @allow(*ROLES)
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        user: User = req.context.user
        body = await body_of(req, {"current_password": str, "new_password": str})
        async with self._pools.pool.acquire() as conn:
            current = await conn.fetchval("SELECT password_hash FROM users WHERE id = $1", user.id)
            if not await password_matches(current, body["current_password"]):
                raise Problem(
                    403, "invalid-credentials", "Wrong password", "the current password is wrong"
                )
            try:
                new_hash = await new_password_hash(body["new_password"], self._config)
            except AccountError as exc:
                raise invalid(str(exc), field="new_password") from None
            async with conn.transaction():
                await conn.execute(
                    "UPDATE users SET password_hash = $2, password_changed_at = now(), "
                    "updated_at = now() WHERE id = $1",
                    user.id,
                    new_hash,
                )
                # Other sessions (maybe someone else's) end with the old password.
                await conn.execute(
                    "DELETE FROM sessions WHERE user_id = $1 AND id IS DISTINCT FROM $2",
                    user.id,
                    user.session_id,
                )
                await audit_request(conn, req, "user.password_change", user.username)
        resp.status = falcon.HTTP_204
