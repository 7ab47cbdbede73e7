"""The DIMSE service provider (PS3.7 7-9): one :class:`AssociationServices` per
association dispatches each request by its command field to the service that
serves it, feeds it the data set, and answers in request order.

Each service is a small class with :meth:`Service.begin` (a request arrived)
returning an :class:`Operation` (its data set goes to ``fd``; ``finish`` makes
the final response, after any pending ones it sent through :class:`Replies`).
Responses go out in the order the requests came: a requestor that does not wait
for a response before its next request (PS3.7 D.3.3.3 allows one outstanding
operation by default) is served anyway, in order. A C-CANCEL-RQ (PS3.7 9.3.2.3)
is no service of its own: it reaches the running operation it names.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from dicomgw.association.acceptor import Link, MessageHandler, Peer
from dicomgw.association.negotiation import AcceptedContext
from dicomgw.dimse.commands import (
    C_CANCEL_RQ,
    RESPONSE_BIT,
    Command,
    CommandError,
    decode_command,
)
from dicomgw.ingest.dataset import ReceivedDataSet
from dicomgw.ul.pdu import (
    ABORT_REASON_NOT_SPECIFIED,
    ABORT_UNEXPECTED_PDU_PARAMETER,
    ABORT_UNRECOGNIZED_PDU_PARAMETER,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Response:
    command: bytes
    """The response command set (PS3.7 9.3, 10.3)."""
    status: int
    dataset: bytes | None = None
    """Its data set, if the command announces one (a C-GET's failed UID list)."""
    after: Callable[[Replies], Awaitable[None]] | None = None
    """What the operation does once its response is out (storage commitment's
    N-EVENT-REPORT); the association counts it as in progress until it is done."""


class Replies(Protocol):
    """How an operation sends pending responses before its final one."""

    async def pending(self, command: bytes, dataset: bytes | None) -> None:
        """Send one pending response (and its data set, e.g. a C-FIND match);
        returns once the peer has taken it, so a long answer holds no memory."""
        ...

    def new_message_id(self) -> int:
        """A Message ID for a request of dicom-gw's own on this association."""
        ...

    async def request(
        self,
        context_id: int,
        message_id: int,
        command: bytes,
        dataset: AsyncIterator[bytes],
        timeout_s: float,
    ) -> Command:
        """Send a request of dicom-gw's own on this association (a C-GET's C-STORE
        sub-operation, PS3.4 C.4.3.3) with its data set, a piece at a time, and
        return the peer's response. ConnectionError when the association ends
        first, TimeoutError when no response comes in ``timeout_s``."""
        ...


class Operation(Protocol):
    """One request in progress."""

    fd: int
    """Where its data set goes (-1: discarded, or none is expected)."""

    async def finish(self, dataset: ReceivedDataSet | None, replies: Replies) -> Response:
        """Carry it out; the final response to send."""
        ...

    def cancel(self) -> None:
        """A C-CANCEL-RQ for it arrived, or the association ended while it ran:
        stop at the next response and answer Cancel (PS3.4 C.4.1.3.1)."""
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
        max_in_flight: int = 16,
    ) -> None:
        self.services = {service.command_field: service for service in services}
        self.head_bytes = head_bytes
        self.fsync = fsync
        self.max_in_flight = max_in_flight
        """Requests one association may have unanswered before it is no longer read."""
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
        self._running: dict[int, Operation] = {}
        """Operations under way by message ID, for C-CANCEL."""
        self._awaiting: dict[int, asyncio.Future[Command]] = {}
        """Requests of dicom-gw's own (C-GET sub-operations) by message ID."""
        self._last_message_id = 0
        self._paused = False
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
        if command.command_field == C_CANCEL_RQ:
            self._cancel(command.message_id_being_responded_to or 0)
            return
        if command.command_field & RESPONSE_BIT:
            self._response(command)
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
        self._running[command.message_id or 0] = operation
        self._start(operation, command.command_field, context_id, command.has_data_set)

    def _cancel(self, message_id: int) -> None:
        operation = self._running.get(message_id)
        if operation is None:
            # NOTE: not an error (PS3.7 9.3.2.3): it may have just finished.
            log.info("C-CANCEL-RQ for no running operation", extra={"message_id": message_id})
            return
        log.info("C-CANCEL-RQ", extra={"message_id": message_id})
        operation.cancel()

    def _response(self, command: Command) -> None:
        waiting = self._awaiting.pop(command.message_id_being_responded_to or 0, None)
        if waiting is None or command.has_data_set:
            log.warning(
                "a response to no request of ours: aborting",
                extra={
                    "command_field": command.command_field,
                    "message_id": command.message_id_being_responded_to,
                },
            )
            self._link.abort(ABORT_UNEXPECTED_PDU_PARAMETER)
            return
        if not waiting.done():
            waiting.set_result(command)

    def new_message_id(self) -> int:
        self._last_message_id = self._last_message_id % 0xFFFF + 1
        return self._last_message_id

    def await_response(self, message_id: int) -> asyncio.Future[Command]:
        waiting = asyncio.get_running_loop().create_future()
        self._awaiting[message_id] = waiting
        return waiting

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
        if self.in_flight >= self._provider.max_in_flight and not self._paused:
            # A requestor past the operations window it negotiated (PS3.7 D.3.3.3)
            # waits on TCP until an answer goes out, instead of queueing work here.
            self._paused = True
            self._link.pause_reading()
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
        replies = _Replies(self, self._link, context_id, previous)
        try:
            response = await operation.finish(dataset, replies)
            await replies.in_turn()  # responses go out in request order
        except Exception:
            log.exception("a DIMSE operation failed unexpectedly: aborting the association")
            self._answered()
            self._forget(operation)
            self._link.abort(ABORT_REASON_NOT_SPECIFIED)
            return
        self._forget(operation)
        self._link.send_command(context_id, response.command)
        if response.dataset is not None:
            self._link.send_dataset(context_id, response.dataset)
        self._provider.on_answered(command_field, time.monotonic() - started, response.status)
        if response.after is not None:
            try:
                await response.after(replies)
            except Exception:
                log.exception("what follows a DIMSE response failed")
        self._answered()
        if not self.in_flight:
            self._link.settled()

    def _answered(self) -> None:
        self.in_flight -= 1
        if self._paused and self.in_flight < self._provider.max_in_flight:
            self._paused = False
            self._link.resume_reading()

    def _forget(self, operation: Operation) -> None:
        for message_id, running in list(self._running.items()):
            if running is operation:
                del self._running[message_id]

    def closed(self) -> None:
        if self._receiving is not None:
            operation, _ = self._receiving
            self._receiving = None
            self._forget(operation)
            operation.abandon()
        for operation in self._running.values():
            operation.cancel()
        self._running.clear()
        for waiting in self._awaiting.values():
            if not waiting.done():
                waiting.set_exception(ConnectionError("the association ended"))
        self._awaiting.clear()


class _Replies:
    """One operation's way to its peer, behind the operations before it."""

    def __init__(
        self,
        services: AssociationServices,
        link: Link,
        context_id: int,
        previous: asyncio.Task[None] | None,
    ) -> None:
        self._services = services
        self._link = link
        self._context_id = context_id
        self._previous = previous

    async def in_turn(self) -> None:
        """Return once every earlier operation has answered."""
        if self._previous is not None:
            await self._previous
            self._previous = None

    async def pending(self, command: bytes, dataset: bytes | None) -> None:
        await self.in_turn()
        self._link.send_command(self._context_id, command)
        if dataset is not None:
            self._link.send_dataset(self._context_id, dataset)
        await self._link.writable()

    def new_message_id(self) -> int:
        return self._services.new_message_id()

    async def request(
        self,
        context_id: int,
        message_id: int,
        command: bytes,
        dataset: AsyncIterator[bytes],
        timeout_s: float,
    ) -> Command:
        await self.in_turn()
        if not self._link.is_up:
            raise ConnectionError("the association ended")
        answer = self._services.await_response(message_id)
        self._link.send_command(context_id, command)
        piece = await anext(dataset, None)
        while piece is not None:
            following = await anext(dataset, None)
            self._link.send_dataset(context_id, piece, last=following is None)
            await self._link.writable()
            if not self._link.is_up:
                raise ConnectionError("the association ended")
            piece = following
        return await asyncio.wait_for(answer, timeout_s)
