"""The Storage Service Class as SCP (PS3.4 B.2): each C-STORE enters ingest with
its association as provenance, and is answered with ingest's status."""

from __future__ import annotations

from dicomgw.association.acceptor import Peer
from dicomgw.association.negotiation import AcceptedContext
from dicomgw.dimse.commands import C_STORE_RQ, Command, CommandError, encode_c_store_rsp
from dicomgw.dimse.status import DATASET_DOES_NOT_MATCH_SOP_CLASS
from dicomgw.ingest.dataset import ReceivedDataSet
from dicomgw.ingest.service import Admission, Ingest, Refused, Result
from dicomgw.ingest.source import Source
from dicomgw.services.provider import Operation, Replies, Response


class _Store:
    """One C-STORE: its data set streamed into ingest, answered with its result."""

    def __init__(self, admission: Admission, command: Command) -> None:
        self._admission = admission
        self._command = command
        self.fd = admission.fd

    async def finish(self, dataset: ReceivedDataSet | None, replies: Replies) -> Response:
        assert dataset is not None  # a C-STORE-RQ without a data set is refused earlier
        result = await self._admission.finish(dataset)
        command = self._command
        response = encode_c_store_rsp(
            command.message_id or 0,
            command.affected_sop_class_uid,
            command.affected_sop_instance_uid,
            result.status,
            result.comment,
        )
        return Response(response, result.status)

    def cancel(self) -> None:
        pass  # PS3.7 9.3.2.3: C-CANCEL is for C-FIND, C-GET and C-MOVE

    def abandon(self) -> None:
        self._admission.abandon()


class StorageService:
    command_field = C_STORE_RQ

    def __init__(self, ingest: Ingest) -> None:
        self._ingest = ingest

    def accepts(self, context: AcceptedContext) -> bool:
        return context.is_storage and context.as_scp

    def begin(self, peer: Peer, context: AcceptedContext, command: Command) -> Operation:
        if not command.has_data_set:
            raise CommandError("C-STORE-RQ announces no data set")
        sop_class_uid = command.affected_sop_class_uid or ""
        if sop_class_uid != context.abstract_syntax:
            refused = self._ingest.refuse(
                DATASET_DOES_NOT_MATCH_SOP_CLASS,
                f"SOP class {sop_class_uid} sent on a {context.abstract_syntax} context",
            )
            return _Store(refused, command)
        acceptance = peer.acceptance
        source = Source(
            kind="dimse",
            ae_title=acceptance.calling_ae_title,
            called_ae=acceptance.called_ae_title,
            address=peer.host,
            session=peer.assoc_id,
        )
        admission = self._ingest.begin(
            source, sop_class_uid, command.affected_sop_instance_uid or "", context.transfer_syntax
        )
        return _Store(admission, command)

    def refuse(self, error: CommandError) -> Operation | None:
        """Consume the data set, then answer with the error's status."""
        command = Command(
            command_field=C_STORE_RQ,
            message_id=error.message_id,
            message_id_being_responded_to=None,
            affected_sop_class_uid=None,
            affected_sop_instance_uid=None,
            command_data_set_type=0,
            priority=None,
            move_originator_ae_title=None,
            move_originator_message_id=None,
            status=None,
            error_comment=None,
        )
        return _Store(Refused(Result(error.status, error.problem)), command)
