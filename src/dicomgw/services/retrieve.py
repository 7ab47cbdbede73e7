"""What C-GET and C-MOVE as SCP share (PS3.4 C.4.2, C.4.3): reading the
identifier's unique keys, finding the stored files, counting sub-operations,
the final status and its Failed SOP Instance UID List, the log line and the
audit record. Each service sends its sub-operations its own way."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

import asyncpg
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from dicomgw import audit
from dicomgw._core import HEAD_ONLY_FD
from dicomgw.association.acceptor import Peer
from dicomgw.association.negotiation import AcceptedContext
from dicomgw.dimse.commands import SubOperations
from dicomgw.dimse.status import (
    CANCEL,
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    SUB_OPERATIONS_REFUSED,
    SUB_OPERATIONS_WARNING,
    SUCCESS,
    status_category,
)
from dicomgw.ingest.dataset import ReceivedDataSet
from dicomgw.query.files import StoredInstance, files_of
from dicomgw.query.identifier import IdentifierError, Retrieval, parse_retrieval
from dicomgw.query.search import QueryError
from dicomgw.services.provider import Response
from dicomgw.ul.uids import IMPLICIT_VR_LITTLE_ENDIAN

log = logging.getLogger(__name__)

FAILED_SOP_INSTANCE_UID_LIST = 0x00080058

ResponseEncoder = Callable[..., bytes]
"""encode_c_get_rsp or encode_c_move_rsp."""


class Refusal(Exception):
    """The request is answered with ``response`` before any sub-operation."""

    def __init__(self, response: Response) -> None:
        self.response = response


class Tally:
    """Sub-operation counts as outcomes arrive."""

    def __init__(self, total: int) -> None:
        self.counts = SubOperations(remaining=total)
        self.failed: list[str] = []

    def add(self, sop_instance_uid: str, status: int | None) -> None:
        """One sub-operation done: its C-STORE status (None: it failed unsent)."""
        category = status_category(status) if status is not None else "failure"
        if category not in ("success", "warning"):
            self.failed.append(sop_instance_uid)
        self.counts = dataclasses.replace(
            self.counts,
            remaining=self.counts.remaining - 1,
            completed=self.counts.completed + (category == "success"),
            warning=self.counts.warning + (category == "warning"),
            failed=len(self.failed),
        )


class RetrieveOperation:
    """One C-GET or C-MOVE: the parts that do not depend on where the instances go."""

    fd = HEAD_ONLY_FD  # the identifier is read from the data set's head
    name = "C-GET"
    action = "dimse.get"

    def __init__(
        self,
        pool: asyncpg.Pool,
        peer: Peer,
        context: AcceptedContext,
        message_id: int,
        encode: ResponseEncoder,
    ) -> None:
        self.pool = pool
        self.peer = peer
        self.context = context
        self.message_id = message_id
        self._encode = encode
        self.cancelled = False
        self.started = time.monotonic()

    def cancel(self) -> None:
        self.cancelled = True

    def abandon(self) -> None:
        self.cancelled = True

    def pending(self, status: int, counts: SubOperations) -> bytes:
        return self._encode(self.message_id, self.context.abstract_syntax, status, counts)

    def response(
        self,
        status: int,
        counts: SubOperations | None,
        failed: list[str] | None = None,
        comment: str | None = None,
    ) -> Response:
        command = self._encode(
            self.message_id,
            self.context.abstract_syntax,
            status,
            counts,
            identifier=bool(failed),
            error_comment=comment,
        )
        dataset = _failed_list(failed, self.context.transfer_syntax) if failed else None
        return Response(command, status, dataset)

    def refused(self, status: int, why: str) -> Refusal:
        log.warning(f"{self.name} refused", extra={"status": f"0x{status:04X}", "error": why})
        return Refusal(self.response(status, None, comment=why))

    def retrieval(self, dataset: ReceivedDataSet) -> Retrieval:
        """The identifier's unique keys; :class:`Refusal` (A900) if it has none."""
        if dataset.size > len(dataset.head):
            raise self.refused(DATASET_DOES_NOT_MATCH_SOP_CLASS, "identifier too large")
        implicit = self.context.transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN
        try:
            return parse_retrieval(dataset.head, implicit, self.context.abstract_syntax)
        except (IdentifierError, QueryError) as exc:
            raise self.refused(DATASET_DOES_NOT_MATCH_SOP_CLASS, str(exc)) from None

    def unavailable(self, exc: Exception) -> Refusal:
        log.error(f"{self.name}: the index cannot be searched", extra={"error": str(exc)})
        return self.refused(CANNOT_UNDERSTAND, "the index cannot be searched now")

    async def files(self, conn: asyncpg.Connection, retrieval: Retrieval) -> list[StoredInstance]:
        return await files_of(conn, **retrieval.keys)

    async def final(
        self,
        tally: Tally,
        files: list[StoredInstance],
        level: str,
        detail: dict[str, object] | None = None,
    ) -> Response:
        """The final response, logged and audited (110104)."""
        counts, failed = tally.counts, list(tally.failed)
        if self.cancelled and counts.remaining:
            failed += [f.sop_instance_uid for f in files[len(files) - counts.remaining :]]
            status = CANCEL
        elif failed and len(failed) == len(files):
            status = SUB_OPERATIONS_REFUSED
        elif failed or counts.warning:
            status = SUB_OPERATIONS_WARNING
        else:
            status = SUCCESS
        summary = {
            **(detail or {}),
            "completed": counts.completed,
            "failed": counts.failed,
            "warning": counts.warning,
            "status": f"0x{status:04X}",
        }
        log.info(
            f"{self.name} answered",
            extra={
                "level": level,
                **summary,
                "seconds": round(time.monotonic() - self.started, 3),
            },
        )
        acceptance = self.peer.acceptance
        try:
            async with self.pool.acquire() as conn:
                await audit.record(
                    conn,
                    actor=acceptance.calling_ae_title,
                    action=self.action,
                    target=level,
                    detail=summary,
                    source_ip=self.peer.host,
                    event_id=audit.INSTANCES_TRANSFERRED,
                    outcome="success" if status in (SUCCESS, CANCEL) else "failure",
                )
        except (TimeoutError, asyncpg.PostgresError, OSError) as exc:
            log.error(f"{self.name}: not audited", extra={"error": str(exc)})
        return self.response(status, counts, failed)


def _failed_list(uids: list[str], transfer_syntax: str) -> bytes:
    """The response's identifier: (0008,0058) Failed SOP Instance UID List."""
    ds = Dataset()
    ds.add_new(FAILED_SOP_INSTANCE_UID_LIST, "UI", uids)
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN
    write_dataset(buffer, ds)
    return buffer.getvalue()
