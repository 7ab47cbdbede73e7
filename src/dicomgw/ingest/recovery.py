"""Start-up recovery: what a crash (kill -9, power loss) can leave behind; and,
while running, the files kept after an index COMMIT that may not have
happened (:class:`Unconfirmed`).

- ``deletions/*.json``: a study deletion whose files were not all removed yet;
  settled first (the files no index row points to are removed), so that a
  deleted study is never indexed again as orphans. A manifest that cannot be
  settled keeps its files out of the orphan search.
- ``incoming/*.part``: an instance that was never acknowledged; removed.
- a complete object under ``objects/`` that the index lacks: the crash came
  between the rename and the index COMMIT, so the peer may or may not have
  seen Success; it is verified and indexed (event ``recovered``). One that
  does not verify, or whose SOP Instance UID is indexed with other bytes and
  refused by ``duplicate_policy: reject``, is moved to ``quarantine/`` for an
  operator: recovery deletes only what is stored and indexed elsewhere. Only recent
  day directories are listed (:func:`candidates`), so start-up does not grow
  with the archive.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import asyncpg

from dicomgw._core import crc32c
from dicomgw.errors import DicomGwError
from dicomgw.index import records as tags
from dicomgw.index.batcher import IndexBatcher, IndexUnavailable
from dicomgw.index.records import Attributes, InstanceRecord, Provenance, build_record
from dicomgw.ingest.dataset import CHECKSUM_PREFIX, scan
from dicomgw.storage import deletions
from dicomgw.storage.layout import StorageLayout
from dicomgw.storage.part10 import parse_file_meta
from dicomgw.storage.spool import OBJECT_SUFFIX, PART_SUFFIX

log = logging.getLogger(__name__)

HEAD_BYTES = 65536
READ_CHUNK = 4 * 1024 * 1024
# Well above the index deadline (statement timeout + connect timeout).
RECOVERY_MARGIN = dt.timedelta(hours=1)
# Unconfirmed commits: first look after 1 s, then 2, 4, ... at most every 30 s.
SETTLE_FIRST_S = 1.0
SETTLE_MAX_S = 30.0


async def recover(
    layout: StorageLayout, pool: asyncpg.Pool, batcher: IndexBatcher
) -> dict[str, int]:
    counts = {"partial_removed": 0, "recovered": 0, "quarantined": 0, "deleted_removed": 0}
    unsettled = await _settle_deletions(layout, pool, counts)
    for part in layout.incoming.glob(f"*{PART_SUFFIX}"):
        part.unlink(missing_ok=True)
        counts["partial_removed"] += 1
    async with pool.acquire() as conn:
        newest: dt.datetime | None = await conn.fetchval("SELECT max(received_at) FROM instances")
    on_disk = {
        str(path.relative_to(layout.root)) for path in candidates(layout.objects, newest)
    } - unsettled
    if on_disk:
        async with pool.acquire() as conn:
            indexed = {
                r["file_path"]
                for r in await conn.fetch(
                    "SELECT file_path FROM instances WHERE file_path = ANY($1::text[])",
                    list(on_disk),
                )
            }
        for relative in sorted(on_disk - indexed):
            await settle_object(layout, relative, batcher, counts)
    if any(counts.values()):
        log.warning("storage recovery", extra=counts)
    return counts


async def settle_object(
    layout: StorageLayout, relative: str, batcher: IndexBatcher, counts: dict[str, int]
) -> str:
    """An object under objects/ that no index row points to: verified and
    indexed (``recovered``), removed if the same bytes are indexed under
    another file (``duplicate``), or ``quarantined``; which, is returned.
    Raises IndexUnavailable (then nothing changed)."""
    try:
        record = read_record(layout.root, relative)
    except (OSError, DicomGwError) as exc:
        _quarantine(layout, relative, counts, "unindexed object does not verify", exc)
        return "quarantined"
    outcome = await batcher.index(record)
    if outcome.kind == "duplicate":  # the same bytes are stored and indexed
        (layout.root / relative).unlink()
        return "duplicate"
    if outcome.kind == "conflict":
        # NOTE: other bytes under an indexed SOP Instance UID, refused by
        # duplicate_policy: reject. It may be a version kept under
        # keep-both (a rebuild of such an archive), so it is kept aside,
        # never deleted.
        _quarantine(layout, relative, counts, "unindexed object conflicts with the index")
        return "quarantined"
    counts["recovered"] += 1
    return "recovered"


class Unconfirmed:
    """Files kept when the index COMMIT of their instance may or may not have
    happened (the connection broke during it): settled as soon as the database
    answers again, not only at the next start.

    The sender was answered 0xA700 and will most likely send the instance
    again; if it never does, the kept file is indexed here (event
    ``recovered``) with its forward jobs, so nothing received is forgotten.
    """

    def __init__(self, layout: StorageLayout, pool: asyncpg.Pool, batcher: IndexBatcher) -> None:
        self._layout = layout
        self._pool = pool
        self._batcher = batcher
        self._pending: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def add(self, relative: str) -> None:
        self._pending.add(relative)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._settle_all(), name="unconfirmed-commits"
            )

    async def close(self) -> None:
        """What is left is settled by the next start's recovery."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _settle_all(self) -> None:
        delay = SETTLE_FIRST_S
        while self._pending:
            await asyncio.sleep(delay)
            delay = min(delay * 2, SETTLE_MAX_S)
            try:
                await self._settle()
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                continue  # the database is still away
            except IndexUnavailable:
                continue

    async def _settle(self) -> None:
        pending = sorted(self._pending)
        async with self._pool.acquire() as conn:
            indexed = {
                r["file_path"]
                for r in await conn.fetch(
                    "SELECT file_path FROM instances WHERE file_path = ANY($1::text[])", pending
                )
            }
        counts = {"recovered": 0, "quarantined": 0}
        for relative in pending:
            outcome = "committed"
            if relative not in indexed:
                outcome = await settle_object(self._layout, relative, self._batcher, counts)
            self._pending.discard(relative)
            log.warning(
                "unconfirmed index commit settled", extra={"file": relative, "outcome": outcome}
            )


def _quarantine(
    layout: StorageLayout,
    relative: str,
    counts: dict[str, int],
    why: str,
    exc: Exception | None = None,
) -> None:
    os.rename(layout.root / relative, layout.quarantine / Path(relative).name)
    counts["quarantined"] += 1
    extra = {"file": relative, "quarantine": str(layout.quarantine)}
    log.error(f"{why}: quarantined", extra=extra | ({"error": str(exc)} if exc else {}))


async def _settle_deletions(
    layout: StorageLayout, pool: asyncpg.Pool, counts: dict[str, int]
) -> set[str]:
    """Finish interrupted study deletions; the files of those that cannot be."""

    async def still_indexed(files: list[str]) -> set[str]:
        async with pool.acquire() as conn:
            return {r["file_path"] for r in await conn.fetch(deletions.STILL_INDEXED, files)}

    unsettled: set[str] = set()
    for manifest in deletions.pending(layout.deletions):
        try:
            counts["deleted_removed"] += await deletions.settle(
                layout.root, manifest, still_indexed, fsync=True
            )
        except deletions.FilesNotRemoved as exc:
            log.error("deleted files not removed", extra={"error": str(exc)})
            unsettled.update(manifest.files)
    return unsettled


def candidates(objects: Path, newest: dt.datetime | None) -> Iterator[Path]:
    """Objects that can be missing from the index.

    An orphan is renamed into place at most the index deadline before the
    crash, so before the last committed row plus that deadline. Only the day
    directories (objects/yyyy/mm/dd, UTC) from the newest indexed instance
    minus RECOVERY_MARGIN on are listed; an empty index lists everything (a
    rebuild).
    """
    if newest is None:
        yield from objects.rglob(f"*{OBJECT_SUFFIX}")
        return
    since = newest - RECOVERY_MARGIN
    day, today = since.date(), dt.datetime.now(dt.UTC).date()
    while day <= today:
        directory = objects / day.strftime("%Y/%m/%d")
        for path in directory.rglob(f"*{OBJECT_SUFFIX}"):
            if path.stat().st_mtime >= since.timestamp():
                yield path
        day += dt.timedelta(days=1)


def read_record(root: Path, relative: str) -> InstanceRecord:
    """An index record from a stored file (the slow path: it is read whole)."""
    path = root / relative
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
        meta = parse_file_meta(head)
        f.seek(meta.dataset_offset)
        crc = 0
        dataset_head = b""
        while chunk := f.read(READ_CHUNK):
            if len(dataset_head) < HEAD_BYTES:
                dataset_head += chunk[: HEAD_BYTES - len(dataset_head)]
            crc = crc32c(chunk, crc)
        size = f.tell()
    dataset_size = size - meta.dataset_offset
    a = Attributes(scan(dataset_head, dataset_size, meta.transfer_syntax_uid))
    uid = a.ascii(tags.SOP_INSTANCE_UID)
    if uid != meta.media_storage_sop_instance_uid:
        raise DicomGwError("SOP Instance UID of the data set differs from the file meta")
    if not a.ascii(tags.STUDY_INSTANCE_UID) or not a.ascii(tags.SERIES_INSTANCE_UID):
        raise DicomGwError("Study or Series Instance UID missing")
    return build_record(
        a,
        Provenance(
            sop_instance_uid=uid,
            sop_class_uid=meta.media_storage_sop_class_uid,
            transfer_syntax_uid=meta.transfer_syntax_uid,
            file_path=relative,
            size_bytes=size,
            dataset_size=dataset_size,
            checksum=f"{CHECKSUM_PREFIX}{crc:08x}",
            source_ae=meta.source_ae_title,
            called_ae=None,
            source_ip=None,
            association_id=None,
            received_at=dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC),
            event="recovered",
        ),
    )
