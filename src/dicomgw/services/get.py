"""The Query/Retrieve Service Class's GET as SCP (PS3.4 C.4.3), Patient Root and
Study Root: the identifier's unique keys name the stored instances, and each is
sent back on the same association as a C-STORE sub-operation, on a context where
the requestor took the SCP role (PS3.7 D.3.3.4) for its SOP class and stored
transfer syntax. The data set goes out exactly as stored.

A pending C-GET-RSP with the counts follows every sub-operation; the final one
is Success, B000 (some failed or had a warning), A702 (all failed), FE00 after a
C-CANCEL-RQ (the rest counted as not sent), with the Failed SOP Instance UID
List when any failed. An instance that no context can carry without conversion
fails (conversion on retrieval waits for the sandboxed decoding pool).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import AsyncIterator

import asyncpg
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from dicomgw import audit
from dicomgw._core import HEAD_ONLY_FD
from dicomgw.association.acceptor import Peer
from dicomgw.association.negotiation import AcceptedContext
from dicomgw.config import Config
from dicomgw.dimse.commands import (
    C_GET_RQ,
    Command,
    CommandError,
    SubOperations,
    encode_c_get_rsp,
    encode_c_store_rq,
)
from dicomgw.dimse.status import (
    CANCEL,
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    PENDING,
    SUB_OPERATIONS_REFUSED,
    SUB_OPERATIONS_WARNING,
    SUCCESS,
    status_category,
)
from dicomgw.ingest.dataset import ReceivedDataSet
from dicomgw.query.files import StoredInstance, files_of
from dicomgw.query.identifier import IdentifierError, parse_retrieval
from dicomgw.query.search import QueryError
from dicomgw.services.provider import Operation, Replies, Response
from dicomgw.storage.layout import stored_path
from dicomgw.ul.uids import GET_SOP_CLASSES, IMPLICIT_VR_LITTLE_ENDIAN

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
FAILED_SOP_INSTANCE_UID_LIST = 0x00080058


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


class _Get:
    fd = HEAD_ONLY_FD  # the identifier is read from the data set's head

    def __init__(
        self, service: GetService, peer: Peer, context: AcceptedContext, message_id: int
    ) -> None:
        self._service = service
        self._peer = peer
        self._context = context
        self._message_id = message_id
        self._cancelled = False

    def cancel(self) -> None:
        self._cancelled = True

    def abandon(self) -> None:
        self._cancelled = True

    def _response(
        self,
        status: int,
        counts: SubOperations | None,
        failed: list[str] | None = None,
        comment: str | None = None,
    ) -> Response:
        command = encode_c_get_rsp(
            self._message_id,
            self._context.abstract_syntax,
            status,
            counts,
            identifier=bool(failed),
            error_comment=comment,
        )
        return Response(command, status)

    def _refused(self, status: int, why: str) -> Response:
        log.warning("C-GET refused", extra={"status": f"0x{status:04X}", "error": why})
        return self._response(status, None, comment=why)

    async def finish(self, dataset: ReceivedDataSet | None, replies: Replies) -> Response:
        assert dataset is not None
        service, context = self._service, self._context
        implicit = context.transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN
        if dataset.size > len(dataset.head):
            return self._refused(DATASET_DOES_NOT_MATCH_SOP_CLASS, "identifier too large")
        try:
            retrieval = parse_retrieval(dataset.head, implicit, context.abstract_syntax)
        except IdentifierError as exc:
            return self._refused(DATASET_DOES_NOT_MATCH_SOP_CLASS, str(exc))
        except QueryError as exc:
            return self._refused(DATASET_DOES_NOT_MATCH_SOP_CLASS, str(exc))
        try:
            async with service.pool.acquire() as conn:
                files = await files_of(conn, **retrieval.keys)
        except (TimeoutError, asyncpg.PostgresError, OSError) as exc:
            log.error("C-GET: the index cannot be searched", extra={"error": str(exc)})
            return self._refused(CANNOT_UNDERSTAND, "the index cannot be searched now")
        started = time.monotonic()
        done = SubOperations(remaining=len(files))
        failed: list[str] = []
        for n, item in enumerate(files):
            if self._cancelled:
                failed_all = failed + [f.sop_instance_uid for f in files[n:]]
                return await self._end(done, failed_all, retrieval.level_name, started, CANCEL)
            status = await self._store(item, replies)
            category = status_category(status) if status is not None else "failure"
            if category == "success":
                done = SubOperations(
                    done.remaining - 1, done.completed + 1, done.failed, done.warning
                )
            elif category == "warning":
                done = SubOperations(
                    done.remaining - 1, done.completed, done.failed, done.warning + 1
                )
            else:
                failed.append(item.sop_instance_uid)
                done = SubOperations(
                    done.remaining - 1, done.completed, done.failed + 1, done.warning
                )
            if done.remaining:
                await replies.pending(
                    encode_c_get_rsp(self._message_id, context.abstract_syntax, PENDING, done),
                    None,
                )
        if failed and len(failed) == len(files):
            final = SUB_OPERATIONS_REFUSED
        elif failed or done.warning:
            final = SUB_OPERATIONS_WARNING
        else:
            final = SUCCESS
        return await self._end(done, failed, retrieval.level_name, started, final)

    def _context_for(self, item: StoredInstance) -> AcceptedContext | None:
        """A context the peer takes C-STOREs of this instance on, as stored."""
        for candidate in self._peer.acceptance.contexts.values():
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

    async def _end(
        self,
        counts: SubOperations,
        failed: list[str],
        level: str,
        started: float,
        status: int,
    ) -> Response:
        log.info(
            "C-GET answered",
            extra={
                "level": level,
                "completed": counts.completed,
                "failed": counts.failed,
                "warning": counts.warning,
                "status": f"0x{status:04X}",
                "seconds": round(time.monotonic() - started, 3),
            },
        )
        acceptance = self._peer.acceptance
        try:
            async with self._service.pool.acquire() as conn:
                await audit.record(
                    conn,
                    actor=acceptance.calling_ae_title,
                    action="dimse.get",
                    target=level,
                    detail={
                        "completed": counts.completed,
                        "failed": counts.failed,
                        "warning": counts.warning,
                        "status": f"0x{status:04X}",
                    },
                    source_ip=self._peer.host,
                    event_id=audit.INSTANCES_TRANSFERRED,
                    outcome="success" if status in (SUCCESS, CANCEL) else "failure",
                )
        except (TimeoutError, asyncpg.PostgresError, OSError) as exc:
            log.error("C-GET: not audited", extra={"error": str(exc)})
        response = self._response(status, counts, failed)
        if failed:
            # The Failed SOP Instance UID List follows as the response's data set.
            response = dataclasses.replace(
                response, dataset=_failed_list(failed, self._context.transfer_syntax)
            )
        return response


def _failed_list(uids: list[str], transfer_syntax: str) -> bytes:
    ds = Dataset()
    ds.add_new(FAILED_SOP_INSTANCE_UID_LIST, "UI", uids)
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN
    write_dataset(buffer, ds)
    return buffer.getvalue()
