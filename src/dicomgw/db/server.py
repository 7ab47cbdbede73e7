"""Which PostgreSQL to use: the configured DSN, or the embedded server."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from dicomgw.config import Config
from dicomgw.db.embedded import EmbeddedPostgres


@contextmanager
def database(config: Config, *, adopt: bool) -> Iterator[str]:
    """Yield a DSN; with no ``database.dsn`` the embedded server is started
    (or attached to) for the block, and stopped after it if this process owns it."""
    if config.database.dsn:
        yield config.database.dsn
        return
    server = EmbeddedPostgres(config.embedded_pg_dir, config.database.embedded_run_as)
    dsn = server.start(adopt=adopt)
    try:
        yield dsn
    finally:
        server.stop()
