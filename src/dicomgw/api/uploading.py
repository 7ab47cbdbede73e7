"""This API worker's part of the upload gateway: the upload store, the intake of
completed uploads into this worker's ingest stack, and a sweep (every worker
runs one; each row is taken by one) that removes expired uploads and takes over
batches whose worker stopped mid-way."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
import falcon.asgi

from dicomgw import audit
from dicomgw.api.auditing import audit_request
from dicomgw.api.ingesting import Ingesting
from dicomgw.api.middleware import PoolMiddleware
from dicomgw.config import Config
from dicomgw.storage.layout import StorageLayout
from dicomgw.uploads import batches
from dicomgw.uploads.archive import ArchiveLimits
from dicomgw.uploads.completion import Completion, complete, describe
from dicomgw.uploads.intake import Intake
from dicomgw.uploads.store import UploadStore

log = logging.getLogger(__name__)

SWEEP_EVERY_S = 60.0


class Uploading:
    def __init__(self, config: Config, pools: PoolMiddleware, ingesting: Ingesting) -> None:
        uploads = config.uploads
        self.config = uploads
        self.store = UploadStore(
            StorageLayout(config.storage_root),
            chunk_size=uploads.chunk_size,
            expire_s=uploads.expire_s,
        )
        self.limits = ArchiveLimits(
            max_entries=uploads.max_archive_entries,
            max_total_bytes=uploads.max_archive_bytes,
            max_ratio=uploads.max_archive_ratio,
            max_entry_bytes=uploads.max_upload_bytes,
        )
        self.fsync = config.storage.fsync
        self._pools = pools
        self.intake = Intake(lambda: pools.pool, self.store, ingesting.ingest, self.limits)
        self._sweeper: asyncio.Task[None] | None = None

    def start(self) -> None:
        """The sweep (at the worker's start; idempotent)."""
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def complete(
        self,
        conn: asyncpg.Connection,
        req: falcon.asgi.Request,
        batch: batches.Batch,
        *,
        force: bool,
    ) -> Completion:
        """Check the batch (uploads/completion.py) and, if it passes, take it in."""
        done = await complete(
            conn,
            self.store,
            batch,
            owner=self.intake.owner,
            force=force,
            window_days=self.config.duplicate_window_days,
            limits=self.limits,
        )
        if done.started:
            await audit_request(
                conn,
                req,
                "upload.complete",
                f"upload {batch.id}",
                {"force": force},
                event_id=audit.INSTANCES_TRANSFERRED,
            )
            self.intake.start(batch.id)
        elif done.duplicates and batch.auto_complete:
            # NOTE: a file sent with tus alone has no request to answer 409 to: the
            # upload waits (its state says why) for a complete with force=true.
            await batches.note(conn, batch.id, f"duplicate of {describe(done.duplicates)}")
        return done

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.intake.close()

    async def _sweep_forever(self) -> None:
        while True:
            try:
                async with self._pools.pool.acquire() as conn:
                    await self.sweep(conn)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("upload sweep failed", extra={"error": str(exc)})
            await asyncio.sleep(SWEEP_EVERY_S)

    async def sweep(self, conn: asyncpg.Connection) -> None:
        for upload_id in await self.store.expired(conn):
            self.store.remove_file(upload_id)
            log.info("upload expired: its bytes are removed", extra={"upload_id": upload_id})
        for batch_id in await batches.expired(conn):
            for upload in await self.store.of_batch(conn, batch_id):
                self.store.remove_file(upload.id)
            await self.store.delete(conn, [u.id for u in await self.store.of_batch(conn, batch_id)])
            log.info("upload expired", extra={"upload_id": batch_id})
        for batch_id in await batches.claim_stalled(conn, self.intake.owner):
            log.warning("taking over an upload's intake", extra={"upload_id": batch_id})
            self.intake.start(batch_id)
