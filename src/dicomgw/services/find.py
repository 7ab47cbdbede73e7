"""The Query/Retrieve Service Class's FIND as SCP (PS3.4 C.4.1), Patient Root and
Study Root: the identifier becomes a query of the index (the one matching module
QIDO-RS uses), the matches stream out as pending responses from a database
cursor (the first before the search has ended), and the final response says how
it ended: Success, Cancel (FE00) after a C-CANCEL-RQ, Out of Resources (A700)
past ``dimse.max_query_matches``, A900/C000 for an identifier it cannot answer.
"""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg

from dicomgw import audit
from dicomgw._core import HEAD_ONLY_FD
from dicomgw.association.acceptor import Peer
from dicomgw.association.negotiation import AcceptedContext
from dicomgw.config import DimseConfig
from dicomgw.dimse.commands import C_FIND_RQ, Command, CommandError, encode_c_find_rsp
from dicomgw.dimse.status import (
    CANCEL,
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES,
    PENDING,
    PENDING_WARNING,
    SUCCESS,
)
from dicomgw.ingest.dataset import ReceivedDataSet
from dicomgw.query.attributes import Attribute
from dicomgw.query.identifier import IdentifierError, encode_match, parse_identifier
from dicomgw.query.search import QueryError, stream
from dicomgw.services.provider import Operation, Replies, Response
from dicomgw.ul.uids import FIND_SOP_CLASSES, IMPLICIT_VR_LITTLE_ENDIAN

log = logging.getLogger(__name__)


class FindService:
    command_field = C_FIND_RQ

    def __init__(self, pool: asyncpg.Pool, config: DimseConfig) -> None:
        self.pool = pool
        self.ae_title = config.ae_title.strip()
        self.max_matches = config.max_query_matches
        self.turns = asyncio.Semaphore(config.max_concurrent_queries)

    def accepts(self, context: AcceptedContext) -> bool:
        return context.abstract_syntax in FIND_SOP_CLASSES

    def begin(self, peer: Peer, context: AcceptedContext, command: Command) -> Operation:
        if not command.has_data_set:
            raise CommandError("C-FIND-RQ announces no identifier")
        return _Find(self, peer, context, command.message_id or 0)

    def refuse(self, error: CommandError) -> Operation | None:
        return None  # without a valid command set there is no SOP class to answer with


class _Find:
    fd = HEAD_ONLY_FD  # the identifier is read from the data set's head

    def __init__(
        self, service: FindService, peer: Peer, context: AcceptedContext, message_id: int
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

    def _final(self, status: int, comment: str | None = None) -> Response:
        command = encode_c_find_rsp(
            self._message_id, self._context.abstract_syntax, status, error_comment=comment
        )
        return Response(command, status)

    async def finish(self, dataset: ReceivedDataSet | None, replies: Replies) -> Response:
        assert dataset is not None
        service, context = self._service, self._context
        implicit = context.transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN
        if dataset.size > len(dataset.head):
            return self._refused(
                DATASET_DOES_NOT_MATCH_SOP_CLASS,
                f"identifier of {dataset.size} bytes; at most {len(dataset.head)} are read",
            )
        try:
            find = parse_identifier(
                dataset.head, implicit, context.abstract_syntax, service.max_matches
            )
        except IdentifierError as exc:
            return self._refused(DATASET_DOES_NOT_MATCH_SOP_CLASS, str(exc))
        except QueryError as exc:
            status = (
                DATASET_DOES_NOT_MATCH_SOP_CLASS
                if exc.key == "QueryRetrieveLevel"
                else CANNOT_UNDERSTAND
            )
            return self._refused(status, str(exc))
        if find.not_matched:
            log.info(
                "C-FIND keys not matched on (answered empty)",
                extra={"keys": find.not_matched[:20]},
            )
        pending = PENDING_WARNING if find.not_matched else PENDING
        started = time.monotonic()
        matches = 0
        status, comment = SUCCESS, None
        try:
            async with service.turns, service.pool.acquire() as conn:
                async with conn.transaction(readonly=True):
                    async for row in stream(conn, find.query):
                        if self._cancelled:
                            status = CANCEL
                            break
                        if matches == service.max_matches:
                            status = OUT_OF_RESOURCES
                            comment = f"more than {matches} matches: narrow the query"
                            break
                        matches += 1
                        await replies.pending(
                            encode_c_find_rsp(
                                self._message_id,
                                context.abstract_syntax,
                                pending,
                                identifier=True,
                            ),
                            encode_match(find, row, implicit, service.ae_title),
                        )
                await self._audit(conn, find.level_name, find.query.filters, matches, status)
        except (TimeoutError, asyncpg.PostgresError, OSError) as exc:
            log.error("C-FIND: the index cannot be searched", extra={"error": str(exc)})
            return self._final(CANNOT_UNDERSTAND, "the index cannot be searched now")
        log.info(
            "C-FIND answered",
            extra={
                "level": find.level_name,
                "matches": matches,
                "status": f"0x{status:04X}",
                "seconds": round(time.monotonic() - started, 3),
            },
        )
        return self._final(status, comment)

    def _refused(self, status: int, why: str) -> Response:
        log.warning("C-FIND refused", extra={"status": f"0x{status:04X}", "error": why})
        return self._final(status, why)

    async def _audit(
        self,
        conn: asyncpg.Connection,
        level: str,
        filters: list[tuple[Attribute, str]],
        matches: int,
        status: int,
    ) -> None:
        acceptance = self._peer.acceptance
        await audit.record(
            conn,
            actor=acceptance.calling_ae_title,
            action="dimse.find",
            target=level,
            detail={
                "keys": {a.keyword: v for a, v in filters},
                "matches": matches,
                "status": f"0x{status:04X}",
                "called_ae": acceptance.called_ae_title,
            },
            source_ip=self._peer.host,
            event_id=audit.QUERY,
            outcome="success" if status in (SUCCESS, CANCEL) else "failure",
        )
