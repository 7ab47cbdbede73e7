"""asyncpg pools: every runtime database access goes through one of these."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg

from dicomgw.config import DatabaseConfig
from dicomgw.errors import DatabaseError


async def create_pool(
    dsn: str,
    config: DatabaseConfig,
    init: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
) -> asyncpg.Pool:
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=config.pool_min_size,
            max_size=config.pool_max_size,
            timeout=config.connect_timeout_s,
            init=init,
            server_settings={
                "statement_timeout": str(config.statement_timeout_ms),
                "application_name": "dicom-gw",
            },
        )
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise DatabaseError(f"cannot connect to the database: {exc}") from None
    assert pool is not None
    return pool
