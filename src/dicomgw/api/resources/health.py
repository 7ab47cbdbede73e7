"""Liveness and readiness: unauthenticated, no PHI."""

from __future__ import annotations

from typing import Any

import asyncpg
import falcon
import falcon.asgi

from dicomgw.api.auth import PUBLIC, allow
from dicomgw.api.middleware import PoolMiddleware
from dicomgw.config import Config
from dicomgw.errors import DicomGwError
from dicomgw.storage.layout import prepare_storage


class LiveResource:
    @allow(PUBLIC)
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = {"status": "ok"}


class ReadyResource:
    """Ready when the database answers and the storage root is writable."""

    def __init__(self, config: Config, pools: PoolMiddleware) -> None:
        self._config = config
        self._pools = pools

    @allow(PUBLIC)
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        checks: dict[str, dict[str, Any]] = {}
        try:
            async with self._pools.pool.acquire(timeout=5) as conn:
                await conn.fetchval("SELECT 1")
            checks["database"] = {"ok": True}
        except (OSError, TimeoutError, asyncpg.PostgresError, falcon.HTTPError) as exc:
            checks["database"] = {"ok": False, "error": str(exc)}
        try:
            prepare_storage(self._config.storage_root)
            checks["storage"] = {"ok": True}
        except DicomGwError as exc:
            checks["storage"] = {"ok": False, "error": str(exc)}
        ok = all(c["ok"] for c in checks.values())
        resp.status = falcon.HTTP_200 if ok else falcon.HTTP_503
        resp.media = {"status": "ok" if ok else "unavailable", "checks": checks}
