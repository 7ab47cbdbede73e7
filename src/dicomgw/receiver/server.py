"""The DIMSE receiver role: the listeners, wired to the DIMSE services over this
process's ingest stack."""

from __future__ import annotations

import asyncio
import logging
import ssl

import asyncpg

from dicomgw.association.acceptor import AssociationLimits, ListenerCounters, start_listener
from dicomgw.association.errors import TLSConfigError
from dicomgw.association.tls import server_context
from dicomgw.config import Config
from dicomgw.errors import DicomGwError
from dicomgw.index.batcher import BatchObserver
from dicomgw.ingest.stack import IngestStack
from dicomgw.receiver.refusals import RefusalAuditor
from dicomgw.services.commitment import CommitmentService
from dicomgw.services.echo import VerificationService
from dicomgw.services.find import FindService
from dicomgw.services.get import GetService
from dicomgw.services.move import MoveService
from dicomgw.services.provider import AnswerObserver, ServiceProvider
from dicomgw.services.store import StorageService

log = logging.getLogger(__name__)


class Receiver:
    def __init__(
        self,
        config: Config,
        pool: asyncpg.Pool,
        *,
        on_answered: AnswerObserver | None = None,
        on_index_batch: BatchObserver | None = None,
    ) -> None:
        self.stack = IngestStack(config, pool, on_index_batch=on_index_batch)
        # Read by the metrics collector and the tests.
        self.spool, self.disk, self.batcher = self.stack.spool, self.stack.disk, self.stack.batcher
        self.routing, self.unconfirmed = self.stack.routing, self.stack.unconfirmed
        self.ingest = self.stack.ingest
        self.limits = AssociationLimits(config.dimse)
        self.refusals = RefusalAuditor(pool)
        self.counters = ListenerCounters(self.refusals)
        self.services = ServiceProvider(
            (
                VerificationService(),
                StorageService(self.ingest),
                FindService(pool, config.dimse),
                GetService(pool, config),
                MoveService(pool, config),
                CommitmentService(pool, config),
            ),
            head_bytes=config.index.scan_bytes,
            fsync=self.spool.fsync,
            on_answered=on_answered,
            max_in_flight=config.dimse.max_operations_in_flight,
        )
        self._config = config
        self._pool = pool
        self._servers: list[asyncio.Server] = []
        self._tls: ssl.SSLContext | None = None

    async def start(self) -> None:
        await self.stack.start(recover_storage=True)
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
        await self.stack.close()
        await self.refusals.close()
