"""The Storage SCP's decisions (PS3.4 B.2): what one C-STORE becomes on disk and
in the index, and which status it is answered with.

Success (0x0000) is returned only after the file is fsynced and renamed into
``objects/`` and its index row is committed. Everything else leaves nothing
under ``objects/`` that the index does not hold.
"""

from __future__ import annotations

import datetime as dt
import errno
import logging
import os
import zlib
from collections.abc import Callable

from dicomgw._core import scan_metadata
from dicomgw.association.acceptor import Peer, ReceivedDataSet, Refused
from dicomgw.association.negotiation import AcceptedContext
from dicomgw.dimse.status import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    DUPLICATE_SOP_INSTANCE,
    OUT_OF_RESOURCES,
    SUCCESS,
)
from dicomgw.errors import MalformedDataSet
from dicomgw.index import records as tags
from dicomgw.index.batcher import IndexBatcher, IndexUnavailable
from dicomgw.index.records import Attributes, InstanceRecord, Provenance, build_record
from dicomgw.storage.disk import DiskGuard
from dicomgw.storage.part10 import InvalidPart10, build_header, parse_file_meta
from dicomgw.storage.spool import Incoming, Spool
from dicomgw.ul.uids import is_valid_uid

log = logging.getLogger(__name__)

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
DEFLATED_EXPLICIT_VR_LE = "1.2.840.10008.1.2.1.99"
CHECKSUM_PREFIX = "crc32c:"

Outcome = tuple[int, str | None]


def encoding_of(transfer_syntax: str) -> tuple[bool, bool]:
    """(explicit VR, little endian) of a transfer syntax's data set (PS3.5 10)."""
    if transfer_syntax == IMPLICIT_VR_LE:
        return False, True
    if transfer_syntax == EXPLICIT_VR_BE:
        return True, False
    return True, True


def scan(head: bytes, size: int, transfer_syntax: str) -> dict[int, bytes]:
    """The index attributes from the first bytes of a data set."""
    explicit, little = encoding_of(transfer_syntax)
    complete = size <= len(head)
    if transfer_syntax == DEFLATED_EXPLICIT_VR_LE:
        # PS3.5 A.5: raw deflate; inflate what the head holds (the slower path).
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            head = inflater.decompress(head, 4 * len(head))
        except zlib.error as exc:
            raise MalformedDataSet(0, f"deflated data set does not inflate: {exc}") from None
        complete = complete and inflater.eof
    return scan_metadata(head, explicit, little, complete)


class StorageService:
    def __init__(
        self,
        spool: Spool,
        disk: DiskGuard,
        batcher: IndexBatcher,
        head_bytes: int,
        on_unconfirmed: Callable[[str], None],
    ) -> None:
        """``on_unconfirmed(file)``: a file kept because its index COMMIT may or
        may not have happened, to settle once the database answers."""
        self.head_bytes = head_bytes
        self.on_unconfirmed = on_unconfirmed
        self.fsync = spool.fsync
        self._spool = spool
        self._disk = disk
        self._batcher = batcher
        # Read by the metrics collector.
        self.stored = 0
        self.duplicates = 0
        self.failures: dict[int, int] = {}

    def begin_store(
        self,
        peer: Peer,
        context: AcceptedContext,
        message_id: int,
        sop_class_uid: str,
        sop_instance_uid: str,
    ) -> Store | Refused:
        if not self._disk.accepting():
            return self._refuse(
                OUT_OF_RESOURCES,
                f"disk {self._disk.used_percent:.0f}% used, above storage.high_watermark_percent",
            )
        if sop_class_uid != context.abstract_syntax:
            return self._refuse(
                DATASET_DOES_NOT_MATCH_SOP_CLASS,
                f"SOP class {sop_class_uid} sent on a {context.abstract_syntax} context",
            )
        try:
            header = build_header(
                sop_class_uid,
                sop_instance_uid,
                context.transfer_syntax,
                peer.acceptance.calling_ae_title,
            )
        except InvalidPart10 as exc:
            return self._refuse(CANNOT_UNDERSTAND, exc.problem)
        try:
            incoming = self._spool.open_incoming(header)
        except OSError as exc:
            log.error("cannot create the incoming file", extra={"error": str(exc)})
            return self._refuse(OUT_OF_RESOURCES, f"cannot store: {exc.strerror}")
        return Store(
            self,
            peer=peer,
            context=context,
            sop_class_uid=sop_class_uid,
            sop_instance_uid=sop_instance_uid,
            header=header,
            incoming=incoming,
        )

    def _refuse(self, status: int, comment: str) -> Refused:
        self.count_failure(status, comment)
        return Refused(status, comment)

    def count_failure(self, status: int, comment: str) -> None:
        self.failures[status] = self.failures.get(status, 0) + 1
        log.warning("C-STORE failed", extra={"status": f"0x{status:04X}", "comment": comment})


class Store:
    """One C-STORE whose data set is being streamed to ``incoming/``."""

    def __init__(
        self,
        service: StorageService,
        *,
        peer: Peer,
        context: AcceptedContext,
        sop_class_uid: str,
        sop_instance_uid: str,
        header: bytes,
        incoming: Incoming,
    ) -> None:
        self._service = service
        self._peer = peer
        self._context = context
        self._sop_class_uid = sop_class_uid
        self._sop_instance_uid = sop_instance_uid
        self._header = header
        self._incoming = incoming
        self.fd = incoming.fd

    def abandon(self) -> None:
        self._service._spool.discard(self._incoming)

    async def finish(self, dataset: ReceivedDataSet) -> Outcome:
        outcome = await self._finish(dataset)
        if outcome[0] != SUCCESS:
            self._service.count_failure(outcome[0], outcome[1] or "")
        return outcome

    async def _finish(self, dataset: ReceivedDataSet) -> Outcome:
        spool = self._service._spool
        if dataset.write_errno:
            spool.discard(self._incoming)
            return OUT_OF_RESOURCES, f"write failed: {os.strerror(dataset.write_errno)}"
        problem = self._check(dataset)
        if problem is not None:
            spool.discard(self._incoming)
            return problem
        relative = spool.object_path(self._incoming.key)
        try:
            await spool.commit(self._incoming, relative)
        except OSError as exc:
            log.error(
                "commit failed",
                extra={"error": str(exc), "errno": errno.errorcode.get(exc.errno or 0)},
            )
            return OUT_OF_RESOURCES, f"cannot make the instance durable: {exc.strerror}"
        record = self._record(dataset, str(relative))
        try:
            outcome = await self._service._batcher.index(record)
        except IndexUnavailable as exc:
            if exc.maybe_committed:
                # NOTE: the row may exist: keep the file; start-up recovery settles it.
                log.error("index commit unconfirmed: file kept", extra={"file": str(relative)})
                self._service.on_unconfirmed(str(relative))
            else:
                # Not indexed and not acknowledged: the peer will send it again.
                spool.remove_object(relative)
            return OUT_OF_RESOURCES, "index database unavailable"
        if outcome.kind == "stored":
            self._service.stored += 1
            return SUCCESS, None
        spool.remove_object(relative)
        if outcome.kind == "duplicate":
            self._service.duplicates += 1
            return SUCCESS, None
        return DUPLICATE_SOP_INSTANCE, "SOP Instance UID already stored with other content"

    def _check(self, dataset: ReceivedDataSet) -> Outcome | None:
        """Header as written, and the data set's identity matches the command."""
        written = os.pread(self._incoming.fd, len(self._header), 0)
        if written != self._header:
            return OUT_OF_RESOURCES, "the Part 10 header did not read back as written"
        try:
            parse_file_meta(written)
            values = scan(dataset.head, dataset.size, self._context.transfer_syntax)
        except (InvalidPart10, MalformedDataSet) as exc:
            return CANNOT_UNDERSTAND, str(exc)[:64]
        self._attributes = Attributes(values)
        found = self._attributes.ascii(tags.SOP_INSTANCE_UID)
        if found != self._sop_instance_uid:
            return DATASET_DOES_NOT_MATCH_SOP_CLASS, "SOP Instance UID differs from the command's"
        found_class = self._attributes.ascii(tags.SOP_CLASS_UID)
        if found_class != self._sop_class_uid:
            return DATASET_DOES_NOT_MATCH_SOP_CLASS, "SOP Class UID differs from the command's"
        for tag, name in (
            (tags.STUDY_INSTANCE_UID, "Study Instance UID"),
            (tags.SERIES_INSTANCE_UID, "Series Instance UID"),
        ):
            uid = self._attributes.ascii(tag)
            if not uid:
                return DATASET_DOES_NOT_MATCH_SOP_CLASS, f"{name} missing"
            if not is_valid_uid(uid):
                return DATASET_DOES_NOT_MATCH_SOP_CLASS, f"{name} is not a valid UID"
        return None

    def _record(self, dataset: ReceivedDataSet, relative: str) -> InstanceRecord:
        acceptance = self._peer.acceptance
        return build_record(
            self._attributes,
            Provenance(
                sop_instance_uid=self._sop_instance_uid,
                sop_class_uid=self._sop_class_uid,
                transfer_syntax_uid=self._context.transfer_syntax,
                file_path=relative,
                size_bytes=len(self._header) + dataset.size,
                dataset_size=dataset.size,
                checksum=f"{CHECKSUM_PREFIX}{dataset.crc32c:08x}",
                source_ae=acceptance.calling_ae_title,
                called_ae=acceptance.called_ae_title,
                source_ip=self._peer.host,
                association_id=self._peer.assoc_id,
                received_at=dt.datetime.now(dt.UTC),
            ),
        )
