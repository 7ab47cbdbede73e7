"""The Query/Retrieve Service Class's MOVE as SCP (PS3.4 C.4.2), Patient Root and
Study Root: the identifier's unique keys name the stored instances, and each is
sent to the move destination, an enabled DIMSE destination whose AE title is the
request's Move Destination, as a C-STORE sub-operation on an association of its
own, with the forwarder's sender (send/dimse.py: the same bytes, the same
conversion rules, the same checksum check) and the Move Originator named.

A pending C-MOVE-RSP with the counts follows sub-operations as they complete, at
most one a second; the final one is as C-GET's (services/retrieve.py), or A801
for an unknown or disabled destination.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from dicomgw.association.acceptor import Peer
from dicomgw.association.negotiation import AcceptedContext
from dicomgw.config import Config, DimseDestination
from dicomgw.dimse.commands import C_MOVE_RQ, Command, CommandError, encode_c_move_rsp
from dicomgw.dimse.status import MOVE_DESTINATION_UNKNOWN, PENDING
from dicomgw.ingest.dataset import ReceivedDataSet
from dicomgw.query.files import StoredInstance
from dicomgw.send import delivery
from dicomgw.send.delivery import Outcome
from dicomgw.send.destinations import load_destinations
from dicomgw.send.dimse import DimseSender
from dicomgw.send.secrets import SecretBox
from dicomgw.services.provider import Operation, Replies, Response
from dicomgw.services.retrieve import Refusal, RetrieveOperation, Tally
from dicomgw.storage.layout import stored_path
from dicomgw.ul.uids import MOVE_SOP_CLASSES

log = logging.getLogger(__name__)

PENDING_EVERY_S = 1.0
"""Pending responses go out at most this often (PS3.4 asks for one at least every 5 s)."""


class MoveService:
    command_field = C_MOVE_RQ

    def __init__(self, pool: asyncpg.Pool, config: Config) -> None:
        self.pool = pool
        self.root = config.storage_root
        self.state_path = config.state_path

    def accepts(self, context: AcceptedContext) -> bool:
        return context.abstract_syntax in MOVE_SOP_CLASSES

    def begin(self, peer: Peer, context: AcceptedContext, command: Command) -> Operation:
        if not command.has_data_set:
            raise CommandError("C-MOVE-RQ announces no identifier")
        return _Move(self, peer, context, command)

    def refuse(self, error: CommandError) -> Operation | None:
        return None

    async def destination(self, conn: asyncpg.Connection, ae_title: str) -> DimseDestination | None:
        """The enabled DIMSE destination with this AE title, if there is one."""
        box = await asyncio.to_thread(SecretBox.open, self.state_path)
        for row in await load_destinations(conn, box):
            found = row.destination
            if (
                isinstance(found, DimseDestination)
                and found.enabled
                and found.ae_title.strip() == ae_title
            ):
                return found
        return None


class _Move(RetrieveOperation):
    name = "C-MOVE"
    action = "dimse.move"

    def __init__(
        self, service: MoveService, peer: Peer, context: AcceptedContext, command: Command
    ) -> None:
        super().__init__(service.pool, peer, context, command.message_id or 0, encode_c_move_rsp)
        self._service = service
        self._destination_ae = (command.move_destination or "").strip()

    async def finish(self, dataset: ReceivedDataSet | None, replies: Replies) -> Response:
        assert dataset is not None
        try:
            retrieval = self.retrieval(dataset)
            try:
                async with self.pool.acquire() as conn:
                    destination = await self._service.destination(conn, self._destination_ae)
                    files = await self.files(conn, retrieval) if destination else []
            except (TimeoutError, asyncpg.PostgresError, OSError) as exc:
                raise self.unavailable(exc) from None
            if destination is None:
                raise self.refused(
                    MOVE_DESTINATION_UNKNOWN,
                    f"move destination '{self._destination_ae[:16]}' is no enabled "
                    "DIMSE destination",
                )
        except Refusal as refusal:
            return refusal.response
        tally = await self._send(destination, files, replies)
        return await self.final(
            tally, files, retrieval.level_name, {"destination": destination.name}
        )

    async def _send(
        self, destination: DimseDestination, files: list[StoredInstance], replies: Replies
    ) -> Tally:
        """The sub-operations, one after another on one association; pending
        responses as they complete."""
        progress = _Progress(self, Tally(len(files)))
        originator = (self.peer.acceptance.calling_ae_title, self.message_id)
        sender = DimseSender(destination, move_originator=originator)
        items = [
            delivery.StoredInstance(
                job_id=0,
                instance_id=f.instance_id,
                sop_class_uid=f.sop_class_uid,
                sop_instance_uid=f.sop_instance_uid,
                transfer_syntax_uid=f.transfer_syntax_uid,
                path=stored_path(self._service.root, f.file_path),
                dataset_size=f.dataset_size,
                checksum=f.checksum,
            )
            for f in files
        ]
        sending = asyncio.ensure_future(sender.send(items, progress))
        try:
            while not sending.done():
                await asyncio.wait({sending}, timeout=PENDING_EVERY_S)
                counts = progress.tally.counts
                if progress.changed and counts.remaining:
                    progress.changed = False
                    await replies.pending(self.pending(PENDING, counts), None)
            sending.result()
        finally:
            await sender.close()
        return progress.tally


class _Progress:
    """The sender's progress (send/delivery.py's Progress) as sub-operation counts;
    a C-CANCEL-RQ withdraws what is not sent yet."""

    def __init__(self, move: _Move, tally: Tally) -> None:
        self._move = move
        self.tally = tally
        self.changed = False

    def wanted(self, item: delivery.StoredInstance) -> bool:
        return not self._move.cancelled

    def answered(self, item: delivery.StoredInstance, outcome: Outcome) -> None:
        if outcome.kind == "withdrawn":
            return  # not sent: still remaining
        if outcome.kind != "delivered":
            log.warning(
                "C-MOVE sub-operation failed",
                extra={"sop_instance_uid": item.sop_instance_uid, "error": outcome.message},
            )
        # NOTE: the sender has classified the status already; a warning stays one.
        status = 0xB000 if outcome.warning else 0x0000 if outcome.kind == "delivered" else None
        self.tally.add(item.sop_instance_uid, status)
        self.changed = True
