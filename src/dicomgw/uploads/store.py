"""The upload store: one row per uploaded file (table ``uploads``, owned here) and
its bytes in ``<storage root>/uploads/<id>``. tus and the upload session API
write the same rows: tus appends at ``offset``; the session API writes chunks in
any order, listed in ``chunks``, and ``offset`` follows the chunks that join it.

Durability: an offset or a chunk is committed here only after its bytes were
fsynced, so what was acknowledged survives a crash; bytes past the committed
offset are overwritten when the upload resumes.

One writer per upload at a time: a lease in the row (``writer``,
``writer_until``) that every API worker and node honours, renewed while a body
streams in; a crashed writer's lease lapses.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from dicomgw.storage.layout import DIR_MODE, FILE_MODE, StorageLayout

UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{16,64}\Z")
WRITER_LEASE_S = 60.0
"""A writer renews its lease well within this (api: every 15 s of a body)."""


def new_id() -> str:
    """An unguessable id (128 bits): it is the upload's URL."""
    return secrets.token_urlsafe(16)


@dataclass(frozen=True, slots=True)
class Upload:
    id: str
    batch_id: str | None
    file_index: int | None
    user_id: int | None
    filename: str
    length: int | None
    """None: not known yet (tus creation-defer-length)."""
    offset: int
    """Bytes from the start that are durable."""
    chunks: frozenset[int]
    metadata: dict[str, str]
    concat: str | None
    state: str
    """uploading, complete (every byte in), ingested or failed."""
    result: dict[str, Any] | None
    expires_at: dt.datetime
    chunk_size: int

    @property
    def complete(self) -> bool:
        return self.length is not None and self.offset >= self.length

    def chunk_count(self) -> int:
        return -(-(self.length or 0) // self.chunk_size)

    def chunk_range(self, index: int) -> tuple[int, int]:
        """(start, size) of chunk ``index`` of this file."""
        start = index * self.chunk_size
        return start, min(self.chunk_size, (self.length or 0) - start)

    def has_chunk(self, index: int) -> bool:
        start, size = self.chunk_range(index)
        return index in self.chunks or start + size <= self.offset

    def missing_chunks(self) -> list[int]:
        return [i for i in range(self.chunk_count()) if not self.has_chunk(i)]


SELECT = """
SELECT u.id, u.batch_id, u.file_index, u.user_id, u.filename, u.length, u."offset", u.chunks,
       u.metadata, u.concat, u.state, u.result, u.expires_at,
       coalesce(b.chunk_size, $2::integer) AS chunk_size
FROM uploads u LEFT JOIN upload_batches b ON b.id = u.batch_id
"""


def _upload(row: asyncpg.Record) -> Upload:
    return Upload(
        id=row["id"],
        batch_id=row["batch_id"],
        file_index=row["file_index"],
        user_id=row["user_id"],
        filename=row["filename"],
        length=row["length"],
        offset=row["offset"],
        chunks=frozenset(row["chunks"]),
        metadata=orjson.loads(row["metadata"]),
        concat=row["concat"],
        state=row["state"],
        result=orjson.loads(row["result"]) if row["result"] is not None else None,
        expires_at=row["expires_at"],
        chunk_size=row["chunk_size"],
    )


class UploadStore:
    def __init__(self, layout: StorageLayout, *, chunk_size: int, expire_s: int) -> None:
        self._dir = layout.uploads
        self.chunk_size = chunk_size
        self.expire_s = expire_s

    # -- files ---------------------------------------------------------------------

    def path(self, upload_id: str) -> Path:
        # NOTE: ids come from URLs; only ids of our own making name a file.
        if not UPLOAD_ID.match(upload_id):
            raise ValueError(f"not an upload id: {upload_id[:80]!r}")
        return self._dir / upload_id

    def create_file(self, upload_id: str) -> None:
        path = self.path(upload_id)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        except FileNotFoundError:
            self._dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        os.close(fd)

    def open_file(self, upload_id: str) -> int:
        return os.open(self.path(upload_id), os.O_RDWR | os.O_CLOEXEC)

    def remove_file(self, upload_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(upload_id))

    # -- rows ----------------------------------------------------------------------

    async def get(self, conn: asyncpg.Connection, upload_id: str) -> Upload | None:
        if not UPLOAD_ID.match(upload_id):
            return None
        row = await conn.fetchrow(SELECT + "WHERE u.id = $1", upload_id, self.chunk_size)
        return _upload(row) if row else None

    async def of_batch(self, conn: asyncpg.Connection, batch_id: str) -> list[Upload]:
        rows = await conn.fetch(
            SELECT + "WHERE u.batch_id = $1 ORDER BY u.file_index", batch_id, self.chunk_size
        )
        return [_upload(r) for r in rows]

    async def insert(
        self,
        conn: asyncpg.Connection,
        *,
        user_id: int | None,
        length: int | None,
        filename: str = "",
        metadata: dict[str, str] | None = None,
        concat: str | None = None,
        batch_id: str | None = None,
        file_index: int | None = None,
        offset: int = 0,
    ) -> str:
        """A new upload (its row; the caller creates its file, before or after)."""
        upload_id = new_id()
        complete = length is not None and offset >= length
        await conn.execute(
            "INSERT INTO uploads (id, batch_id, file_index, user_id, filename, length, "
            '"offset", metadata, concat, state, expires_at) '
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, "
            "now() + make_interval(secs => $11))",
            upload_id,
            batch_id,
            file_index,
            user_id,
            filename[:255],
            length,
            offset,
            orjson.dumps(metadata or {}).decode(),
            concat,
            "complete" if complete and concat != "partial" else "uploading",
            self.expire_s,
        )
        return upload_id

    async def bytes_in_flight(self, conn: asyncpg.Connection, user_id: int) -> int:
        """What this account's unfinished uploads hold or announced."""
        total = await conn.fetchval(
            'SELECT coalesce(sum(greatest(coalesce(length, 0), "offset")), 0) FROM uploads '
            "WHERE user_id = $1 AND state = 'uploading'",
            user_id,
        )
        return int(total)

    async def take_writer(self, conn: asyncpg.Connection, upload_id: str, token: str) -> bool:
        """The upload's writer lease, unless another writer holds it."""
        done = await conn.execute(
            "UPDATE uploads SET writer = $2, writer_until = now() + make_interval(secs => $3) "
            "WHERE id = $1 AND (writer IS NULL OR writer_until < now() OR writer = $2)",
            upload_id,
            token,
            WRITER_LEASE_S,
        )
        return bool(done == "UPDATE 1")

    async def renew_writer(self, conn: asyncpg.Connection, upload_id: str, token: str) -> bool:
        done = await conn.execute(
            "UPDATE uploads SET writer_until = now() + make_interval(secs => $3) "
            "WHERE id = $1 AND writer = $2",
            upload_id,
            token,
            WRITER_LEASE_S,
        )
        return bool(done == "UPDATE 1")

    async def release_writer(self, conn: asyncpg.Connection, upload_id: str, token: str) -> None:
        await conn.execute(
            "UPDATE uploads SET writer = NULL, writer_until = NULL WHERE id = $1 AND writer = $2",
            upload_id,
            token,
        )

    async def commit_offset(
        self,
        conn: asyncpg.Connection,
        upload_id: str,
        token: str,
        offset: int,
        *,
        length: int | None = None,
    ) -> Upload | None:
        """Record fsynced bytes up to ``offset`` (and a deferred length); the writer's
        lease ends. None: the lease was lost, nothing recorded."""
        row = await conn.fetchrow(
            'UPDATE uploads SET "offset" = $3, length = coalesce(length, $4), '
            "state = CASE WHEN coalesce(length, $4) <= $3 AND concat IS DISTINCT FROM 'partial' "
            "THEN 'complete' ELSE state END, "
            "writer = NULL, writer_until = NULL, updated_at = now(), "
            "expires_at = now() + make_interval(secs => $5) "
            "WHERE id = $1 AND writer = $2 AND state = 'uploading' RETURNING id",
            upload_id,
            token,
            offset,
            length,
            self.expire_s,
        )
        return None if row is None else await self.get(conn, upload_id)

    async def commit_chunk(self, conn: asyncpg.Connection, upload_id: str, index: int) -> Upload:
        """Record a fsynced chunk; ``offset`` moves over the chunks that now join it."""
        async with conn.transaction():
            row = await conn.fetchrow(
                SELECT + "WHERE u.id = $1 FOR UPDATE OF u", upload_id, self.chunk_size
            )
            upload = _upload(row)
            chunks = set(upload.chunks) | {index}
            offset = upload.offset
            while offset < (upload.length or 0):
                at = offset // upload.chunk_size
                if at not in chunks:
                    break
                offset = min(offset + upload.chunk_size, upload.length or 0)
            # Chunks under the offset are implied by it.
            kept = sorted(c for c in chunks if (c + 1) * upload.chunk_size > offset)
            await conn.execute(
                'UPDATE uploads SET chunks = $2, "offset" = $3, updated_at = now(), '
                "state = CASE WHEN $3 >= length THEN 'complete' ELSE state END, "
                "expires_at = now() + make_interval(secs => $4) WHERE id = $1",
                upload_id,
                kept,
                offset,
                self.expire_s,
            )
        updated = await self.get(conn, upload_id)
        assert updated is not None
        return updated

    async def fail(self, conn: asyncpg.Connection, upload_id: str, reason: str) -> None:
        await conn.execute(
            "UPDATE uploads SET state = 'failed', result = $2, writer = NULL, updated_at = now() "
            "WHERE id = $1",
            upload_id,
            orjson.dumps({"error": reason}).decode(),
        )

    async def delete(self, conn: asyncpg.Connection, upload_ids: list[str]) -> None:
        await conn.execute("DELETE FROM uploads WHERE id = ANY($1::text[])", upload_ids)

    async def expired(self, conn: asyncpg.Connection) -> list[str]:
        """Remove the rows of uploads untouched past their expiry; their ids (the
        caller removes the files)."""
        rows = await conn.fetch(
            "DELETE FROM uploads WHERE state = 'uploading' AND expires_at < now() RETURNING id"
        )
        return [r["id"] for r in rows]

    async def set_result(
        self, conn: asyncpg.Connection, upload_id: str, state: str, result: dict[str, Any]
    ) -> None:
        await conn.execute(
            "UPDATE uploads SET state = $2, result = $3, updated_at = now() WHERE id = $1",
            upload_id,
            state,
            orjson.dumps(result).decode(),
        )
