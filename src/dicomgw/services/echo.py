"""The Verification SOP Class as SCP (PS3.4 A.4): C-ECHO answered with Success."""

from __future__ import annotations

from dataclasses import dataclass

from dicomgw.association.acceptor import Peer
from dicomgw.association.negotiation import AcceptedContext
from dicomgw.dimse.commands import C_ECHO_RQ, Command, CommandError, encode_c_echo_rsp
from dicomgw.dimse.status import SUCCESS
from dicomgw.ingest.dataset import ReceivedDataSet
from dicomgw.services.provider import Operation, Replies, Response


@dataclass(slots=True)
class _Echo:
    message_id: int
    fd: int = -1

    async def finish(self, dataset: ReceivedDataSet | None, replies: Replies) -> Response:
        return Response(encode_c_echo_rsp(self.message_id, SUCCESS), SUCCESS)

    def cancel(self) -> None:
        pass  # PS3.7 9.3.2.3: C-CANCEL is for C-FIND, C-GET and C-MOVE

    def abandon(self) -> None:
        pass


class VerificationService:
    command_field = C_ECHO_RQ

    def accepts(self, context: AcceptedContext) -> bool:
        # NOTE: any accepted context, as before this class existed: a requestor
        # that echoes on a storage context is answered, not aborted.
        return True

    def begin(self, peer: Peer, context: AcceptedContext, command: Command) -> Operation:
        return _Echo(command.message_id or 0)

    def refuse(self, error: CommandError) -> Operation | None:
        return None
