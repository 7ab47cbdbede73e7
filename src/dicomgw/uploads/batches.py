"""Uploads of a study (table ``upload_batches``, owned here, with
``upload_instances``): the form that describes the files, the state the uploader
sees (uploading → processing → received → forwarded, or failed), and which
worker takes the files in (a lease, so a crashed worker's batch is taken over).

"Forwarded" is read from the forward jobs of the instances the upload stored:
all done. It is not stored; the jobs are the one record of delivery.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from dicomgw.uploads.store import new_id

PROCESSING_LEASE_S = 120.0


@dataclass(frozen=True, slots=True)
class Batch:
    id: str
    user_id: int | None
    username: str
    source_ip: str | None
    form: dict[str, Any]
    chunk_size: int
    state: str
    auto_complete: bool
    force: bool
    error: str | None
    created_at: dt.datetime
    completed_at: dt.datetime | None
    processed_at: dt.datetime | None
    expires_at: dt.datetime


def _batch(row: asyncpg.Record) -> Batch:
    return Batch(
        id=row["id"],
        user_id=row["user_id"],
        username=row["username"],
        source_ip=str(row["source_ip"]) if row["source_ip"] is not None else None,
        form=orjson.loads(row["form"]),
        chunk_size=row["chunk_size"],
        state=row["state"],
        auto_complete=row["auto_complete"],
        force=row["force"],
        error=row["error"],
        created_at=row["created_at"],
        completed_at=row["completed_at"],
        processed_at=row["processed_at"],
        expires_at=row["expires_at"],
    )


COLUMNS = (
    "id, user_id, username, source_ip, form, chunk_size, state, auto_complete, force, error, "
    "created_at, completed_at, processed_at, expires_at"
)


async def create(
    conn: asyncpg.Connection,
    *,
    user_id: int | None,
    username: str,
    source_ip: str | None,
    form: dict[str, Any],
    chunk_size: int,
    expire_s: int,
    auto_complete: bool = False,
) -> str:
    batch_id = new_id()
    await conn.execute(
        "INSERT INTO upload_batches (id, user_id, username, source_ip, form, chunk_size, "
        "auto_complete, expires_at) VALUES ($1, $2, $3, $4::inet, $5, $6, $7, "
        "now() + make_interval(secs => $8))",
        batch_id,
        user_id,
        username,
        source_ip,
        orjson.dumps(form).decode(),
        chunk_size,
        auto_complete,
        expire_s,
    )
    return batch_id


async def get(conn: asyncpg.Connection, batch_id: str) -> Batch | None:
    row = await conn.fetchrow(f"SELECT {COLUMNS} FROM upload_batches WHERE id = $1", batch_id)
    return _batch(row) if row else None


async def listing(
    conn: asyncpg.Connection, user_id: int | None, *, limit: int, before: dt.datetime | None
) -> list[Batch]:
    """Newest first; ``user_id`` None: everyone's."""
    rows = await conn.fetch(
        f"SELECT {COLUMNS} FROM upload_batches "
        "WHERE ($1::bigint IS NULL OR user_id = $1) "
        "AND ($3::timestamptz IS NULL OR created_at < $3) "
        "ORDER BY created_at DESC LIMIT $2",
        user_id,
        limit,
        before,
    )
    return [_batch(r) for r in rows]


async def begin_processing(
    conn: asyncpg.Connection, batch_id: str, owner: str, identity: list[str], force: bool
) -> bool:
    """uploading → processing, leased by ``owner``; False if it was not uploading."""
    done = await conn.execute(
        "UPDATE upload_batches SET state = 'processing', identity = $3, force = $4, "
        "completed_at = now(), processing_owner = $2, "
        "processing_until = now() + make_interval(secs => $5) "
        "WHERE id = $1 AND state = 'uploading'",
        batch_id,
        owner,
        identity,
        force,
        PROCESSING_LEASE_S,
    )
    return bool(done == "UPDATE 1")


async def renew(conn: asyncpg.Connection, batch_id: str, owner: str) -> bool:
    done = await conn.execute(
        "UPDATE upload_batches SET processing_until = now() + make_interval(secs => $3) "
        "WHERE id = $1 AND processing_owner = $2 AND state = 'processing'",
        batch_id,
        owner,
        PROCESSING_LEASE_S,
    )
    return bool(done == "UPDATE 1")


async def claim_stalled(conn: asyncpg.Connection, owner: str) -> list[str]:
    """Batches whose worker stopped mid-way (its lease lapsed), now ``owner``'s."""
    rows = await conn.fetch(
        "UPDATE upload_batches SET processing_owner = $1, "
        "processing_until = now() + make_interval(secs => $2) "
        "WHERE id IN (SELECT id FROM upload_batches WHERE state = 'processing' "
        "AND processing_until < now() FOR UPDATE SKIP LOCKED) RETURNING id",
        owner,
        PROCESSING_LEASE_S,
    )
    return [r["id"] for r in rows]


async def add_instances(
    conn: asyncpg.Connection, batch_id: str, upload_id: str, sop_instance_uids: list[str]
) -> None:
    await conn.execute(
        "INSERT INTO upload_instances (batch_id, sop_instance_uid, upload_id) "
        "SELECT $1, unnest($2::text[]), $3 ON CONFLICT DO NOTHING",
        batch_id,
        sop_instance_uids,
        upload_id,
    )


async def finish(
    conn: asyncpg.Connection, batch_id: str, owner: str, state: str, error: str | None
) -> None:
    await conn.execute(
        "UPDATE upload_batches SET state = $3, error = $4, processed_at = now(), "
        "processing_owner = NULL, processing_until = NULL "
        "WHERE id = $1 AND processing_owner = $2",
        batch_id,
        owner,
        state,
        error,
    )


async def note(conn: asyncpg.Connection, batch_id: str, error: str) -> None:
    """Why an upload waits (it stays uploading)."""
    await conn.execute("UPDATE upload_batches SET error = $2 WHERE id = $1", batch_id, error[:2000])


async def cancel(conn: asyncpg.Connection, batch_id: str, reason: str) -> bool:
    done = await conn.execute(
        "UPDATE upload_batches SET state = 'cancelled', error = $2 "
        "WHERE id = $1 AND state = 'uploading'",
        batch_id,
        reason,
    )
    return bool(done == "UPDATE 1")


async def expired(conn: asyncpg.Connection) -> list[str]:
    """Batches still uploading past their expiry become cancelled; their ids."""
    rows = await conn.fetch(
        "UPDATE upload_batches SET state = 'cancelled', error = 'expired: no upload activity' "
        "WHERE state = 'uploading' AND expires_at < now() "
        "AND NOT EXISTS (SELECT 1 FROM uploads u WHERE u.batch_id = upload_batches.id "
        "AND u.expires_at >= now()) RETURNING id"
    )
    return [r["id"] for r in rows]


FORWARDING = """
SELECT count(DISTINCT ui.sop_instance_uid) AS instances,
       count(j.id) AS jobs,
       count(j.id) FILTER (WHERE j.state = 'done') AS done,
       count(j.id) FILTER (WHERE j.state = 'dead') AS dead,
       count(j.id) FILTER (WHERE j.state IN ('pending', 'leased')) AS pending
FROM upload_instances ui
JOIN instances i ON i.sop_instance_uid = ui.sop_instance_uid
LEFT JOIN forward_jobs j ON j.instance_id = i.id
WHERE ui.batch_id = $1
"""


async def forwarding(conn: asyncpg.Connection, batch_id: str) -> dict[str, int]:
    row = await conn.fetchrow(FORWARDING, batch_id)
    return {key: int(row[key]) for key in ("instances", "jobs", "done", "dead", "pending")}


def shown_state(batch: Batch, forward: dict[str, int]) -> str:
    """The state the uploader sees: received becomes forwarded when every forward
    job of its instances is done, failed when one is dead-lettered."""
    if batch.state != "received" or not forward["jobs"]:
        return batch.state
    if forward["dead"]:
        return "failed"
    return "forwarded" if forward["done"] == forward["jobs"] else "received"


async def previous_receipts(
    conn: asyncpg.Connection,
    batch_id: str,
    study_uids: list[str],
    identity: list[str],
    window_days: int,
    *,
    instance_uids: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Studies among ``study_uids`` (instances among ``instance_uids``) received
    within the window, and earlier uploads with one of the same ``identity`` keys:
    when, and by whom."""
    found: list[dict[str, Any]] = []
    if instance_uids:
        rows = await conn.fetch(
            "SELECT sop_instance_uid, max(received_at) AS at, "
            "(array_agg(coalesce(source_user, source_ae, host(source_ip)) "
            " ORDER BY received_at DESC))[1] AS by "
            "FROM instances WHERE sop_instance_uid = ANY($1::text[]) "
            "AND received_at > now() - make_interval(days => $2) GROUP BY sop_instance_uid",
            instance_uids,
            window_days,
        )
        found += [
            {"sop_instance_uid": r["sop_instance_uid"], "received_at": r["at"].isoformat(),
             "by": r["by"]}
            for r in rows
        ]  # fmt: skip
    if study_uids:
        rows = await conn.fetch(
            "SELECT s.study_instance_uid, s.last_received_at, "
            "(SELECT coalesce(i.source_user, i.source_ae, host(i.source_ip)) "
            " FROM series se JOIN instances i ON i.series_id = se.id "
            " WHERE se.study_id = s.id ORDER BY i.received_at DESC LIMIT 1) AS by "
            "FROM studies s WHERE s.study_instance_uid = ANY($1::text[]) "
            "AND s.last_received_at > now() - make_interval(days => $2)",
            study_uids,
            window_days,
        )
        found += [
            {
                "study_instance_uid": r["study_instance_uid"],
                "received_at": r["last_received_at"].isoformat(),
                "by": r["by"],
            }
            for r in rows
        ]
    if identity:
        rows = await conn.fetch(
            "SELECT id, username, completed_at FROM upload_batches "
            "WHERE identity && $1::text[] AND id <> $2 "
            "AND state IN ('processing', 'received', 'forwarded') "
            "AND completed_at > now() - make_interval(days => $3) "
            "ORDER BY completed_at DESC LIMIT 5",
            identity,
            batch_id,
            window_days,
        )
        found += [
            {
                "upload_id": r["id"],
                "received_at": r["completed_at"].isoformat(),
                "by": r["username"],
            }
            for r in rows
        ]
    return found
