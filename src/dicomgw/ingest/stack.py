"""Everything one process needs to take instances in, built from the config: the
spool, the disk guard, the routing table, the index writer, the settling of
unconfirmed commits, and :class:`Ingest` over them. The DIMSE receiver and the
API's STOW-RS each run one; they share the storage root and the database."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import asyncpg

from dicomgw.config import Config
from dicomgw.index.batcher import BatchObserver, IndexBatcher
from dicomgw.ingest.recovery import Unconfirmed, recover
from dicomgw.ingest.routing import RoutingTable
from dicomgw.ingest.service import Ingest
from dicomgw.storage.disk import DiskGuard
from dicomgw.storage.layout import prepare_storage
from dicomgw.storage.spool import Spool

# fsync is per instance and blocks; enough threads for every association's (or
# request's) commit to be in flight at once without queueing behind another.
FSYNC_THREADS = 16


def index_timeout_s(config: Config) -> float:
    """How long an instance waits for its index COMMIT before it is refused (0xA700)."""
    statement_s = config.database.statement_timeout_ms / 1000 or 60.0
    return statement_s + config.database.connect_timeout_s


class IngestStack:
    def __init__(
        self,
        config: Config,
        pool: asyncpg.Pool,
        *,
        on_index_batch: BatchObserver | None = None,
        threads: int = FSYNC_THREADS,
    ) -> None:
        layout = prepare_storage(config.storage_root)
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="commit")
        self.spool = Spool(layout, fsync=config.storage.fsync, executor=self._executor)
        self.disk = DiskGuard(
            layout.root, config.storage.high_watermark_percent, config.storage.low_watermark_percent
        )
        self.routing = RoutingTable(pool)
        self.batcher = IndexBatcher(
            pool,
            batch_size=config.index.batch_size,
            max_delay_s=config.index.max_delay_ms / 1000,
            duplicate_policy=config.storage.duplicate_policy,
            same_content=self.spool.same_dataset,
            timeout_s=index_timeout_s(config),
            router=self.routing.route,
            on_batch=on_index_batch,
        )
        self.unconfirmed = Unconfirmed(layout, pool, self.batcher)
        self.ingest = Ingest(
            self.spool,
            self.disk,
            self.batcher,
            head_bytes=config.index.scan_bytes,
            on_unconfirmed=self.unconfirmed.add,
        )
        self._pool = pool

    async def start(self, *, recover_storage: bool) -> None:
        """``recover_storage``: settle what a crash left (the process that holds the
        state directory's lock does, once, before any instance is taken in)."""
        await self.routing.start()
        self.batcher.start()
        if recover_storage:
            await recover(self.spool.layout, self._pool, self.batcher)
        await asyncio.get_running_loop().run_in_executor(self._executor, self.spool.prepare_days)

    async def close(self) -> None:
        """After the last instance was handed in: its index writes finish first."""
        await self.unconfirmed.close()
        await self.batcher.close()
        await self.routing.close()
        self._executor.shutdown(wait=True)
        self.spool.close()
