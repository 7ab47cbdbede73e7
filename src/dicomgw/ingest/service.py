"""Ingest: what one instance becomes on disk and in the index, and the status
that says so (PS3.4 B.2.3 statuses; STOW-RS reports the same ones).

Success (0x0000) only after the file is fsynced and renamed into ``objects/``
and its index row is committed. Everything else leaves nothing under
``objects/`` that the index does not hold.
"""

from __future__ import annotations

import datetime as dt
import errno
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

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
from dicomgw.ingest.dataset import CHECKSUM_PREFIX, ReceivedDataSet, scan
from dicomgw.ingest.source import Source
from dicomgw.storage.disk import DiskGuard
from dicomgw.storage.part10 import InvalidPart10, build_header, parse_file_meta
from dicomgw.storage.spool import Incoming, Spool
from dicomgw.ul.uids import is_valid_uid

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of one instance: a DIMSE status and, for a failure, why."""

    status: int
    comment: str | None = None


class Admission(Protocol):
    """One instance being received: its data set goes to ``fd`` (-1: discarded)."""

    fd: int

    async def finish(self, dataset: ReceivedDataSet) -> Result:
        """Make it durable and indexed (or say why not)."""
        ...

    def abandon(self) -> None:
        """The data set will not be completed (the connection ended)."""
        ...


@dataclass(slots=True)
class Refused:
    """An instance refused before its data set arrives (the data set is discarded)."""

    result: Result
    fd: int = -1

    async def finish(self, dataset: ReceivedDataSet) -> Result:
        return self.result

    def abandon(self) -> None:
        pass


class Ingest:
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

    def begin(
        self,
        source: Source,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax: str,
        *,
        study_instance_uid: str | None = None,
    ) -> Admission:
        """Admit one instance: a file in ``incoming/`` with its Part 10 header
        written, for the data set to be streamed into; or a refusal.
        ``study_instance_uid``: the instance must belong to that study (STOW-RS
        to ``/studies/{study}``)."""
        if not self._disk.accepting():
            return self.refuse(
                OUT_OF_RESOURCES,
                f"disk {self._disk.used_percent:.0f}% used, above storage.high_watermark_percent",
            )
        try:
            header = build_header(
                sop_class_uid, sop_instance_uid, transfer_syntax, source.ae_title or ""
            )
        except InvalidPart10 as exc:
            return self.refuse(CANNOT_UNDERSTAND, exc.problem)
        try:
            incoming = self._spool.open_incoming(header)
        except OSError as exc:
            log.error("cannot create the incoming file", extra={"error": str(exc)})
            return self.refuse(OUT_OF_RESOURCES, f"cannot store: {exc.strerror}")
        return Pending(
            self,
            source=source,
            sop_class_uid=sop_class_uid,
            sop_instance_uid=sop_instance_uid,
            transfer_syntax=transfer_syntax,
            study_instance_uid=study_instance_uid,
            header=header,
            incoming=incoming,
        )

    def refuse(self, status: int, comment: str) -> Refused:
        """A refusal decided by the caller (or here), counted and logged as ingest's."""
        self.count_failure(status, comment)
        return Refused(Result(status, comment))

    def count_failure(self, status: int, comment: str) -> None:
        self.failures[status] = self.failures.get(status, 0) + 1
        log.warning("instance not stored", extra={"status": f"0x{status:04X}", "comment": comment})


class Pending:
    """One admitted instance whose data set is being streamed to ``incoming/``."""

    def __init__(
        self,
        ingest: Ingest,
        *,
        source: Source,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax: str,
        study_instance_uid: str | None,
        header: bytes,
        incoming: Incoming,
    ) -> None:
        self._ingest = ingest
        self._study_instance_uid = study_instance_uid
        self._source = source
        self._sop_class_uid = sop_class_uid
        self._sop_instance_uid = sop_instance_uid
        self._transfer_syntax = transfer_syntax
        self._header = header
        self._incoming = incoming
        self.fd = incoming.fd

    def abandon(self) -> None:
        self._ingest._spool.discard(self._incoming)

    async def finish(self, dataset: ReceivedDataSet) -> Result:
        result = await self._finish(dataset)
        if result.status != SUCCESS:
            self._ingest.count_failure(result.status, result.comment or "")
        return result

    async def _finish(self, dataset: ReceivedDataSet) -> Result:
        ingest = self._ingest
        spool = ingest._spool
        if dataset.write_errno:
            spool.discard(self._incoming)
            return Result(OUT_OF_RESOURCES, f"write failed: {os.strerror(dataset.write_errno)}")
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
            return Result(OUT_OF_RESOURCES, f"cannot make the instance durable: {exc.strerror}")
        record = self._record(dataset, str(relative))
        try:
            outcome = await ingest._batcher.index(record)
        except IndexUnavailable as exc:
            if exc.maybe_committed:
                # NOTE: the row may exist: keep the file; it is settled once the
                # database answers (receiver.recovery.Unconfirmed) or at start.
                log.error("index commit unconfirmed: file kept", extra={"file": str(relative)})
                ingest.on_unconfirmed(str(relative))
            else:
                # Not indexed and not acknowledged: the sender will send it again.
                spool.remove_object(relative)
            return Result(OUT_OF_RESOURCES, "index database unavailable")
        if outcome.kind == "stored":
            ingest.stored += 1
            return Result(SUCCESS)
        spool.remove_object(relative)
        if outcome.kind == "duplicate":
            ingest.duplicates += 1
            return Result(SUCCESS)
        return Result(DUPLICATE_SOP_INSTANCE, "SOP Instance UID already stored with other content")

    def _check(self, dataset: ReceivedDataSet) -> Result | None:
        """Header as written, and the data set's identity matches what was claimed."""
        written = os.pread(self._incoming.fd, len(self._header), 0)
        if written != self._header:
            return Result(OUT_OF_RESOURCES, "the Part 10 header did not read back as written")
        try:
            parse_file_meta(written)
            values = scan(dataset.head, dataset.size, self._transfer_syntax)
        except (InvalidPart10, MalformedDataSet) as exc:
            return Result(CANNOT_UNDERSTAND, str(exc)[:64])
        self._attributes = Attributes(values)
        found = self._attributes.ascii(tags.SOP_INSTANCE_UID)
        if found != self._sop_instance_uid:
            return Result(
                DATASET_DOES_NOT_MATCH_SOP_CLASS, "SOP Instance UID differs from the command's"
            )
        found_class = self._attributes.ascii(tags.SOP_CLASS_UID)
        if found_class != self._sop_class_uid:
            return Result(
                DATASET_DOES_NOT_MATCH_SOP_CLASS, "SOP Class UID differs from the command's"
            )
        for tag, name in (
            (tags.STUDY_INSTANCE_UID, "Study Instance UID"),
            (tags.SERIES_INSTANCE_UID, "Series Instance UID"),
        ):
            uid = self._attributes.ascii(tag)
            if not uid:
                return Result(DATASET_DOES_NOT_MATCH_SOP_CLASS, f"{name} missing")
            if not is_valid_uid(uid):
                return Result(DATASET_DOES_NOT_MATCH_SOP_CLASS, f"{name} is not a valid UID")
        wanted = self._study_instance_uid
        if wanted is not None and self._attributes.ascii(tags.STUDY_INSTANCE_UID) != wanted:
            return Result(
                DATASET_DOES_NOT_MATCH_SOP_CLASS, f"not in study {wanted}, the request's study"
            )
        return None

    def _record(self, dataset: ReceivedDataSet, relative: str) -> InstanceRecord:
        source = self._source
        return build_record(
            self._attributes,
            Provenance(
                sop_instance_uid=self._sop_instance_uid,
                sop_class_uid=self._sop_class_uid,
                transfer_syntax_uid=self._transfer_syntax,
                file_path=relative,
                size_bytes=len(self._header) + dataset.size,
                dataset_size=dataset.size,
                checksum=f"{CHECKSUM_PREFIX}{dataset.crc32c:08x}",
                source_kind=source.kind,
                source_user=source.user,
                source_ae=source.ae_title,
                called_ae=source.called_ae,
                source_ip=source.address,
                association_id=source.session,
                received_at=dt.datetime.now(dt.UTC),
            ),
        )
