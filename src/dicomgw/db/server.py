"""Which PostgreSQL to use: the configured DSN, or the embedded server."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from dicomgw.config import Config
from dicomgw.db.embedded import EmbeddedPostgres


@contextmanager
def database_server(
    config: Config, *, adopt: bool
) -> Iterator[tuple[str, EmbeddedPostgres | None]]:
    """Yield a DSN and, with no ``database.dsn``, the embedded server, started (or
    attached to) for the block and stopped after it if this process owns it."""
    if config.database.dsn:
        yield config.database.dsn, None
        return
    server = EmbeddedPostgres(config.embedded_pg_dir, config.database.embedded_run_as)
    dsn = server.start(adopt=adopt)
    try:
        yield dsn, server
    finally:
        server.stop()


@contextmanager
def database(config: Config, *, adopt: bool) -> Iterator[str]:
    """Yield a DSN (see :func:`database_server`)."""
    with database_server(config, adopt=adopt) as (dsn, _):
        yield dsn
