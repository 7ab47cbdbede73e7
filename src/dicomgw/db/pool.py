"""asyncpg pools: every runtime database access goes through one of these.

Pools work as ``dicomgw_app`` (migration 0006): the privileges the gateway
uses, and on audit_log only SELECT and INSERT. A database where the migration
could not create that role (no CREATEROLE) is used with the login role's
privileges, which is said once at start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import asyncpg

from dicomgw.config import DatabaseConfig
from dicomgw.errors import DatabaseError

log = logging.getLogger(__name__)

APP_ROLE = "dicomgw_app"
CLOSE_TIMEOUT_S = 10.0
_ROLE_REFUSED = (asyncpg.InvalidParameterValueError, asyncpg.InsufficientPrivilegeError)


async def create_pool(
    dsn: str,
    config: DatabaseConfig,
    init: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
) -> asyncpg.Pool:
    settings = {
        "statement_timeout": str(config.statement_timeout_ms),
        "application_name": "dicom-gw",
    }
    try:
        try:
            pool = await _pool(dsn, config, init, settings | {"role": APP_ROLE})
        except _ROLE_REFUSED as exc:
            log.warning(
                "the database has no usable dicomgw_app role: working with the login "
                "role's privileges (audit_log is guarded by its trigger only); run "
                "'dicom-gw db upgrade' as a role with CREATEROLE to create it",
                extra={"error": str(exc)},
            )
            pool = await _pool(dsn, config, init, settings)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise DatabaseError(f"cannot connect to the database: {exc}") from None
    return pool


async def _pool(
    dsn: str,
    config: DatabaseConfig,
    init: Callable[[asyncpg.Connection], Awaitable[None]] | None,
    settings: dict[str, str],
) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=config.pool_min_size,
        max_size=config.pool_max_size,
        timeout=config.connect_timeout_s,
        init=init,
        server_settings=settings,
    )
    assert pool is not None
    return pool


async def close_pool(pool: asyncpg.Pool, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
    """Close gracefully, or terminate after ``timeout_s``: Pool.close waits for
    every connection to be released, and one released after its server went
    away and came back can leave a holder waiting forever (seen: ``serve`` not
    stopping after a database restart). asyncpg's documentation advises a timeout."""
    try:
        await asyncio.wait_for(pool.close(), timeout_s)
    except TimeoutError:
        log.warning("database pool did not close in time: terminated")
        pool.terminate()
