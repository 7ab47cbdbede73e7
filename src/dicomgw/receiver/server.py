"""The DIMSE receiver role: spool, disk guard, index writer and the listener, wired."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

import asyncpg

from dicomgw.association.acceptor import (
    AssociationLimits,
    ListenerCounters,
    StoreObserver,
    start_listener,
)
from dicomgw.config import Config
from dicomgw.errors import DicomGwError
from dicomgw.forward.rules import RoutingTable
from dicomgw.index.batcher import IndexBatcher
from dicomgw.receiver.recovery import recover
from dicomgw.receiver.store import StorageService
from dicomgw.storage.disk import DiskGuard
from dicomgw.storage.layout import prepare_storage
from dicomgw.storage.spool import Spool

log = logging.getLogger(__name__)

# fsync is per instance and blocks; enough threads for every association's
# commit to be in flight at once without queueing behind another.
FSYNC_THREADS = 16


def index_timeout_s(config: Config) -> float:
    """How long a C-STORE waits for its index COMMIT before answering 0xA700."""
    statement_s = config.database.statement_timeout_ms / 1000 or 60.0
    return statement_s + config.database.connect_timeout_s


class Receiver:
    def __init__(
        self, config: Config, pool: asyncpg.Pool, *, on_store_answered: StoreObserver | None = None
    ) -> None:
        layout = prepare_storage(config.storage_root)
        self._executor = ThreadPoolExecutor(FSYNC_THREADS, thread_name_prefix="commit")
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
        )
        self.limits = AssociationLimits(config.dimse)
        self.counters = ListenerCounters(on_store_answered)
        self.service = StorageService(
            self.spool, self.disk, self.batcher, head_bytes=config.index.scan_bytes
        )
        self._config = config
        self._pool = pool
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        await self.routing.start()
        self.batcher.start()
        await recover(self.spool.layout, self._pool, self.batcher)
        dimse = self._config.dimse
        try:
            self._server = await start_listener(dimse, self.limits, self.service, self.counters)
        except OSError as exc:
            raise DicomGwError(
                f"cannot listen on dimse.host {dimse.host} port {dimse.port}: "
                f"{exc.strerror}; is another DICOM service using it? set dimse.port"
            ) from None

    async def close(self) -> None:
        """Stop accepting; in-flight C-STOREs finish before the index writer stops."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await self.batcher.close()
        await self.routing.close()
        self._executor.shutdown(wait=True)
        self.spool.close()
