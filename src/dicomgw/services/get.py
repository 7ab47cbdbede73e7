"""The Query/Retrieve Service Class's GET as SCP (PS3.4 C.4.3), Patient Root and
Study Root: the identifier's unique keys name the stored instances, and each is
sent back on the same association as a C-STORE sub-operation, on a context where
the requestor took the SCP role (PS3.7 D.3.3.4) for its SOP class and stored
transfer syntax. The data set goes out exactly as stored.

A pending C-GET-RSP with the counts follows every sub-operation but the last;
the final one is Success, B000 (some failed or had a warning), A702 (all
failed), FE00 after a C-CANCEL-RQ (the rest counted as not sent), with the
Failed SOP Instance UID List when any failed (services/retrieve.py). An instance
that no context can carry without conversion fails (conversion on retrieval
waits for the sandboxed decoding pool).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator

import asyncpg

from dicomgw.association.acceptor import Peer
from dicomgw.association.negotiation import AcceptedContext
from dicomgw.config import Config
from dicomgw.dimse.commands import (
    C_GET_RQ,
    Command,
    CommandError,
    encode_c_get_rsp,
    encode_c_store_rq,
)
from dicomgw.dimse.status import PENDING
from dicomgw.ingest.dataset import ReceivedDataSet
from dicomgw.query.files import StoredInstance
from dicomgw.services.provider import Operation, Replies, Response
from dicomgw.services.retrieve import Refusal, RetrieveOperation, Tally
from dicomgw.storage.layout import stored_path
from dicomgw.ul.uids import GET_SOP_CLASSES

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024


class GetService:
    command_field = C_GET_RQ

    def __init__(self, pool: asyncpg.Pool, config: Config) -> None:
        self.pool = pool
        self.root = config.storage_root
        self.timeout_s = config.dimse.network_timeout_s

    def accepts(self, context: AcceptedContext) -> bool:
        return context.abstract_syntax in GET_SOP_CLASSES

    def begin(self, peer: Peer, context: AcceptedContext, command: Command) -> Operation:
        if not command.has_data_set:
            raise CommandError("C-GET-RQ announces no identifier")
        return _Get(self, peer, context, command.message_id or 0)

    def refuse(self, error: CommandError) -> Operation | None:
        return None


async def _dataset(fd: int, size: int) -> AsyncIterator[bytes]:
    """The stored data set (the file's last ``size`` bytes), a chunk at a time."""
    start = os.fstat(fd).st_size - size
    for offset in range(0, size, CHUNK):
        chunk = await asyncio.to_thread(os.pread, fd, min(CHUNK, size - offset), start + offset)
        if not chunk:
            raise OSError(f"the stored file ended {size - offset} bytes early")
        yield chunk


class _Get(RetrieveOperation):
    def __init__(
        self, service: GetService, peer: Peer, context: AcceptedContext, message_id: int
    ) -> None:
        super().__init__(service.pool, peer, context, message_id, encode_c_get_rsp)
        self._service = service

    async def finish(self, dataset: ReceivedDataSet | None, replies: Replies) -> Response:
        assert dataset is not None
        try:
            retrieval = self.retrieval(dataset)
            try:
                async with self.pool.acquire() as conn:
                    files = await self.files(conn, retrieval)
            except (TimeoutError, asyncpg.PostgresError, OSError) as exc:
                raise self.unavailable(exc) from None
        except Refusal as refusal:
            return refusal.response
        tally = Tally(len(files))
        for item in files:
            if self.cancelled:
                break
            tally.add(item.sop_instance_uid, await self._store(item, replies))
            if tally.counts.remaining:
                await replies.pending(self.pending(PENDING, tally.counts), None)
        return await self.final(tally, files, retrieval.level_name)

    def _context_for(self, item: StoredInstance) -> AcceptedContext | None:
        """A context the peer takes C-STOREs of this instance on, as stored."""
        for candidate in self.peer.acceptance.contexts.values():
            if (
                candidate.as_scu
                and candidate.abstract_syntax == item.sop_class_uid
                and candidate.transfer_syntax == item.transfer_syntax_uid
            ):
                return candidate
        return None

    async def _store(self, item: StoredInstance, replies: Replies) -> int | None:
        """One C-STORE sub-operation: the peer's status, None if it could not be sent."""
        context = self._context_for(item)
        if context is None:
            log.warning(
                "C-GET sub-operation not sent: no context for it as stored",
                extra={
                    "sop_class": item.sop_class_uid,
                    "transfer_syntax": item.transfer_syntax_uid,
                },
            )
            return None
        path = stored_path(self._service.root, item.file_path)
        try:
            fd = await asyncio.to_thread(os.open, path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            log.error(
                "C-GET sub-operation not sent: the stored file cannot be read",
                extra={"file": item.file_path, "error": exc.strerror or str(exc)},
            )
            return None
        message_id = replies.new_message_id()
        command = encode_c_store_rq(message_id, item.sop_class_uid, item.sop_instance_uid)
        try:
            response = await replies.request(
                context.context_id,
                message_id,
                command,
                _dataset(fd, item.dataset_size),
                self._service.timeout_s,
            )
        finally:
            os.close(fd)
        return response.status
