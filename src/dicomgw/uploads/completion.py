"""The uploader says an upload is complete: check that every byte is in, that the
files can be taken in at all, and that the study was not received recently (the
duplicate rule); then the batch is handed to intake.

The duplicate identity, my choice: the Study Instance UIDs the DICOM files carry
(a study received within ``uploads.duplicate_window_days``, by any way in,
counts); for images and PDFs, which carry none, a hash of the form's patient ID,
study date and modality, matched against earlier uploads. A DICOM file sent
with tus alone is one instance of a study whose other files come the same way:
it is a duplicate only if that instance (its SOP Instance UID) was received.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from dicomgw.uploads import batches
from dicomgw.uploads.archive import ArchiveLimits
from dicomgw.uploads.intake import form_identity, survey
from dicomgw.uploads.store import UploadStore


@dataclass(frozen=True, slots=True)
class Completion:
    started: bool = False
    missing: dict[str, list[int]] = field(default_factory=dict)
    """File name → chunks not received yet."""
    problems: list[str] = field(default_factory=list)
    """Files that cannot be taken in (not a known kind, a ZIP over its limits)."""
    form_missing: list[str] = field(default_factory=list)
    """Images or PDFs need these form fields."""
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    state: str | None = None
    """The batch was not uploading: its state."""


FORM_NEEDED_FOR_WRAPPING = ("patient_name", "patient_id")


async def complete(
    conn: asyncpg.Connection,
    store: UploadStore,
    batch: batches.Batch,
    *,
    owner: str,
    force: bool,
    window_days: int,
    limits: ArchiveLimits,
) -> Completion:
    if batch.state != "uploading":
        return Completion(state=batch.state)
    uploads = await store.of_batch(conn, batch.id)
    missing = {
        u.filename or u.id: u.missing_chunks() or [0]
        for u in uploads
        if not u.complete and u.state != "failed"
    }
    if missing or not uploads:
        return Completion(missing=missing or {"(no files)": []})
    taking = [u for u in uploads if u.state == "complete"]
    contents = await asyncio.to_thread(survey, store, taking, limits)
    if contents.problems:
        return Completion(problems=contents.problems)
    identity = [f"study:{uid}" for uid in sorted(contents.study_uids)]
    if contents.wrapped:
        lacking = [k for k in FORM_NEEDED_FOR_WRAPPING if not str(batch.form.get(k, "")).strip()]
        if lacking:
            return Completion(form_missing=lacking)
        identity.append(form_identity(batch.form))
    if window_days and not force:
        one_by_one = batch.auto_complete and not contents.archives and not contents.wrapped
        found = await batches.previous_receipts(
            conn,
            batch.id,
            [] if one_by_one else sorted(contents.study_uids),
            [k for k in identity if k.startswith("form:")],
            window_days,
            instance_uids=sorted(contents.instance_uids) if one_by_one else [],
        )
        if found:
            return Completion(duplicates=found)
    started = await batches.begin_processing(conn, batch.id, owner, identity, force)
    return Completion(started=started, state=None if started else "processing")


def describe(duplicates: list[dict[str, Any]]) -> str:
    """The duplicates in words (when, by whom), for a message or a log line."""
    said = []
    for found in duplicates:
        what = (
            f"study {found.get('study_instance_uid')}"
            if "upload_id" not in found
            else f"upload {found['upload_id']} (same patient ID, study date and modality)"
        )
        if "sop_instance_uid" in found:
            what = f"instance {found['sop_instance_uid']}"
        said.append(f"{what} received {found['received_at']} by {found['by'] or 'unknown'}")
    return "; ".join(said)
