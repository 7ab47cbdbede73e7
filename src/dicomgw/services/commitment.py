"""The Storage Commitment Push Model as SCP (PS3.4 J): an N-ACTION-RQ asks dicom-gw
to commit to keeping the instances it lists; dicom-gw answers N-ACTION-RSP at
once and then reports, with an N-EVENT-REPORT-RQ on the same association, which
instances it holds: stored, indexed, and with a data set whose CRC-32C is still
the one recorded at ingest (read from disk now, not assumed). The others are
listed as failed with a reason (no such instance 0112, another SOP class 0119,
damaged or unreadable 0110).

A requester that releases the association before the report gets none (a report
on a new association is not implemented yet); it is logged and audited.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from io import BytesIO

import asyncpg
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

from dicomgw import audit
from dicomgw._core import HEAD_ONLY_FD
from dicomgw.association.acceptor import Peer
from dicomgw.association.negotiation import AcceptedContext
from dicomgw.config import Config
from dicomgw.dimse.commands import (
    N_ACTION_RQ,
    Command,
    CommandError,
    encode_n_action_rsp,
    encode_n_event_report_rq,
)
from dicomgw.dimse.status import (
    CLASS_INSTANCE_CONFLICT,
    INVALID_ATTRIBUTE_VALUE,
    MISSING_ATTRIBUTE,
    NO_SUCH_ACTION_TYPE,
    NO_SUCH_SOP_CLASS,
    NO_SUCH_SOP_INSTANCE,
    PROCESSING_FAILURE,
    SUCCESS,
)
from dicomgw.ingest.dataset import ReceivedDataSet
from dicomgw.query.files import files_of
from dicomgw.send.delivery import ChecksumMismatch, dataset_checksum
from dicomgw.services.provider import Operation, Replies, Response
from dicomgw.storage.layout import stored_path
from dicomgw.ul.uids import (
    IMPLICIT_VR_LITTLE_ENDIAN,
    STORAGE_COMMITMENT_INSTANCE,
    STORAGE_COMMITMENT_PUSH,
    is_valid_uid,
)

log = logging.getLogger(__name__)

REQUEST_COMMIT = 1
"""PS3.4 J.3.2.1: Action Type ID 1, Request Storage Commitment."""
ALL_COMMITTED, SOME_FAILED = 1, 2
"""PS3.4 J.3.3.1: Event Type IDs of the report."""
MAX_REFERENCES = 100_000


class CommitmentError(ValueError):
    def __init__(self, status: int, problem: str) -> None:
        self.status = status
        super().__init__(problem)


@dataclass
class Commitment:
    transaction_uid: str
    references: list[tuple[str, str]]
    """(SOP class, SOP instance) asked for."""
    committed: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str, int]] = field(default_factory=list)
    """(SOP class, SOP instance, Failure Reason)."""


def parse_request(data: bytes, implicit_vr: bool) -> Commitment:
    """The action information (PS3.4 Table J.3-1)."""
    try:
        ds = read_dataset(BytesIO(data), implicit_vr, True)
        transaction = str(ds.get("TransactionUID", "") or "")
        items = list(ds.get("ReferencedSOPSequence", []) or [])
        references = [
            (str(item.ReferencedSOPClassUID), str(item.ReferencedSOPInstanceUID)) for item in items
        ]
    except AttributeError as exc:
        raise CommitmentError(
            MISSING_ATTRIBUTE, f"a Referenced SOP Sequence item lacks {exc}"
        ) from None
    except Exception as exc:  # NOTE: pydicom's readers raise many kinds on bad bytes
        raise CommitmentError(
            INVALID_ATTRIBUTE_VALUE, f"not a data set ({type(exc).__name__}: {exc})"
        ) from None
    if not transaction:
        raise CommitmentError(MISSING_ATTRIBUTE, "(0008,1195) Transaction UID is missing")
    if not is_valid_uid(transaction):
        raise CommitmentError(INVALID_ATTRIBUTE_VALUE, f"Transaction UID '{transaction[:64]}'")
    if not references:
        raise CommitmentError(MISSING_ATTRIBUTE, "(0008,1199) Referenced SOP Sequence is empty")
    if len(references) > MAX_REFERENCES:
        raise CommitmentError(
            INVALID_ATTRIBUTE_VALUE, f"more than {MAX_REFERENCES} instances in one request"
        )
    bad = [uid for pair in references for uid in pair if not is_valid_uid(uid)]
    if bad:
        raise CommitmentError(INVALID_ATTRIBUTE_VALUE, f"'{bad[0][:64]}' is not a UID")
    return Commitment(transaction, references)


def encode_report(commitment: Commitment, ae_title: str, implicit_vr: bool) -> bytes:
    """The event information (PS3.4 Table J.3-2)."""
    ds = Dataset()
    ds.TransactionUID = commitment.transaction_uid
    ds.RetrieveAETitle = ae_title
    if commitment.committed:
        ds.ReferencedSOPSequence = [
            _item(sop_class, sop_instance) for sop_class, sop_instance in commitment.committed
        ]
    if commitment.failed:
        ds.FailedSOPSequence = [
            _item(sop_class, sop_instance, reason)
            for sop_class, sop_instance, reason in commitment.failed
        ]
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, implicit_vr
    write_dataset(buffer, ds)
    return buffer.getvalue()


def _item(sop_class: str, sop_instance: str, reason: int | None = None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    if reason is not None:
        item.FailureReason = reason
    return item


class CommitmentService:
    command_field = N_ACTION_RQ

    def __init__(self, pool: asyncpg.Pool, config: Config) -> None:
        self.pool = pool
        self.root = config.storage_root
        self.ae_title = config.dimse.ae_title.strip()
        self.timeout_s = config.dimse.network_timeout_s

    def accepts(self, context: AcceptedContext) -> bool:
        return context.abstract_syntax == STORAGE_COMMITMENT_PUSH

    def begin(self, peer: Peer, context: AcceptedContext, command: Command) -> Operation:
        if not command.has_data_set:
            raise CommandError("N-ACTION-RQ announces no action information")
        return _Commit(self, peer, context, command)

    def refuse(self, error: CommandError) -> Operation | None:
        return None

    async def check(self, commitment: Commitment) -> None:
        """Sort the references into committed and failed, reading each file."""
        async with self.pool.acquire() as conn:
            files = await files_of(conn, instances=[uid for _, uid in commitment.references])
        stored = {f.sop_instance_uid: f for f in files}
        for sop_class, sop_instance in commitment.references:
            found = stored.get(sop_instance)
            if found is None:
                commitment.failed.append((sop_class, sop_instance, NO_SUCH_SOP_INSTANCE))
                continue
            if found.sop_class_uid != sop_class:
                commitment.failed.append((sop_class, sop_instance, CLASS_INSTANCE_CONFLICT))
                continue
            path = stored_path(self.root, found.file_path)
            try:
                actual = await asyncio.to_thread(dataset_checksum, path, found.dataset_size)
            except (OSError, ChecksumMismatch) as exc:
                actual = f"unreadable: {exc}"
            if actual != found.checksum:
                log.error(
                    "storage commitment refused for a damaged instance",
                    extra={"sop_instance_uid": sop_instance, "checksum": actual},
                )
                commitment.failed.append((sop_class, sop_instance, PROCESSING_FAILURE))
                continue
            commitment.committed.append((sop_class, sop_instance))


class _Commit:
    fd = HEAD_ONLY_FD  # the action information is read from the data set's head

    def __init__(
        self, service: CommitmentService, peer: Peer, context: AcceptedContext, command: Command
    ) -> None:
        self._service = service
        self._peer = peer
        self._context = context
        self._command = command

    def cancel(self) -> None:
        pass  # PS3.7 9.3.2.3: C-CANCEL is for C-FIND, C-GET and C-MOVE

    def abandon(self) -> None:
        pass

    def _response(self, status: int, comment: str | None = None) -> Response:
        command = encode_n_action_rsp(
            self._command.message_id or 0,
            STORAGE_COMMITMENT_PUSH,
            STORAGE_COMMITMENT_INSTANCE,
            status,
            action=REQUEST_COMMIT,
            error_comment=comment,
        )
        return Response(command, status)

    def _refused(self, status: int, why: str) -> Response:
        log.warning("N-ACTION refused", extra={"status": f"0x{status:04X}", "error": why})
        return self._response(status, why)

    async def finish(self, dataset: ReceivedDataSet | None, replies: Replies) -> Response:
        assert dataset is not None
        command = self._command
        if command.requested_sop_class_uid != STORAGE_COMMITMENT_PUSH:
            return self._refused(NO_SUCH_SOP_CLASS, "not the Storage Commitment Push Model")
        if command.requested_sop_instance_uid != STORAGE_COMMITMENT_INSTANCE:
            return self._refused(
                NO_SUCH_SOP_INSTANCE, f"not the well-known instance {STORAGE_COMMITMENT_INSTANCE}"
            )
        if command.action_type_id != REQUEST_COMMIT:
            return self._refused(NO_SUCH_ACTION_TYPE, f"action type {command.action_type_id}")
        if dataset.size > len(dataset.head):
            return self._refused(INVALID_ATTRIBUTE_VALUE, "action information too large")
        implicit = self._context.transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN
        try:
            commitment = parse_request(dataset.head, implicit)
        except CommitmentError as exc:
            return self._refused(exc.status, str(exc))
        log.info(
            "storage commitment requested",
            extra={
                "transaction_uid": commitment.transaction_uid,
                "instances": len(commitment.references),
            },
        )

        async def report(replies: Replies) -> None:
            await self._report(commitment, replies)

        return Response(self._response(SUCCESS).command, SUCCESS, after=report)

    async def _report(self, commitment: Commitment, replies: Replies) -> None:
        """Check, then send the N-EVENT-REPORT-RQ and await its response."""
        service = self._service
        outcome = "failure"
        try:
            await service.check(commitment)
            event = SOME_FAILED if commitment.failed else ALL_COMMITTED
            implicit = self._context.transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN
            report = encode_report(commitment, service.ae_title, implicit)
            message_id = replies.new_message_id()
            response = await replies.request(
                self._context.context_id,
                message_id,
                encode_n_event_report_rq(
                    message_id, STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE, event
                ),
                _once(report),
                service.timeout_s,
            )
            outcome = "success" if response.status == SUCCESS else "failure"
            log.info(
                "storage commitment reported",
                extra={
                    "transaction_uid": commitment.transaction_uid,
                    "committed": len(commitment.committed),
                    "failed": len(commitment.failed),
                    "status": f"0x{response.status or 0:04X}",
                },
            )
        except (ConnectionError, TimeoutError) as exc:
            log.error(
                "storage commitment not reported: the requester is gone or silent",
                extra={"transaction_uid": commitment.transaction_uid, "error": str(exc)},
            )
        finally:
            await self._audit(commitment, outcome)

    async def _audit(self, commitment: Commitment, outcome: str) -> None:
        try:
            async with self._service.pool.acquire() as conn:
                await audit.record(
                    conn,
                    actor=self._peer.acceptance.calling_ae_title,
                    action="dimse.commitment",
                    target=commitment.transaction_uid,
                    detail={
                        "requested": len(commitment.references),
                        "committed": len(commitment.committed),
                        "failed": len(commitment.failed),
                    },
                    source_ip=self._peer.host,
                    outcome=outcome,
                )
        except (TimeoutError, asyncpg.PostgresError, OSError) as exc:
            log.error("storage commitment not audited", extra={"error": str(exc)})


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data
