"""This API worker's ingest stack (spool, index writer, routing table) on a pool
of its own (its connections carry the index writer's session functions, and
STOW-RS index writes never wait behind the API's reads), started by the first
request that stores something."""

from __future__ import annotations

import asyncio

import asyncpg

from dicomgw.config import Config
from dicomgw.db.pool import create_pool
from dicomgw.index.batcher import init_connection
from dicomgw.ingest.service import Ingest
from dicomgw.ingest.stack import IngestStack

# A worker's STOW-RS requests commit in a few threads; the receiver has its own.
API_COMMIT_THREADS = 4


class Ingesting:
    def __init__(self, config: Config) -> None:
        self._config = config
        self._pool: asyncpg.Pool | None = None
        self._stack: IngestStack | None = None
        self._lock = asyncio.Lock()

    async def ingest(self) -> Ingest:
        if self._stack is None:
            async with self._lock:
                if self._stack is None:
                    database = self._config.database
                    self._pool = await create_pool(
                        database.dsn or "", database, init=init_connection
                    )
                    stack = IngestStack(self._config, self._pool, threads=API_COMMIT_THREADS)
                    # NOTE: recovery of what a crash left is the receiver's, which
                    # holds the state directory's lock; a worker only settles its own.
                    await stack.start(recover_storage=False)
                    self._stack = stack
        return self._stack.ingest

    async def close(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
