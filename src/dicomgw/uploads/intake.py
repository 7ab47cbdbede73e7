"""An upload's files into ingest, once the uploader says it is complete: DICOM
Part 10 files as received (the STOW-RS streaming path), JPEG/PNG/PDF wrapped as
instances of the form's study, ZIP archives expanded within limits.

Taking a batch in again after a crash is safe: an instance already stored with
the same bytes is a duplicate that ingest answers with Success, and the UIDs of
wrapped files are derived from the upload, so they come out the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import asyncpg
import pydicom
from pydicom.errors import InvalidDicomError

from dicomgw.dimse.status import CANNOT_UNDERSTAND, status_category
from dicomgw.ingest.part10_stream import Part10Stream
from dicomgw.ingest.service import Ingest, Result
from dicomgw.ingest.source import Source
from dicomgw.storage.part10 import build_header
from dicomgw.uploads import batches
from dicomgw.uploads.archive import READ_ERRORS, ArchiveError, ArchiveLimits, open_archive
from dicomgw.uploads.store import Upload, UploadStore
from dicomgw.uploads.wrap import MAX_WRAP_BYTES, Kind, StudyForm, WrapError, sniff, wrap

log = logging.getLogger(__name__)

PIECE = 1 << 20
"""Bytes read from an uploaded file at a time (memory stays flat)."""
MAX_IN_FLIGHT = 16
"""Instances being committed at once while the next are read (as for STOW-RS)."""
MAX_FAILURES_LISTED = 100
WRAPPING_AT_ONCE = 2
"""Images decoded at once per worker: a 100-megapixel PNG takes ~1 GB to wrap."""
SNIFF_BYTES = 132
IDENTITY_ENTRIES = 1000
"""ZIP entries whose Study Instance UID is read for the duplicate check."""
_UID_NAMESPACE = uuid.UUID("6f1c9b52-8f0e-4c3e-9a57-0c4f2b9d7e11")


def derived_uid(*parts: str) -> str:
    """A UID derived from the upload (PS3.5 B.2: 2.25 + a UUID as an integer), the
    same each time the upload is taken in."""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, '/'.join(parts)).int}"


def study_form(batch: batches.Batch) -> StudyForm:
    """The form as wrap takes it (WrapError names a bad field)."""
    form = batch.form
    return StudyForm(
        patient_name=str(form.get("patient_name", "")),
        patient_id=str(form.get("patient_id", "")),
        study_date=str(form.get("study_date", "")).replace("-", ""),
        modality=str(form.get("modality") or "OT"),
        study_description=str(form.get("study_description", "")),
        accession_number=str(form.get("accession_number", "")),
        referring_physician=str(form.get("referring_physician", "")),
        notes=str(form.get("notes", "")),
        study_instance_uid=derived_uid(batch.id, "study"),
    )


def form_identity(form: dict[str, Any]) -> str:
    """The duplicate key of images without UIDs: patient, study date and modality."""
    key = "|".join(
        str(form.get(k, "")).strip().upper() for k in ("patient_id", "study_date", "modality")
    )
    return "form:" + hashlib.sha256(key.encode()).hexdigest()[:32]


# -- what a batch holds (for the duplicate check, before anything is stored) ---------


@dataclass(slots=True)
class Contents:
    study_uids: set[str] = field(default_factory=set)
    instance_uids: set[str] = field(default_factory=set)
    """Of the DICOM files uploaded as they are (not in a ZIP)."""
    archives: bool = False
    wrapped: bool = False
    """Some file is an image or a PDF (it takes the form's study)."""
    problems: list[str] = field(default_factory=list)


def survey(store: UploadStore, uploads: list[Upload], limits: ArchiveLimits) -> Contents:
    """Blocking (run in a thread): the studies the files name, and any file that
    cannot be taken in at all (not a known kind, a ZIP over its limits)."""
    contents = Contents()
    for upload in uploads:
        path = store.path(upload.id)
        with open(path, "rb") as f:
            kind = sniff(f.read(SNIFF_BYTES))
            f.seek(0)
            if kind is None:
                contents.problems.append(f"{upload.filename or upload.id}: {NOT_A_KNOWN_KIND}")
            elif kind == "dicom":
                _study_of(f, contents, top=True)
            elif kind == "zip":
                contents.archives = True
                try:
                    with open_archive(path, limits) as archive:
                        for n, entry in enumerate(archive.entries()):
                            if n >= IDENTITY_ENTRIES:
                                break
                            with entry.open() as member:
                                inner = sniff(member.read(SNIFF_BYTES))
                            if inner == "dicom":
                                with entry.open() as member:
                                    _study_of(member, contents)
                            elif inner in ("jpeg", "png", "pdf"):
                                contents.wrapped = True
                except ArchiveError as exc:
                    contents.problems.append(f"{upload.filename or upload.id}: {exc}")
            else:
                contents.wrapped = True
    return contents


NOT_A_KNOWN_KIND = "not a DICOM, JPEG, PNG, PDF or ZIP file"


def _study_of(f: IO[bytes], contents: Contents, *, top: bool = False) -> None:
    with contextlib.suppress(InvalidDicomError, ValueError, EOFError, OSError, KeyError):
        ds = pydicom.dcmread(
            f, stop_before_pixels=True, specific_tags=[(0x0008, 0x0018), (0x0020, 0x000D)]
        )
        if top and ds.get("SOPInstanceUID"):
            contents.instance_uids.add(str(ds.SOPInstanceUID))
        uid = str(ds.get("StudyInstanceUID", "") or "")
        if uid:
            contents.study_uids.add(uid)


# -- taking a batch in ---------------------------------------------------------------


@dataclass(slots=True)
class FileResult:
    kind: str | None
    stored: int = 0
    failed: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    instances: list[str] = field(default_factory=list)

    def add(self, entry: str, uid: str | None, result: Result) -> None:
        if status_category(result.status) in ("success", "warning"):
            self.stored += 1
            if uid:
                self.instances.append(uid)
            return
        self.failed += 1
        if len(self.failures) < MAX_FAILURES_LISTED:
            self.failures.append(
                {
                    "entry": entry,
                    "status": f"0x{result.status:04X}",
                    "reason": result.comment or "",
                }
            )

    def summary(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "stored": self.stored,
            "failed": self.failed,
            "failures": self.failures,
        }


class Intake:
    """Takes complete batches in, one task per batch, each leased in the database."""

    def __init__(
        self,
        pool: Callable[[], asyncpg.Pool],
        store: UploadStore,
        ingest: Callable[[], Awaitable[Ingest]],
        limits: ArchiveLimits,
    ) -> None:
        self._pool = pool
        self._store = store
        self._ingest = ingest
        self._limits = limits
        self.owner = f"intake-{uuid.uuid4().hex[:12]}"
        self._wrapping = asyncio.Semaphore(WRAPPING_AT_ONCE)
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, batch_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self._run(batch_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self, batch_id: str) -> None:
        try:
            await self.take_in(batch_id)
        except Exception:
            # NOTE: the lease lapses and a worker's sweep takes the batch over.
            log.exception("upload intake failed", extra={"upload_id": batch_id})

    async def take_in(self, batch_id: str) -> None:
        async with self._pool().acquire() as conn:
            batch = await batches.get(conn, batch_id)
            uploads = await self._store.of_batch(conn, batch_id)
        if batch is None or batch.state != "processing":
            return
        ingest = await self._ingest()
        source = Source(
            kind="upload", user=batch.username, address=batch.source_ip, session=batch.id
        )
        renewing = asyncio.get_running_loop().create_task(self._renew(batch_id))
        stored = failed = 0
        try:
            for upload in uploads:
                if upload.state == "ingested":
                    stored += (upload.result or {}).get("stored", 0)
                    continue
                if upload.state == "failed":
                    failed += 1
                    continue
                result = await self._file(ingest, source, batch, upload)
                async with self._pool().acquire() as conn, conn.transaction():
                    await batches.add_instances(conn, batch_id, upload.id, result.instances)
                    await self._store.set_result(
                        conn, upload.id, "ingested" if result.stored else "failed", result.summary()
                    )
                self._store.remove_file(upload.id)
                stored += result.stored
                failed += result.failed
        finally:
            renewing.cancel()
        state = "received" if stored else "failed"
        error = None if stored else "no file of the upload could be stored"
        async with self._pool().acquire() as conn:
            await batches.finish(conn, batch_id, self.owner, state, error)
        log.info(
            "upload taken in",
            extra={"upload_id": batch_id, "stored": stored, "failed": failed, "state": state},
        )

    async def _renew(self, batch_id: str) -> None:
        while True:
            await asyncio.sleep(batches.PROCESSING_LEASE_S / 4)
            async with self._pool().acquire() as conn:
                await batches.renew(conn, batch_id, self.owner)

    async def _file(
        self, ingest: Ingest, source: Source, batch: batches.Batch, upload: Upload
    ) -> FileResult:
        taking = FileIntake(ingest, source, batch, upload, self._wrapping)
        await taking.run(self._store.path(upload.id), self._limits)
        return taking.result


class FileIntake:
    """One uploaded file (a DICOM file, an image, a PDF or a ZIP of them) into ingest."""

    def __init__(
        self,
        ingest: Ingest,
        source: Source,
        batch: batches.Batch,
        upload: Upload,
        wrapping: asyncio.Semaphore,
    ) -> None:
        self._wrapping = wrapping
        self._ingest = ingest
        self._source = source
        self._batch = batch
        self._upload = upload
        self.result = FileResult(None)

    async def run(self, path: Path, limits: ArchiveLimits) -> None:
        f = await asyncio.to_thread(open, path, "rb")
        try:
            kind = sniff(await asyncio.to_thread(f.read, SNIFF_BYTES))
            await asyncio.to_thread(f.seek, 0)
            self.result.kind = kind
            if kind == "zip":
                await self._archive(path, limits)
            else:
                await self._one(f, kind, self._upload.filename or self._upload.id, 0)
        finally:
            f.close()

    async def _archive(self, path: Path, limits: ArchiveLimits) -> None:
        try:
            archive = await asyncio.to_thread(open_archive, path, limits)
        except ArchiveError as exc:
            self.result.add(self._upload.filename, None, Result(CANNOT_UNDERSTAND, str(exc)))
            return
        pending: set[asyncio.Future[None]] = set()
        with archive:
            for n, entry in enumerate(await asyncio.to_thread(lambda: list(archive.entries()))):
                member = await asyncio.to_thread(entry.open)
                try:
                    kind = sniff(await asyncio.to_thread(member.read, SNIFF_BYTES))
                finally:
                    member.close()
                member = await asyncio.to_thread(entry.open)
                pending.add(asyncio.ensure_future(self._one(member, kind, entry.name, n + 1)))
                if len(pending) >= MAX_IN_FLIGHT:
                    _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            await asyncio.gather(*pending)

    async def _one(self, f: IO[bytes], kind: Kind | None, name: str, n: int) -> None:
        """One file (or ZIP entry) into ingest; ``f`` is closed after."""
        result = self.result
        try:
            if kind == "dicom":
                stream = Part10Stream(self._ingest, self._source, study_instance_uid=None)
                while piece := await asyncio.to_thread(f.read, PIECE):
                    stream.feed(piece)
                outcome = await stream.finish()
                result.add(name, stream.sop_instance_uid, outcome)
            elif kind in ("jpeg", "png", "pdf"):
                async with self._wrapping:
                    await self._wrapped(f, kind, name, n)
            else:
                what = "a ZIP inside a ZIP" if kind == "zip" else NOT_A_KNOWN_KIND
                refused = self._ingest.refuse(CANNOT_UNDERSTAND, f"{name}: {what}")
                result.add(name, None, refused.result)
        except READ_ERRORS as exc:
            # A damaged file or ZIP entry (its bytes do not match its directory).
            result.add(name, None, Result(CANNOT_UNDERSTAND, f"cannot read: {exc}"))
        finally:
            f.close()

    async def _wrapped(self, f: IO[bytes], kind: Kind, name: str, n: int) -> None:
        batch, upload = self._batch, self._upload
        try:
            data = await asyncio.to_thread(f.read, MAX_WRAP_BYTES + 1)
            if len(data) > MAX_WRAP_BYTES:
                raise WrapError(f"over {MAX_WRAP_BYTES >> 20} MiB: too large to wrap")
            wrapped = await asyncio.to_thread(
                wrap,
                kind,
                data,
                study_form(batch),
                series_instance_uid=derived_uid(batch.id, "series", kind),
                sop_instance_uid=derived_uid(batch.id, upload.id, str(n)),
                instance_number=(upload.file_index or 0) * 10_000 + n + 1,
                filename=name,
            )
        except WrapError as exc:
            refused = self._ingest.refuse(CANNOT_UNDERSTAND, f"{name}: {exc}")
            self.result.add(name, None, refused.result)
            return
        stream = Part10Stream(self._ingest, self._source, study_instance_uid=None)
        stream.feed(
            build_header(
                wrapped.sop_class_uid, wrapped.sop_instance_uid, wrapped.transfer_syntax_uid, ""
            )
        )
        stream.feed(wrapped.dataset)
        self.result.add(name, wrapped.sop_instance_uid, await stream.finish())
