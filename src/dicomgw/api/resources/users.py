"""User accounts (admin only): list, create, change role, disable, reset password."""

from __future__ import annotations

from typing import Any

import asyncpg
import falcon
import falcon.asgi

from dicomgw.accounts import AccountError, insert_user, validate_new_user
from dicomgw.api.auditing import audit_request
from dicomgw.api.auth import User, allow, new_password_hash
from dicomgw.api.middleware import PoolMiddleware
from dicomgw.api.problems import Problem, invalid, not_found
from dicomgw.api.validation import body_of
from dicomgw.config import ApiConfig

COLUMNS = "id, username, role, disabled, totp_confirmed, created_at, password_changed_at"


def row_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "username": row["username"],
        "role": row["role"],
        "disabled": row["disabled"],
        "totp_enabled": row["totp_confirmed"],
        "created_at": row["created_at"].isoformat(),
        "password_changed_at": row["password_changed_at"].isoformat(),
    }


class UsersResource:
    def __init__(self, pools: PoolMiddleware, config: ApiConfig) -> None:
        self._pools = pools
        self._config = config

    @allow("admin")
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        async with self._pools.pool.acquire() as conn:
            rows = await conn.fetch(f"SELECT {COLUMNS} FROM users ORDER BY lower(username)")
        resp.media = {"items": [row_json(r) for r in rows]}

    @allow("admin")
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        me: User = req.context.user
        body = await body_of(req, {"username": str, "role": str, "password": str})
        async with self._pools.pool.acquire() as conn, conn.transaction():
            try:
                validate_new_user(body["username"], body["role"])
                password_hash = await new_password_hash(body["password"], self._config)
                user_id = await insert_user(
                    conn, body["username"], body["role"], password_hash, actor=me.username
                )
            except AccountError as exc:
                if "already exists" in str(exc):
                    raise Problem(409, "conflict", "User exists", str(exc)) from None
                raise invalid(str(exc)) from None
            row = await conn.fetchrow(f"SELECT {COLUMNS} FROM users WHERE id = $1", user_id)
        resp.status = falcon.HTTP_201
        resp.location = f"/api/v1/users/{user_id}"
        resp.media = row_json(row)

    @allow("admin")
    async def on_patch_one(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, user_id: int
    ) -> None:
        me: User = req.context.user
        body = await body_of(req, {}, {"role": str, "disabled": bool, "password": str})
        if not body:
            raise invalid("nothing to change: send role, disabled or password")
        if user_id == me.id and (body.get("disabled") or body.get("role", "admin") != "admin"):
            raise invalid("admins cannot disable themselves or give up their own admin role")
        changes: dict[str, Any] = {}
        try:
            if "role" in body:
                validate_new_user("x", body["role"])
                changes["role"] = body["role"]
            if "password" in body:
                changes["password_hash"] = await new_password_hash(body["password"], self._config)
        except AccountError as exc:
            raise invalid(str(exc)) from None
        if "disabled" in body:
            changes["disabled"] = body["disabled"]
        sets = ", ".join(f"{k} = ${n}" for n, k in enumerate(changes, start=2))
        async with self._pools.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"UPDATE users SET {sets}, updated_at = now() WHERE id = $1 RETURNING {COLUMNS}",
                user_id,
                *changes.values(),
            )
            if row is None:
                raise not_found(f"user {user_id}")
            if changes.keys() & {"password_hash", "disabled", "role"}:
                # Whatever changed about the account, its sessions start over.
                await conn.execute("DELETE FROM sessions WHERE user_id = $1", user_id)
            shown = {k: v for k, v in body.items() if k != "password"}
            if "password" in body:
                shown["password"] = "reset"
            await audit_request(conn, req, "user.update", row["username"], shown)
        resp.media = row_json(row)
