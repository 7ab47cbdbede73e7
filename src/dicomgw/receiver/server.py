"""The DIMSE receiver role: spool, disk guard, index writer and the listener, wired."""

from __future__ import annotations

import asyncio
import logging
import ssl
from concurrent.futures import ThreadPoolExecutor

import asyncpg

from dicomgw.association.acceptor import AssociationLimits, ListenerCounters, start_listener
from dicomgw.association.errors import TLSConfigError
from dicomgw.association.tls import server_context
from dicomgw.config import Config
from dicomgw.errors import DicomGwError
from dicomgw.forward.rules import RoutingTable
from dicomgw.index.batcher import BatchObserver, IndexBatcher
from dicomgw.ingest.service import Ingest
from dicomgw.receiver.recovery import Unconfirmed, recover
from dicomgw.receiver.refusals import RefusalAuditor
from dicomgw.services.echo import VerificationService
from dicomgw.services.provider import AnswerObserver, ServiceProvider
from dicomgw.services.store import StorageService
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
        self,
        config: Config,
        pool: asyncpg.Pool,
        *,
        on_answered: AnswerObserver | None = None,
        on_index_batch: BatchObserver | None = None,
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
            on_batch=on_index_batch,
        )
        self.limits = AssociationLimits(config.dimse)
        self.refusals = RefusalAuditor(pool)
        self.counters = ListenerCounters(self.refusals)
        self.unconfirmed = Unconfirmed(layout, pool, self.batcher)
        self.ingest = Ingest(
            self.spool,
            self.disk,
            self.batcher,
            head_bytes=config.index.scan_bytes,
            on_unconfirmed=self.unconfirmed.add,
        )
        self.services = ServiceProvider(
            (VerificationService(), StorageService(self.ingest)),
            head_bytes=config.index.scan_bytes,
            fsync=self.spool.fsync,
            on_answered=on_answered,
        )
        self._config = config
        self._pool = pool
        self._servers: list[asyncio.Server] = []
        self._tls: ssl.SSLContext | None = None

    async def start(self) -> None:
        await self.routing.start()
        self.batcher.start()
        await recover(self.spool.layout, self._pool, self.batcher)
        await asyncio.get_running_loop().run_in_executor(self._executor, self.spool.prepare_days)
        dimse = self._config.dimse
        self._tls = self._tls_context()
        self._servers.append(await self._listen("port", dimse.port, None))
        if self._tls is not None and dimse.tls_port is not None:
            self._servers.append(await self._listen("tls_port", dimse.tls_port, self._tls))

    def reload_tls(self) -> None:
        """SIGHUP (``dicom-gw tls install``): new connections get the certificate
        now in the files; a bad one is logged and the current one kept."""
        if self._tls is None:
            return
        try:
            fresh = self._tls_context()
        except DicomGwError as exc:
            log.error("DICOM TLS certificate not reloaded", extra={"error": str(exc)})
            return
        if fresh is not None:
            self._tls.load_cert_chain(*self._tls_files())
            log.info("DICOM TLS certificate reloaded")

    def _tls_context(self) -> ssl.SSLContext | None:
        """Read before any port opens: a bad certificate stops the start."""
        dimse = self._config.dimse
        if dimse.tls_port is None:
            return None
        cert_file, key_file = self._tls_files()
        try:
            return server_context(
                "dimse",
                cert_file=cert_file,
                key_file=key_file,
                client_ca_file=dimse.tls_client_ca_file,
            )
        except TLSConfigError as exc:
            raise DicomGwError(f"DICOM TLS listener: {exc}") from None

    def _tls_files(self) -> tuple[str, str]:
        dimse, tls_dir = self._config.dimse, self._config.tls_dir
        return (
            dimse.tls_cert_file or str(tls_dir / "https.crt"),
            dimse.tls_key_file or str(tls_dir / "https.key"),
        )

    async def _listen(self, key: str, port: int, tls: ssl.SSLContext | None) -> asyncio.Server:
        dimse = self._config.dimse
        try:
            return await start_listener(
                dimse, self.limits, self.services, self.counters, port=port, tls=tls
            )
        except OSError as exc:
            raise DicomGwError(
                f"cannot listen on dimse.host {dimse.host} port {port}: "
                f"{exc.strerror}; is another DICOM service using it? set dimse.{key}"
            ) from None

    async def close(self) -> None:
        """Stop accepting; in-flight C-STOREs finish before the index writer stops."""
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()
        await self.unconfirmed.close()
        await self.batcher.close()
        await self.refusals.close()
        await self.routing.close()
        self._executor.shutdown(wait=True)
        self.spool.close()
