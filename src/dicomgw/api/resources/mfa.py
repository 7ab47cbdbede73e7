"""My second factor (TOTP) and my API tokens."""

from __future__ import annotations

import secrets

import falcon
import falcon.asgi

from dicomgw import audit
from dicomgw.api.auditing import audit_request
from dicomgw.api.auth import ROLES, TOKEN_PREFIX, User, allow, token_hash
from dicomgw.api.context import PREFIX, ApiContext, App
from dicomgw.api.mfa import check_totp, new_recovery_codes, new_secret, provisioning
from dicomgw.api.problems import Problem, invalid, not_found
from dicomgw.api.validation import body_of

MAX_TOKEN_DAYS = 3650


def _wrong_code() -> Problem:
    return Problem(403, "invalid-credentials", "Wrong code", "wrong or already used code")


class TotpResource:
    """Enrol (``POST /me/totp``), confirm with a first code, disable with a current
    code, renew the recovery codes with a current code."""

    def __init__(self, api: ApiContext) -> None:
        self._api = api

    async def _audit(self, req: falcon.asgi.Request, action: str) -> None:
        user: User = req.context.user
        async with self._api.pools.pool.acquire() as conn:
            await audit_request(
                conn, req, action, user.username, event_id=audit.USER_AUTHENTICATION
            )

    @allow(*ROLES)
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        user: User = req.context.user
        secret = new_secret()
        async with self._api.pools.pool.acquire() as conn:
            done = await conn.execute(
                "UPDATE users SET totp_secret = $2, totp_last_step = NULL, updated_at = now() "
                "WHERE id = $1 AND NOT totp_confirmed",
                user.id,
                self._api.box.seal({"totp": secret}),
            )
        if done.endswith(" 0"):
            raise Problem(409, "conflict", "TOTP is on", "disable it first to enrol again")
        uri, svg = provisioning(secret, user.username)
        resp.status = falcon.HTTP_201
        resp.media = {"otpauth_uri": uri, "secret": secret, "qr_svg": svg}

    async def _confirmed_code(self, req: falcon.asgi.Request, confirmed: bool) -> None:
        user: User = req.context.user
        body = await body_of(req, {"code": str})
        async with self._api.pools.pool.acquire() as conn, conn.transaction():
            state = await conn.fetchval(
                "SELECT totp_confirmed FROM users WHERE id = $1 AND totp_secret IS NOT NULL",
                user.id,
            )
            if state is None or state != confirmed:
                raise Problem(
                    409, "conflict", "Not possible now",
                    "enrol first" if state is None else
                    ("TOTP is already on" if state else "TOTP is not on"),
                )  # fmt: skip
            if not await check_totp(conn, self._api.box, user.id, body["code"]):
                raise _wrong_code()

    @allow(*ROLES)
    async def on_post_confirm(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        await self._confirmed_code(req, confirmed=False)
        user: User = req.context.user
        async with self._api.pools.pool.acquire() as conn, conn.transaction():
            await conn.execute("UPDATE users SET totp_confirmed = true WHERE id = $1", user.id)
            codes = await new_recovery_codes(conn, user.id)
        await self._audit(req, "mfa.enable")
        resp.media = {"recovery_codes": codes}

    @allow(*ROLES)
    async def on_post_disable(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        await self._confirmed_code(req, confirmed=True)
        user: User = req.context.user
        async with self._api.pools.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE users SET totp_confirmed = false, totp_secret = NULL, "
                "totp_last_step = NULL WHERE id = $1",
                user.id,
            )
            await conn.execute("DELETE FROM recovery_codes WHERE user_id = $1", user.id)
        await self._audit(req, "mfa.disable")
        resp.status = falcon.HTTP_204

    @allow(*ROLES)
    async def on_post_recovery(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        await self._confirmed_code(req, confirmed=True)
        user: User = req.context.user
        async with self._api.pools.pool.acquire() as conn, conn.transaction():
            codes = await new_recovery_codes(conn, user.id)
        await self._audit(req, "mfa.recovery_codes")
        resp.media = {"recovery_codes": codes}


class TokensResource:
    """API tokens for scripts: the token is shown once, at creation."""

    def __init__(self, api: ApiContext) -> None:
        self._pools = api.pools

    @allow(*ROLES)
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        user: User = req.context.user
        async with self._pools.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT id, name, prefix, created_at, last_used_at, expires_at FROM api_tokens "
                "WHERE user_id = $1 AND revoked_at IS NULL ORDER BY id",
                user.id,
            )
        resp.media = {
            "items": [
                {
                    "id": r["id"],
                    "name": r["name"],
                    "prefix": r["prefix"],
                    **{
                        k: r[k].isoformat() if r[k] else None
                        for k in ("created_at", "last_used_at", "expires_at")
                    },
                }
                for r in rows
            ]
        }

    @allow(*ROLES)
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        user: User = req.context.user
        if user.via != "session":
            raise Problem(403, "forbidden", "Not allowed", "tokens cannot create tokens")
        body = await body_of(req, {"name": str}, {"expires_in_days": int})
        name = body["name"].strip()
        days = body.get("expires_in_days")
        # NOTE: the length sent, as the OpenAPI description's maxLength counts.
        if not name or len(body["name"]) > 64:
            raise invalid("'name' must be 1-64 characters, not all spaces", field="name")
        if days is not None and not 1 <= days <= MAX_TOKEN_DAYS:
            raise invalid(f"'expires_in_days' must be 1-{MAX_TOKEN_DAYS}", field="expires_in_days")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        async with self._pools.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "INSERT INTO api_tokens (user_id, name, token_hash, prefix, expires_at) "
                "VALUES ($1, $2, $3, $4, now() + make_interval(days => $5)) "
                "RETURNING id, created_at, expires_at",
                user.id,
                name,
                token_hash(token),
                token[:10],
                days,
            )
            await audit_request(conn, req, "token.create", name, {"token_id": row["id"]})
        resp.status = falcon.HTTP_201
        resp.media = {
            "id": row["id"],
            "name": name,
            "token": token,
            "prefix": token[:10],
            "created_at": row["created_at"].isoformat(),
            "expires_at": row["expires_at"].isoformat() if row["expires_at"] else None,
        }

    @allow(*ROLES)
    async def on_delete_one(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, token_id: int
    ) -> None:
        user: User = req.context.user
        async with self._pools.pool.acquire() as conn:
            name = await conn.fetchval(
                "UPDATE api_tokens SET revoked_at = now() "
                "WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL RETURNING name",
                token_id,
                user.id,
            )
            if name is None:
                raise not_found(f"token {token_id}")
            await audit_request(conn, req, "token.revoke", name, {"token_id": token_id})
        resp.status = falcon.HTTP_204


def add_routes(app: App, api: ApiContext) -> None:
    totp = TotpResource(api)
    app.add_route(f"{PREFIX}/me/totp", totp)
    app.add_route(f"{PREFIX}/me/totp/confirm", totp, suffix="confirm")
    app.add_route(f"{PREFIX}/me/totp/disable", totp, suffix="disable")
    app.add_route(f"{PREFIX}/me/totp/recovery-codes", totp, suffix="recovery")
    tokens = TokensResource(api)
    app.add_route(f"{PREFIX}/me/tokens", tokens)
    app.add_route(f"{PREFIX}/me/tokens/{{token_id:id}}", tokens, suffix="one")
