"""The DIMSE service provider with a scripted association (no sockets): dispatch by
command field, data sets to the service's fd, responses in request order,
malformed requests refused or aborted, partial requests abandoned."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from dicomgw.association.acceptor import Peer
from dicomgw.association.negotiation import Acceptance, AcceptedContext
from dicomgw.dimse.commands import (
    C_STORE_RQ,
    C_STORE_RSP,
    Command,
    CommandError,
    decode_command,
    encode_c_echo_rq,
    encode_c_store_rq,
    encode_c_store_rsp,
)
from dicomgw.dimse.status import SUCCESS
from dicomgw.ingest.dataset import ReceivedDataSet
from dicomgw.services.echo import VerificationService
from dicomgw.services.provider import Operation, Replies, Response, ServiceProvider
from dicomgw.ul.pdu import ABORT_UNRECOGNIZED_PDU_PARAMETER
from dicomgw.ul.uids import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    VERIFICATION_SOP_CLASS,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
STORAGE, VERIFICATION = 1, 3


@dataclass
class ScriptedLink:
    """The acceptor's side, recorded."""

    sent: list[tuple[int, Command]] = field(default_factory=list)
    expected: list[tuple[int, int]] = field(default_factory=list)
    aborted: list[int] = field(default_factory=list)
    datasets: list[tuple[int, bytes]] = field(default_factory=list)
    settlements: int = 0

    def send_command(self, context_id: int, command: bytes) -> None:
        self.sent.append((context_id, decode_command(command)))

    is_up = True
    paused = 0

    def pause_reading(self) -> None:
        self.paused += 1

    def resume_reading(self) -> None:
        self.paused -= 1

    def send_dataset(self, context_id: int, dataset: bytes, *, last: bool = True) -> None:
        self.datasets.append((context_id, dataset))

    async def writable(self) -> None:
        pass

    def expect_dataset(self, context_id: int, fd: int) -> None:
        self.expected.append((context_id, fd))

    def abort(self, reason: int) -> None:
        self.aborted.append(reason)

    def settled(self) -> None:
        self.settlements += 1


@dataclass
class HeldStore:
    """A C-STORE that finishes when the test says."""

    command: Command
    release: asyncio.Event = field(default_factory=asyncio.Event)
    fd: int = 42
    abandoned: bool = False
    dataset: ReceivedDataSet | None = None

    async def finish(self, dataset: ReceivedDataSet | None, replies: Replies) -> Response:
        self.dataset = dataset
        await self.release.wait()
        response = encode_c_store_rsp(
            self.command.message_id or 0,
            self.command.affected_sop_class_uid,
            self.command.affected_sop_instance_uid,
            SUCCESS,
        )
        return Response(response, SUCCESS)

    def cancel(self) -> None:
        pass  # PS3.7 9.3.2.3: C-CANCEL is for C-FIND, C-GET and C-MOVE

    def abandon(self) -> None:
        self.abandoned = True


class HeldStorage:
    command_field = C_STORE_RQ

    def __init__(self) -> None:
        self.operations: list[HeldStore] = []

    def accepts(self, context: AcceptedContext) -> bool:
        return context.is_storage

    def begin(self, peer: Peer, context: AcceptedContext, command: Command) -> Operation:
        self.operations.append(HeldStore(command))
        return self.operations[-1]

    def refuse(self, error: CommandError) -> Operation | None:
        return None


def association(
    max_in_flight: int = 16,
) -> tuple[HeldStorage, ScriptedLink, object, list[tuple[int, float, int]]]:
    storage = HeldStorage()
    answered: list[tuple[int, float, int]] = []
    provider = ServiceProvider(
        [VerificationService(), storage],
        head_bytes=1024,
        fsync=True,
        on_answered=lambda field, seconds, status: answered.append((field, seconds, status)),
        max_in_flight=max_in_flight,
    )
    contexts = {
        STORAGE: AcceptedContext(STORAGE, CT, EXPLICIT_VR_LITTLE_ENDIAN, True),
        VERIFICATION: AcceptedContext(
            VERIFICATION, VERIFICATION_SOP_CLASS, IMPLICIT_VR_LITTLE_ENDIAN, False
        ),
    }
    peer = Peer("a1", "127.0.0.1", 1234, Acceptance("MODALITY", "DICOMGW", 0, contexts, b""))
    link = ScriptedLink()
    return storage, link, provider.attach(peer, link), answered


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_responses_go_out_in_request_order() -> None:
    storage, link, handler, answered = association()
    for n in (1, 2):
        handler.command(STORAGE, encode_c_store_rq(n, CT, f"1.2.3.{n}"))
        assert link.expected[-1] == (STORAGE, 42)
        handler.dataset(STORAGE, 0xABC, 100 + n, b"head", 0)
    handler.command(VERIFICATION, encode_c_echo_rq(3))
    assert handler.in_flight == 3
    storage.operations[1].release.set()  # the second store is done first
    await settle()
    assert link.sent == []  # it waits for the first
    storage.operations[0].release.set()
    await settle()
    assert [(c, cmd.message_id_being_responded_to) for c, cmd in link.sent] == [
        (STORAGE, 1),
        (STORAGE, 2),
        (VERIFICATION, 3),
    ]
    assert link.sent[0][1].command_field == C_STORE_RSP
    assert storage.operations[0].dataset == ReceivedDataSet(0xABC, 101, b"head", 0)
    assert handler.in_flight == 0
    assert link.settlements == 1
    assert [a[0] for a in answered] == [C_STORE_RQ, C_STORE_RQ, 0x0030]


async def test_a_command_no_service_serves_aborts() -> None:
    _, link, handler, _ = association()
    handler.command(VERIFICATION, encode_c_store_rq(1, CT, "1.2.3.1"))  # not a storage context
    assert link.aborted == [ABORT_UNRECOGNIZED_PDU_PARAMETER]
    assert link.expected == []


async def test_an_unaddressable_malformed_request_raises_for_the_abort() -> None:
    _, _, handler, _ = association()
    try:
        handler.command(STORAGE, b"\x00" * 8)
    except CommandError:
        return
    raise AssertionError("a command set that cannot be decoded must raise")


async def test_the_partial_request_is_abandoned_when_the_association_ends() -> None:
    storage, _, handler, _ = association()
    handler.command(STORAGE, encode_c_store_rq(1, CT, "1.2.3.1"))
    handler.closed()
    assert storage.operations[0].abandoned
    handler.closed()  # twice is harmless


async def test_past_max_in_flight_the_association_is_not_read_until_an_answer() -> None:
    storage, link, handler, _ = association(max_in_flight=2)
    handler.command(STORAGE, encode_c_store_rq(1, CT, "1.2.3.1"))
    handler.dataset(STORAGE, 0xABC, 101, b"head", 0)
    assert link.paused == 0
    handler.command(STORAGE, encode_c_store_rq(2, CT, "1.2.3.2"))
    handler.dataset(STORAGE, 0xABC, 102, b"head", 0)
    assert link.paused == 1  # a requestor ignoring the operations window waits on TCP
    storage.operations[0].release.set()
    await settle()
    assert link.paused == 0 and len(link.sent) == 1
    storage.operations[1].release.set()
    await settle()
    assert link.paused == 0 and len(link.sent) == 2
