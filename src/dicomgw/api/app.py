"""The management API: ``create_app(config)`` builds the Falcon ASGI app.

This layer never imports the compiled core or the receiver: API workers only
talk to PostgreSQL and the storage root.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import asyncpg
import falcon
import falcon.asgi
import orjson

from dicomgw.config import Config
from dicomgw.db.pool import create_pool
from dicomgw.errors import DicomGwError
from dicomgw.storage.layout import prepare_storage


class PoolMiddleware:
    """Owns the asyncpg pool for the life of the worker (ASGI lifespan)."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self.pool: asyncpg.Pool | None = None

    async def process_startup(self, scope: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        dsn = self._config.database.dsn
        if dsn is None:
            raise DicomGwError("the API needs database.dsn (set by 'dicom-gw serve')")
        self.pool = await create_pool(dsn, self._config.database)

    async def process_shutdown(self, scope: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        if self.pool is not None:
            await self.pool.close()


App = falcon.asgi.App[falcon.asgi.Request, falcon.asgi.Response]


class LiveResource:
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = {"status": "ok"}


class ReadyResource:
    """Ready when the database answers and the storage root is writable. No PHI."""

    def __init__(self, config: Config, pools: PoolMiddleware) -> None:
        self._config = config
        self._pools = pools

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        checks: dict[str, dict[str, Any]] = {}
        try:
            assert self._pools.pool is not None
            async with self._pools.pool.acquire(timeout=5) as conn:
                await conn.fetchval("SELECT 1")
            checks["database"] = {"ok": True}
        except (OSError, AssertionError, TimeoutError, asyncpg.PostgresError) as exc:
            checks["database"] = {"ok": False, "error": str(exc)}
        try:
            prepare_storage(self._config.storage_root)
            checks["storage"] = {"ok": True}
        except DicomGwError as exc:
            checks["storage"] = {"ok": False, "error": str(exc)}
        ok = all(c["ok"] for c in checks.values())
        resp.status = falcon.HTTP_200 if ok else falcon.HTTP_503
        resp.media = {"status": "ok" if ok else "unavailable", "checks": checks}


def create_app(config: Config) -> App:
    pools = PoolMiddleware(config)
    app: App = falcon.asgi.App(middleware=[pools])
    json_handler = falcon.media.JSONHandler(
        dumps=lambda o: orjson.dumps(o).decode(), loads=orjson.loads
    )
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = json_handler
    app.req_options.media_handlers[falcon.MEDIA_JSON] = json_handler
    app.add_route("/api/v1/health/live", LiveResource())
    app.add_route("/api/v1/health/ready", ReadyResource(config, pools))
    return app


def create_app_from_env() -> App:
    """Granian's factory target: the config file from DICOMGW_CONFIG plus the environment."""
    from dicomgw.config import load_config
    from dicomgw.log import setup_logging

    config = load_config(os.environ.get("DICOMGW_CONFIG") or None)
    setup_logging(config.logging)
    return create_app(config)
