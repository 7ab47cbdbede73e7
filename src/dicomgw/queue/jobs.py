"""Forward jobs: claim under a lease, finish with retry/backoff/dead-letter, and
the operator's actions (retry, cancel, replay).

This module owns the ``forward_jobs`` table: every change to a job goes through
it, save one: the index writer inserts an instance's new jobs in the statement
that inserts the instance (index/batcher.py), so that both commit together.

A worker claims due jobs with ``FOR UPDATE SKIP LOCKED`` in one short
transaction, marking them 'leased' until ``lease_expires_at``; it sends outside
any transaction, :func:`renew` s its leases while it sends, and records each
outcome with :func:`finish` as it arrives. A worker that dies leaves leased rows
behind; :func:`reclaim_expired` returns them to 'pending' once their lease has
run out, so no job is forgotten. A worker that could not renew in time (the
database was away longer than the lease) finds out from :func:`renew` or
:func:`finish` and does not send those jobs: an instance goes out twice at most
when a lease is lost during its own send.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import asyncpg

from dicomgw.db import channels


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    job_id: int
    attempts: int
    """Including this one."""
    instance_id: int
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    file_path: str
    """Relative to storage.root."""
    dataset_size: int
    checksum: str


class Result(Protocol):
    """What a sender reports for one job (dicomgw.send.delivery.Outcome)."""

    @property
    def kind(self) -> str: ...
    @property
    def status(self) -> int | None: ...
    @property
    def message(self) -> str: ...
    @property
    def warning(self) -> bool: ...
    @property
    def converted_to(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int
    """Transient failures before dead-letter."""
    permanent_attempts: int
    """Permanent failures (rejections) before dead-letter."""
    backoff_initial_s: float
    backoff_max_s: float

    def delay(self, attempts: int) -> float:
        """Exponential, capped, with jitter (half to full), so that a destination's
        jobs that failed together do not all come back at the same instant."""
        base = min(self.backoff_max_s, self.backoff_initial_s * 2.0 ** min(attempts - 1, 30))
        return base * random.uniform(0.5, 1.0)


CLAIM = """
WITH c AS (
    SELECT j.id, j.due_at, i.dataset_size
    FROM forward_jobs j JOIN instances i ON i.id = j.instance_id
    WHERE j.destination_id = $1 AND j.state = 'pending' AND j.due_at <= now()
    ORDER BY j.due_at, j.id
    LIMIT $3
    FOR UPDATE OF j SKIP LOCKED
), within AS (
    -- The oldest jobs whose data sets add up to at most $5 bytes (always the first).
    SELECT id FROM (
        SELECT id, sum(dataset_size) OVER (ORDER BY due_at, id) - dataset_size AS before
        FROM c
    ) sized
    WHERE before < $5
)
UPDATE forward_jobs j
SET state = 'leased', lease_owner = $2, lease_expires_at = now() + make_interval(secs => $4),
    attempts = j.attempts + 1, updated_at = now()
FROM within, instances i
WHERE j.id = within.id AND i.id = j.instance_id
RETURNING j.id, j.attempts, i.id AS instance_id, i.sop_class_uid, i.sop_instance_uid,
          i.transfer_syntax_uid, i.file_path, i.dataset_size, i.checksum, j.due_at
"""


async def claim(
    conn: asyncpg.Connection,
    destination_id: int,
    owner: str,
    limit: int,
    lease_s: float,
    *,
    max_bytes: int = 1 << 62,
) -> list[ClaimedJob]:
    """Up to ``limit`` due jobs of a destination, oldest first, leased to ``owner``:
    as many as fit in ``max_bytes`` of data sets, and at least one."""
    rows = await conn.fetch(CLAIM, destination_id, owner, limit, lease_s, max_bytes)
    rows = sorted(rows, key=lambda r: (r["due_at"], r["id"]))
    return [
        ClaimedJob(
            r["id"],
            r["attempts"],
            r["instance_id"],
            r["sop_class_uid"],
            r["sop_instance_uid"],
            r["transfer_syntax_uid"],
            r["file_path"],
            r["dataset_size"],
            r["checksum"],
        )
        for r in rows
    ]


async def renew(
    conn: asyncpg.Connection, owner: str, job_ids: Sequence[int], lease_s: float
) -> set[int]:
    """Extend ``owner``'s leases of ``job_ids`` by ``lease_s`` from now; the jobs it
    still held (the others expired and were taken, or were cancelled)."""
    rows = await conn.fetch(
        "UPDATE forward_jobs SET lease_expires_at = now() + make_interval(secs => $3) "
        "WHERE id = ANY($2::bigint[]) AND state = 'leased' AND lease_owner = $1 RETURNING id",
        owner,
        list(job_ids),
        lease_s,
    )
    return {r["id"] for r in rows}


FINISH = """
WITH r AS (
    SELECT * FROM unnest($2::bigint[], $3::text[], $4::integer[], $5::text[], $6::boolean[],
                         $7::text[], $8::float8[])
        AS r(id, kind, status, message, warning, converted_to, delay)
), s AS (
    SELECT r.*, CASE
            WHEN r.kind = 'delivered' THEN 'done'
            WHEN r.kind = 'permanent' AND j.permanent_failures + 1 >= $9 THEN 'dead'
            WHEN r.kind = 'transient' AND j.attempts >= $10 THEN 'dead'
            ELSE 'pending' END AS new_state
    FROM r JOIN forward_jobs j ON j.id = r.id
), done AS (
    UPDATE forward_jobs j SET
        state = s.new_state,
        permanent_failures = j.permanent_failures + (s.kind = 'permanent')::int,
        due_at = CASE WHEN s.new_state = 'pending'
                      THEN now() + make_interval(secs => s.delay) ELSE j.due_at END,
        last_status = s.status,
        last_error = CASE WHEN s.kind = 'delivered' THEN NULL ELSE s.message END,
        warning = CASE WHEN s.warning THEN s.message END,
        converted_to = s.converted_to,
        finished_at = CASE WHEN s.new_state IN ('done', 'dead') THEN now() END,
        lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
    FROM s
    WHERE j.id = s.id AND j.state = 'leased' AND j.lease_owner = $1
    RETURNING j.id, j.state
), attempts AS (
    -- A job deleted meanwhile (its study was deleted by an admin) gets no attempt
    -- row: the foreign key would fail the whole batch. (A delete committing during
    -- this very statement can still fail it; the batch is then retried.)
    INSERT INTO forward_attempts (job_id, outcome, status, message, worker)
    SELECT r.id, r.kind, r.status, nullif(r.message, ''), $1
    FROM r JOIN forward_jobs j ON j.id = r.id
)
SELECT id, state FROM done
"""


async def finish(
    conn: asyncpg.Connection,
    owner: str,
    results: Sequence[tuple[ClaimedJob, Result]],
    policy: RetryPolicy,
) -> dict[int, str]:
    """Record outcomes of jobs leased to ``owner``; {job id: new state}.

    A job whose lease was lost meanwhile (expired and claimed again, or cancelled)
    is not touched: its attempt is still recorded.
    """
    rows = await conn.fetch(
        FINISH,
        owner,
        [job.job_id for job, _ in results],
        [r.kind for _, r in results],
        [r.status for _, r in results],
        [r.message for _, r in results],
        [r.warning for _, r in results],
        [r.converted_to for _, r in results],
        [policy.delay(job.attempts) for job, _ in results],
        policy.permanent_attempts,
        policy.max_attempts,
    )
    return {r["id"]: r["state"] for r in rows}


async def reclaim_expired(conn: asyncpg.Connection) -> int:
    """Return jobs whose worker's lease ran out to 'pending'; how many."""
    rows = await conn.fetch(
        "UPDATE forward_jobs SET state = 'pending', lease_owner = NULL, "
        "lease_expires_at = NULL, updated_at = now() "
        "WHERE state = 'leased' AND lease_expires_at < now() RETURNING destination_id"
    )
    for destination_id in {r["destination_id"] for r in rows}:
        await notify(conn, destination_id)
    return len(rows)


async def lease_owners(conn: asyncpg.Connection) -> list[str]:
    """The workers that hold leases now."""
    rows = await conn.fetch(
        "SELECT DISTINCT lease_owner FROM forward_jobs "
        "WHERE state = 'leased' AND lease_owner IS NOT NULL"
    )
    return [r["lease_owner"] for r in rows]


async def release_owners(conn: asyncpg.Connection, owners: Sequence[str]) -> int:
    """Return the leased jobs of ``owners`` (workers known dead) to 'pending' now,
    not when their leases run out; how many."""
    rows = await conn.fetch(
        "UPDATE forward_jobs SET state = 'pending', lease_owner = NULL, "
        "lease_expires_at = NULL, updated_at = now() "
        "WHERE state = 'leased' AND lease_owner = ANY($1::text[]) "
        "RETURNING destination_id",
        list(owners),
    )
    for destination_id in {r["destination_id"] for r in rows}:
        await notify(conn, destination_id)
    return len(rows)


async def state_for_update(conn: asyncpg.Connection, job_id: int) -> str | None:
    """A job's state, the row locked until the transaction ends; None if there is none."""
    state: str | None = await conn.fetchval(
        "SELECT state FROM forward_jobs WHERE id = $1 FOR UPDATE", job_id
    )
    return state


async def next_due(conn: asyncpg.Connection, destination_id: int) -> float | None:
    """Seconds until the destination's next pending job is due (0 if one is);
    None when it has none."""
    # NOTE: greatest() ignores NULLs: without the CASE, "no pending job" would
    # read as "one due now" and an idle worker would spin.
    value: float | None = await conn.fetchval(
        "SELECT CASE WHEN min(due_at) IS NOT NULL "
        "THEN greatest(0, extract(epoch FROM min(due_at) - now()))::float8 END "
        "FROM forward_jobs WHERE destination_id = $1 AND state = 'pending'",
        destination_id,
    )
    return value


async def notify(conn: asyncpg.Connection, destination_id: int) -> None:
    await conn.execute("SELECT pg_notify($1, $2)", channels.JOBS, str(destination_id))


# -- operator actions -------------------------------------------------------------

_REQUEUE = """
UPDATE forward_jobs SET state = 'pending', due_at = now(), attempts = 0,
    permanent_failures = 0, lease_owner = NULL, lease_expires_at = NULL,
    finished_at = NULL, updated_at = now()
"""


async def _requeued(conn: asyncpg.Connection, rows: Sequence[asyncpg.Record]) -> int:
    for destination_id in {r["destination_id"] for r in rows}:
        await notify(conn, destination_id)
    return len(rows)


async def retry(conn: asyncpg.Connection, job_ids: Sequence[int]) -> int:
    """Dead, cancelled or waiting jobs due again now, with fresh attempt budgets."""
    rows = await conn.fetch(
        _REQUEUE + "WHERE id = ANY($1::bigint[]) AND state IN ('dead', 'cancelled', 'pending') "
        "RETURNING destination_id",
        list(job_ids),
    )
    return await _requeued(conn, rows)


async def retry_dead(conn: asyncpg.Connection, destination_id: int) -> int:
    rows = await conn.fetch(
        _REQUEUE + "WHERE destination_id = $1 AND state = 'dead' RETURNING destination_id",
        destination_id,
    )
    return await _requeued(conn, rows)


PURGE = """
DELETE FROM forward_jobs WHERE id IN (
    SELECT id FROM forward_jobs
    WHERE state IN ('done', 'cancelled') AND finished_at < now() - make_interval(days => $1)
    LIMIT $2 FOR UPDATE SKIP LOCKED
)
"""


async def purge_history(conn: asyncpg.Connection, days: int, batch: int = 5000) -> int:
    """Delete up to ``batch`` jobs delivered or cancelled more than ``days`` ago
    (their attempts go with them); returns how many. Short statements, so that a
    large backlog never holds locks for long: call again while it returns ``batch``."""
    result: str = await conn.execute(PURGE, days, batch)
    return int(result.rsplit(maxsplit=1)[-1])


async def cancel(conn: asyncpg.Connection, job_ids: Sequence[int]) -> int:
    """Cancel jobs not yet finished (a send in flight completes, its result is dropped)."""
    result: str = await conn.execute(
        "UPDATE forward_jobs SET state = 'cancelled', lease_owner = NULL, "
        "lease_expires_at = NULL, finished_at = now(), updated_at = now() "
        "WHERE id = ANY($1::bigint[]) AND state IN ('pending', 'leased', 'dead')",
        list(job_ids),
    )
    return int(result.rsplit(maxsplit=1)[-1])


async def replay(
    conn: asyncpg.Connection,
    destination_id: int,
    *,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
) -> int:
    """New jobs sending a study's or series' instances (their newest versions) again."""
    if (study_instance_uid is None) == (series_instance_uid is None):
        raise ValueError("replay takes a study or a series")
    count: int = await conn.fetchval(
        """
        WITH latest AS (
            SELECT DISTINCT ON (i.sop_instance_uid) i.id
            FROM instances i JOIN series se ON se.id = i.series_id
            JOIN studies st ON st.id = se.study_id
            WHERE st.study_instance_uid = $2 OR se.series_instance_uid = $3
            ORDER BY i.sop_instance_uid, i.version DESC
        ), ins AS (
            INSERT INTO forward_jobs (instance_id, destination_id)
            SELECT id, $1 FROM latest RETURNING 1
        )
        SELECT count(*) FROM ins
        """,
        destination_id,
        study_instance_uid,
        series_instance_uid,
    )
    if count:
        await notify(conn, destination_id)
    return count


async def set_paused(conn: asyncpg.Connection, destination_id: int, paused: bool) -> bool:
    """Pause or resume a destination; False if there is no such destination."""
    result: str = await conn.execute(
        "UPDATE destinations SET paused = $2, updated_at = now() WHERE id = $1",
        destination_id,
        paused,
    )
    await conn.execute(f"NOTIFY {channels.ROUTING}")
    if not paused:
        await notify(conn, destination_id)
    return result.endswith(" 1")
