"""The API in-process (falcon.testing.ASGIConductor, ASGI lifespan included) on a
real PostgreSQL: for resource tests that need no running gateway."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import falcon.testing

from dicomgw.accounts import add_user
from dicomgw.api.app import ROUTES, create_app
from dicomgw.api.auth import SESSION_COOKIE
from dicomgw.api.context import RouteAdder
from dicomgw.config import Config, load_config
from dicomgw.db import migrate


@dataclass
class Api:
    """A conductor logged in as one user; ``call`` sends its session cookie and
    CSRF token (the test client keeps no cookies itself)."""

    conductor: falcon.testing.ASGIConductor
    session: str
    csrf: str
    username: str

    async def call(self, method: str, path: str, **kwargs: Any) -> falcon.testing.Result:
        headers = {"X-CSRF-Token": self.csrf, **kwargs.pop("headers", {})}
        cookies = {SESSION_COOKIE: self.session, **kwargs.pop("cookies", {})}
        return await self.conductor.simulate_request(
            method, f"/api/v1{path}", headers=headers, cookies=cookies, **kwargs
        )


async def migrated(dsn: str) -> None:
    await asyncio.to_thread(migrate.upgrade, dsn)


def api_config(dsn: str, state_dir: Path, **env: str) -> Config:
    return load_config(
        None, {"DICOMGW_DATABASE__DSN": dsn, "DICOMGW_STATE_DIR": str(state_dir), **env}
    )


async def new_user(dsn: str, name: str, role: str, password: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await add_user(conn, name, role, password)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def logged_in(
    config: Config, role: str, routes: Sequence[RouteAdder] = ROUTES
) -> AsyncIterator[Api]:
    """The app with ``routes``, and a new user of ``role`` logged in to it."""
    assert config.database.dsn is not None
    name, password = f"{role}-{uuid.uuid4().hex[:8]}", "in-process-password"
    await new_user(config.database.dsn, name, role, password)
    app = create_app(config, routes=routes)
    async with falcon.testing.ASGIConductor(app) as conductor:
        login = await conductor.simulate_post(
            "/api/v1/auth/login", json={"username": name, "password": password}
        )
        assert login.status_code == 200, login.text
        session = login.cookies[SESSION_COOKIE].value
        yield Api(conductor, session, login.json["csrf_token"], name)
