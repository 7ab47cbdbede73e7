"""Per-request plumbing: the database pool's lifespan, a request id in every
response and log line, security headers on every response."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import asyncpg
import falcon.asgi

from dicomgw.api.problems import invalid, not_found
from dicomgw.config import Config
from dicomgw.db.pool import create_pool
from dicomgw.errors import DicomGwError
from dicomgw.log import context_id

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-Id"
# The API serves JSON and the built web UI (same origin); nothing else may load.
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


class PoolMiddleware:
    """Owns the asyncpg pool for the life of the worker (ASGI lifespan)."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._pool: asyncpg.Pool | None = None
        self.before_close: list[Callable[[], Awaitable[None]]] = []
        """Run at shutdown, before the pool closes (users of the pool)."""
        self.after_start: list[Callable[[], None]] = []
        """Run at start-up, once the pool is open (background work of the worker)."""

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise falcon.HTTPServiceUnavailable(description="the database pool is not open")
        return self._pool

    async def process_startup(self, scope: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        dsn = self._config.database.dsn
        if dsn is None:
            raise DicomGwError("the API needs database.dsn (set by 'dicom-gw serve')")
        self._pool = await create_pool(dsn, self._config.database)
        for start in self.after_start:
            start()

    async def process_shutdown(self, scope: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        for close in self.before_close:
            await close()
        if self._pool is not None:
            await self._pool.close()


def _refuse_nul(req: falcon.asgi.Request) -> None:
    """PostgreSQL text cannot hold NUL (%00): no UID or name has one, so a path with
    it names nothing and a query parameter with it matches nothing."""
    if "\x00" in req.path:
        raise not_found("a path with a NUL character (%00)")
    for name, value in req.params.items():
        values = value if isinstance(value, list) else [value]
        if "\x00" in name or any("\x00" in v for v in values):
            raise invalid(f"query parameter '{name}' holds a NUL character (%00)", field=name)


class RequestMiddleware:
    def __init__(self, behind_https: bool) -> None:
        self._behind_https = behind_https

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        # A proxy's id is kept (one id across nginx and us) if it looks like one.
        given = req.get_header(REQUEST_ID_HEADER) or ""
        request_id = given if 8 <= len(given) <= 64 and given.isascii() else secrets.token_hex(8)
        req.context.request_id = request_id
        context_id.set(f"req-{request_id}")
        _refuse_nul(req)

    async def process_response(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        resource: object,
        req_succeeded: bool,
    ) -> None:
        resp.set_header(REQUEST_ID_HEADER, getattr(req.context, "request_id", ""))
        resp.set_header("X-Content-Type-Options", "nosniff")
        resp.set_header("Referrer-Policy", "no-referrer")
        resp.set_header("X-Frame-Options", "DENY")
        resp.set_header("Content-Security-Policy", CSP)
        if self._behind_https:
            resp.set_header("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
        if req.path.startswith("/api/") and not resp.get_header("Cache-Control"):
            # API answers may hold PHI: never cached by browsers or proxies.
            resp.set_header("Cache-Control", "no-store")
