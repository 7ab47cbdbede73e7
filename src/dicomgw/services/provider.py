"""The DIMSE service provider (PS3.7 7-9): one :class:`AssociationServices` per
association dispatches each request by its command field to the service that
serves it, feeds it the data set, and answers in request order.

Each service is a small class with :meth:`Service.begin` (a request arrived)
returning an :class:`Operation` (its data set goes to ``fd``; ``finish`` makes
the response). Responses go out in the order the requests came: a requestor
that does not wait for a response before its next request (PS3.7 D.3.3.3
allows one outstanding operation by default) is served anyway, in order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from dicomgw.association.acceptor import Link, MessageHandler, Peer
from dicomgw.association.negotiation import AcceptedContext
from dicomgw.dimse.commands import Command, CommandError, decode_command
from dicomgw.ingest.dataset import ReceivedDataSet
from dicomgw.ul.pdu import ABORT_REASON_NOT_SPECIFIED, ABORT_UNRECOGNIZED_PDU_PARAMETER

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Response:
    command: bytes
    """The response command set (PS3.7 9.3, 10.3)."""
    status: int


class Operation(Protocol):
    """One request in progress."""

    fd: int
    """Where its data set goes (-1: discarded, or none is expected)."""

    async def finish(self, dataset: ReceivedDataSet | None) -> Response:
        """Carry it out; the response to send."""
        ...

    def abandon(self) -> None:
        """The association ended before the request was complete."""
        ...


class Service(Protocol):
    """A service class's provider side for one request command field."""

    command_field: int
    """The request it serves (PS3.7 E.1), e.g. C-STORE-RQ 0x0001."""

    def accepts(self, context: AcceptedContext) -> bool:
        """Whether a request on this presentation context is its business."""
        ...

    def begin(self, peer: Peer, context: AcceptedContext, command: Command) -> Operation: ...

    def refuse(self, error: CommandError) -> Operation | None:
        """A request of its kind whose command set is malformed but addressable
        (its message ID was read): an operation answering ``error.status``, or
        None to abort the association instead."""
        ...


AnswerObserver = Callable[[int, float, int], None]
"""Told of each response sent: (request command field, seconds from the request's
last byte to its response, status)."""


def _unobserved(command_field: int, seconds: float, status: int) -> None:
    pass


class ServiceProvider:
    """The services a listener offers (the acceptor's ``Messages``)."""

    def __init__(
        self,
        services: Iterable[Service],
        *,
        head_bytes: int,
        fsync: bool,
        on_answered: AnswerObserver | None = None,
    ) -> None:
        self.services = {service.command_field: service for service in services}
        self.head_bytes = head_bytes
        self.fsync = fsync
        self.on_answered = on_answered or _unobserved

    def attach(self, peer: Peer, link: Link) -> MessageHandler:
        return AssociationServices(self, peer, link)


class AssociationServices:
    """One association's requests: dispatched, carried out, answered in order."""

    def __init__(self, provider: ServiceProvider, peer: Peer, link: Link) -> None:
        self._provider = provider
        self._peer = peer
        self._link = link
        # The request whose data set is arriving, and the last one being carried
        # out (each completion waits for the one before it to answer).
        self._receiving: tuple[Operation, int] | None = None
        self._tail: asyncio.Task[None] | None = None
        self.in_flight = 0

    def command(self, context_id: int, data: bytes) -> None:
        try:
            command = decode_command(data)
        except CommandError as exc:
            service = self._provider.services.get(exc.command_field or -1)
            refusal = service.refuse(exc) if service is not None else None
            if refusal is None or exc.message_id is None:
                raise  # no response can be addressed: A-ABORT
            log.warning("malformed request refused", extra={"error": exc.problem})
            self._start(refusal, exc.command_field or 0, context_id, True)
            return
        context = self._peer.acceptance.contexts[context_id]
        service = self._provider.services.get(command.command_field)
        if service is None or not service.accepts(context):
            log.warning(
                "unsupported DIMSE command",
                extra={
                    "command_field": command.command_field,
                    "abstract_syntax": context.abstract_syntax,
                },
            )
            self._link.abort(ABORT_UNRECOGNIZED_PDU_PARAMETER)
            return
        operation = service.begin(self._peer, context, command)
        self._start(operation, command.command_field, context_id, command.has_data_set)

    def _start(
        self, operation: Operation, command_field: int, context_id: int, has_data_set: bool
    ) -> None:
        if has_data_set:
            self._receiving = (operation, command_field)
            self._link.expect_dataset(context_id, operation.fd)
        else:
            self._run(operation, command_field, context_id, None)

    def dataset(self, context_id: int, crc32c: int, size: int, head: bytes, errno: int) -> None:
        assert self._receiving is not None
        (operation, command_field), self._receiving = self._receiving, None
        self._run(operation, command_field, context_id, ReceivedDataSet(crc32c, size, head, errno))

    def _run(
        self,
        operation: Operation,
        command_field: int,
        context_id: int,
        dataset: ReceivedDataSet | None,
    ) -> None:
        self.in_flight += 1
        self._tail = asyncio.get_running_loop().create_task(
            self._complete(operation, command_field, context_id, dataset, self._tail)
        )

    async def _complete(
        self,
        operation: Operation,
        command_field: int,
        context_id: int,
        dataset: ReceivedDataSet | None,
        previous: asyncio.Task[None] | None,
    ) -> None:
        """Carry out one request off the receive path and answer it."""
        started = time.monotonic()
        try:
            response = await operation.finish(dataset)
            if previous is not None:
                await previous  # responses go out in request order
        except Exception:
            log.exception("a DIMSE operation failed unexpectedly: aborting the association")
            self.in_flight -= 1
            self._link.abort(ABORT_REASON_NOT_SPECIFIED)
            return
        self.in_flight -= 1
        self._link.send_command(context_id, response.command)
        self._provider.on_answered(command_field, time.monotonic() - started, response.status)
        if not self.in_flight:
            self._link.settled()

    def closed(self) -> None:
        if self._receiving is not None:
            operation, _ = self._receiving
            self._receiving = None
            operation.abandon()
