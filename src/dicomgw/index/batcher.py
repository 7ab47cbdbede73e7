"""The index writer: instances are indexed in batches, one transaction each.

Receivers ``await index(record)``; a single task gathers what is waiting (up
to ``batch_size``, or for at most ``max_delay_s`` after the first), puts it
into a temporary staging table and upserts studies, series, instances and
ingest events from there in one transaction. The forward jobs the routing rules
give a new instance are created in that same transaction, so no acknowledged
instance is ever without its jobs. The caller's future resolves only after
COMMIT, so Success is never sent for an instance the index does not hold.
Concurrent associations share transactions (group commit).

Two ways in, same rows: a batch of new UIDs (the common case) is one statement
in autocommit, its arrays unnested into the staging table by a session
function; a batch with a UID already indexed, or with one UID twice, takes an
explicit transaction that COPYs and decides duplicates and versions here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import asyncpg

from dicomgw.db import channels
from dicomgw.errors import DicomGwError
from dicomgw.index.records import COLUMNS, STAGING_COLUMNS, InstanceRecord, JobRoute

log = logging.getLogger(__name__)

DuplicatePolicy = Literal["reject", "keep-both"]
# (stored file path, new file path, data set size) -> are the data sets byte-equal?
SameContent = Callable[[str, str, int], Awaitable[bool]]
# The forward jobs a newly stored instance gets (routing rules, evaluated at ingest).
Router = Callable[[InstanceRecord], Sequence[JobRoute]]

# PERF: not ON COMMIT DELETE ROWS: truncating at each COMMIT also truncates and
# rewrites the file of the table's TOAST index, which ext4 then writes back on
# close (auto_da_alloc): ~0.3 ms per batch (strace, 22 Nov). The index function
# deletes the rows it staged instead, and the writer vacuums the table
# (autovacuum skips temporary tables).
STAGING_DDL = f"""
CREATE TEMP TABLE IF NOT EXISTS staging_instances (
    version integer, event text,
    {", ".join(f"{name} {sql_type}" for name, sql_type in STAGING_COLUMNS)},
    -- The instance's forward jobs, one array element per job (JobRoute).
    rule_ids bigint[], destination_ids bigint[], delays integer[], hold_keys text[]
)
"""
# Instances indexed between two vacuums of the staging table: enough to make the
# vacuum (~0.5 ms) rare, few enough that its dead rows stay a few dozen pages.
STAGING_VACUUM_EVERY = 1024


def _latest(column: str) -> str:
    """The value of the most recent instance that has one."""
    return f"(array_agg({column} ORDER BY seq DESC) FILTER (WHERE {column} IS NOT NULL))[1]"


_STUDY_ATTRS = (
    "patient_id",
    "patient_name",
    "patient_birth_date",
    "patient_sex",
    "study_date",
    "study_time",
    "accession_number",
    "study_description",
    "referring_physician_name",
)
_SERIES_ATTRS = ("modality", "series_number", "series_description")

UPSERT_STUDIES = f"""
INSERT INTO studies AS s (study_instance_uid, {", ".join(_STUDY_ATTRS)}, modalities,
                          num_instances, size_bytes, first_received_at, last_received_at)
SELECT study_instance_uid, {", ".join(_latest(a) for a in _STUDY_ATTRS)},
       coalesce(array_agg(DISTINCT modality) FILTER (WHERE modality IS NOT NULL), '{{}}'),
       count(*), sum(size_bytes), min(received_at), max(received_at)
FROM staging_instances GROUP BY study_instance_uid
ON CONFLICT (study_instance_uid) DO UPDATE SET
    {", ".join(f"{a} = coalesce(EXCLUDED.{a}, s.{a})" for a in _STUDY_ATTRS)},
    modalities = ARRAY(SELECT DISTINCT m FROM unnest(s.modalities || EXCLUDED.modalities) m
                       ORDER BY m),
    num_instances = s.num_instances + EXCLUDED.num_instances,
    size_bytes = s.size_bytes + EXCLUDED.size_bytes,
    first_received_at = least(s.first_received_at, EXCLUDED.first_received_at),
    last_received_at = greatest(s.last_received_at, EXCLUDED.last_received_at)
"""

UPSERT_SERIES = f"""
INSERT INTO series AS r (study_id, series_instance_uid, {", ".join(_SERIES_ATTRS)},
                         num_instances, first_received_at, last_received_at)
SELECT st.id, g.series_instance_uid, {", ".join(f"g.{a}" for a in _SERIES_ATTRS)},
       g.n, g.first_at, g.last_at
FROM (SELECT series_instance_uid, min(study_instance_uid) AS study_instance_uid,
             {", ".join(f"{_latest(a)} AS {a}" for a in _SERIES_ATTRS)},
             count(*) AS n, min(received_at) AS first_at, max(received_at) AS last_at
      FROM staging_instances GROUP BY series_instance_uid) g
JOIN studies st ON st.study_instance_uid = g.study_instance_uid
ON CONFLICT (series_instance_uid) DO UPDATE SET
    {", ".join(f"{a} = coalesce(EXCLUDED.{a}, r.{a})" for a in _SERIES_ATTRS)},
    num_instances = r.num_instances + EXCLUDED.num_instances,
    first_received_at = least(r.first_received_at, EXCLUDED.first_received_at),
    last_received_at = greatest(r.last_received_at, EXCLUDED.last_received_at)
"""

COUNT_SERIES = """
UPDATE studies s SET num_series = (SELECT count(*) FROM series WHERE study_id = s.id)
WHERE s.study_instance_uid IN (SELECT DISTINCT study_instance_uid FROM staging_instances)
"""

INSERT_INSTANCES = """
WITH inserted AS (
INSERT INTO instances (series_id, sop_instance_uid, version, sop_class_uid, instance_number,
                       number_of_frames, transfer_syntax_uid, file_path, size_bytes,
                       dataset_size, checksum, source_kind, source_user, source_ae, called_ae,
                       source_ip, received_at)
SELECT se.id, x.sop_instance_uid, x.version, x.sop_class_uid, x.instance_number,
       x.number_of_frames, x.transfer_syntax_uid, x.file_path, x.size_bytes, x.dataset_size,
       x.checksum, x.source_kind, x.source_user,
       x.source_ae, x.called_ae, x.source_ip, x.received_at
FROM staging_instances x JOIN series se ON se.series_instance_uid = x.series_instance_uid
ORDER BY x.seq
RETURNING id, file_path
), events AS (
INSERT INTO ingest_events (event, instance_id, sop_instance_uid, dimse_status, source_ae,
                           called_ae, source_ip, association_id, size_bytes, at)
SELECT x.event, i.id, x.sop_instance_uid, 0, x.source_ae, x.called_ae, x.source_ip,
       x.association_id, x.size_bytes, x.received_at
FROM inserted i JOIN staging_instances x USING (file_path)
), jobs AS (
INSERT INTO forward_jobs (instance_id, destination_id, rule_id, due_at, hold_key)
SELECT i.id, r.destination_id, r.rule_id, now() + make_interval(secs => r.delay), r.hold_key
FROM inserted i JOIN staging_instances x USING (file_path)
CROSS JOIN LATERAL unnest(x.rule_ids, x.destination_ids, x.delays, x.hold_keys)
    AS r(rule_id, destination_id, delay, hold_key)
)
SELECT id, file_path FROM inserted
"""

# A new arrival in a held series/study pushes its group's pending jobs on by the
# quiet period (the new jobs themselves were inserted with that due time).
HOLD_GROUPS = """
UPDATE forward_jobs j SET due_at = now() + make_interval(secs => h.delay), updated_at = now()
FROM (SELECT r.destination_id, r.hold_key, max(r.delay) AS delay
      FROM staging_instances x
      CROSS JOIN LATERAL unnest(x.destination_ids, x.delays, x.hold_keys)
          AS r(destination_id, delay, hold_key)
      WHERE r.hold_key IS NOT NULL GROUP BY 1, 2) h
WHERE j.state = 'pending' AND j.destination_id = h.destination_id AND j.hold_key = h.hold_key
"""

COUNT_HITS = """
UPDATE routing_rules r SET hits = r.hits + h.n
FROM (SELECT rule_id, count(DISTINCT x.seq) AS n
      FROM staging_instances x CROSS JOIN LATERAL unnest(x.rule_ids) AS rule_id
      GROUP BY rule_id) h
WHERE r.id = h.rule_id
"""

NOTIFY_JOBS = f"""
PERFORM pg_notify('{channels.JOBS}', d::text)
FROM (SELECT DISTINCT unnest(destination_ids) AS d FROM staging_instances) n
"""

INSERT_EVENTS = """
INSERT INTO ingest_events (event, instance_id, sop_instance_uid, dimse_status, source_ae,
                           called_ae, source_ip, association_id, size_bytes, detail, at)
SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::integer[], $5::text[],
                     $6::text[], $7::inet[], $8::text[], $9::bigint[], $10::text[],
                     $11::timestamptz[])
"""

# The fast path's parameters: one array per staging column, then the forward
# jobs flattened (PostgreSQL has no ragged arrays): the seq of the instance each
# job belongs to, and one array per JobRoute field.
_INGEST_COLUMNS = (("version", "integer"), ("event", "text"), *STAGING_COLUMNS)
_ROUTE_ARRAYS = ("integer[]", "bigint[]", "bigint[]", "integer[]", "text[]")


def _params(first: int, count: int) -> str:
    return ", ".join(f"${n}" for n in range(first, first + count))


_INGEST_NAMES = ", ".join(name for name, _ in _INGEST_COLUMNS)
_UID_PARAM = 1 + [name for name, _ in _INGEST_COLUMNS].index("sop_instance_uid")

# PERF: the fast path is one prepared statement in autocommit: locks, the
# existing-row check, staging and indexing in one round trip, its COMMIT
# included, against five for the explicit transaction. Unnesting arrays is as
# fast as COPY from 64 rows up (measured to 4096) and faster below, so it takes
# every batch of new UIDs (docs/performance.md).
# NOTE: no rows back means a UID is indexed already and nothing was written: the
# duplicate and version decisions need the explicit path.
INGEST_FUNCTION = f"""
CREATE OR REPLACE FUNCTION pg_temp.dicomgw_ingest(
    {", ".join(f"{sql_type}[]" for _, sql_type in _INGEST_COLUMNS)},
    {", ".join(_ROUTE_ARRAYS)})
RETURNS TABLE (id bigint, file_path text)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
BEGIN
    IF EXISTS (SELECT FROM pg_temp.dicomgw_lock_existing(${_UID_PARAM})) THEN
        RETURN;
    END IF;
    INSERT INTO staging_instances ({_INGEST_NAMES}, rule_ids, destination_ids, delays, hold_keys)
    SELECT {", ".join(f"x.{name}" for name, _ in _INGEST_COLUMNS)},
           coalesce(j.rule_ids, '{{}}'), coalesce(j.destination_ids, '{{}}'),
           coalesce(j.delays, '{{}}'), coalesce(j.hold_keys, '{{}}')
    FROM unnest({_params(1, len(_INGEST_COLUMNS))}) AS x({_INGEST_NAMES})
    LEFT JOIN (SELECT seq, array_agg(rule_id ORDER BY n) AS rule_ids,
                      array_agg(destination_id ORDER BY n) AS destination_ids,
                      array_agg(delay ORDER BY n) AS delays,
                      array_agg(hold_key ORDER BY n) AS hold_keys
               FROM unnest({_params(len(_INGEST_COLUMNS) + 1, len(_ROUTE_ARRAYS))})
                   WITH ORDINALITY AS r(seq, rule_id, destination_id, delay, hold_key, n)
               GROUP BY seq) j ON j.seq = x.seq;
    RETURN QUERY SELECT * FROM pg_temp.dicomgw_index_staged();
END
$fn$
"""

INGEST = (
    "SELECT id, file_path FROM pg_temp.dicomgw_ingest("
    f"{_params(1, len(_INGEST_COLUMNS) + len(_ROUTE_ARRAYS))})"
)

# PERF: session functions (created by init_connection) make the per-batch
# statements two round trips instead of five; a lone association waits for
# every one of them.
SESSION_FUNCTIONS = f"""
CREATE OR REPLACE FUNCTION pg_temp.dicomgw_lock_existing(uids text[])
RETURNS TABLE (sop_instance_uid text, id bigint, version integer, checksum text,
               dataset_size bigint, file_path text)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
BEGIN
    -- Serializes writers (other processes) on the same UIDs, so two
    -- concurrent identical sends produce one row.
    PERFORM pg_advisory_xact_lock(h)
    FROM (SELECT DISTINCT hashtextextended(u, 0) AS h FROM unnest(uids) u ORDER BY 1) k;
    RETURN QUERY SELECT i.sop_instance_uid, i.id, i.version, i.checksum, i.dataset_size,
                        i.file_path
                 FROM instances i WHERE i.sop_instance_uid = ANY(uids);
END
$fn$;
CREATE OR REPLACE FUNCTION pg_temp.dicomgw_index_staged()
RETURNS TABLE (id bigint, file_path text)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
BEGIN
    {UPSERT_STUDIES};
    {UPSERT_SERIES};
    {COUNT_SERIES};
    RETURN QUERY {INSERT_INSTANCES};
    {HOLD_GROUPS};
    {COUNT_HITS};
    {NOTIFY_JOBS};
    DELETE FROM staging_instances;
END
$fn$
"""


def _broken(conn: asyncpg.Connection) -> bool:
    """Closed, or already handed back to the pool: asyncpg releases a pooled
    connection whose server went away, and its proxy then raises on every call."""
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:
        return True


class IndexUnavailable(DicomGwError):
    """The instance was not indexed. ``maybe_committed``: the connection was lost
    or timed out during COMMIT (or during the fast path's statement, which is its
    own COMMIT), so the row may exist after all."""

    def __init__(self, reason: str, *, maybe_committed: bool) -> None:
        self.reason = reason
        self.maybe_committed = maybe_committed
        super().__init__(f"index unavailable: {reason}")


# Errors where the server refused this batch's data: retrying the instances one
# by one isolates the bad one instead of failing its neighbours.
_DATA_ERRORS = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)


def _rolled_back(exc: BaseException) -> bool:
    """The server answered with an ERROR: the statement's transaction is rolled
    back. FATAL (the backend is going away), a lost connection or our own
    timeout leave it unknown."""
    return isinstance(exc, asyncpg.PostgresError) and exc.severity_en == "ERROR"


@dataclass(frozen=True, slots=True)
class IndexOutcome:
    """``stored``: a new row; ``duplicate``: identical bytes already indexed (the
    new file is redundant); ``conflict``: same UID, other bytes, refused by policy."""

    kind: Literal["stored", "duplicate", "conflict"]
    instance_id: int
    version: int = 1


async def init_connection(conn: asyncpg.Connection) -> None:
    """Pool ``init``: the staging table and the index functions live per session."""
    await conn.execute(STAGING_DDL)
    await conn.execute(SESSION_FUNCTIONS)
    await conn.execute(INGEST_FUNCTION)


BatchObserver = Callable[[int, float], None]
"""Told of each index transaction: (instances, seconds)."""


class IndexBatcher:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        batch_size: int,
        max_delay_s: float,
        duplicate_policy: DuplicatePolicy,
        same_content: SameContent,
        timeout_s: float,
        router: Router = lambda record: (),
        on_batch: BatchObserver | None = None,
    ) -> None:
        self._timeout_s = timeout_s
        self._on_batch = on_batch or (lambda size, seconds: None)
        self._router = router
        self._pool = pool
        self._same_content = same_content
        self._batch_size = batch_size
        self._max_delay_s = max_delay_s
        self._policy = duplicate_policy
        self._queue: asyncio.Queue[tuple[InstanceRecord, asyncio.Future[IndexOutcome]]] = (
            asyncio.Queue()
        )
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None
        self._since_vacuum = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="index-batcher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._drop_connection()
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(
                    IndexUnavailable("the index writer stopped", maybe_committed=False)
                )

    async def index(self, record: InstanceRecord) -> IndexOutcome:
        future: asyncio.Future[IndexOutcome] = asyncio.get_running_loop().create_future()
        await self._queue.put((record, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self._max_delay_s
            while len(batch) < self._batch_size:
                if self._queue.empty():
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                    except TimeoutError:
                        break
                else:
                    batch.append(self._queue.get_nowait())
            started = time.perf_counter()
            results = await self._write_or_split([record for record, _ in batch])
            self._on_batch(len(batch), time.perf_counter() - started)
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, IndexUnavailable):
                    future.set_exception(result)
                else:
                    future.set_result(result)
            self._since_vacuum += len(batch)
            if self._since_vacuum >= STAGING_VACUUM_EVERY:
                await self._vacuum_staging()

    async def _vacuum_staging(self) -> None:
        """Reclaim the staging table's deleted rows; a failure only costs the session
        (its successor starts with a new table)."""
        self._since_vacuum = 0
        if self._conn is None:
            return
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._conn.execute("VACUUM staging_instances")
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("vacuum of the staging table failed", extra={"error": str(exc)})
            await self._drop_connection()

    async def _write_or_split(
        self, batch: Sequence[InstanceRecord]
    ) -> list[IndexOutcome | IndexUnavailable]:
        try:
            return list(await self._write_bounded(batch))
        except _DATA_ERRORS as exc:
            if len(batch) == 1:
                log.error("index refused an instance", extra={"error": str(exc)})
                return [IndexUnavailable(f"refused: {exc}", maybe_committed=False)]
            results: list[IndexOutcome | IndexUnavailable] = []
            for record in batch:
                results.extend(await self._write_or_split([record]))
            return results
        except IndexUnavailable as exc:
            log.error("index batch failed", extra={"size": len(batch), "error": exc.reason})
            return [exc] * len(batch)

    async def _write_bounded(self, batch: Sequence[InstanceRecord]) -> list[IndexOutcome]:
        """_write under a deadline; failures say whether COMMIT may have happened.

        NOTE: statement_timeout is the server's; a frozen or unreachable server
        needs this client-side bound, or every association would wait forever.
        """
        state = {"committing": False}
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._write(batch, state)
        except _DATA_ERRORS:
            raise
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            await self._drop_connection()
            raise IndexUnavailable(
                f"{type(exc).__name__}: {exc}",
                maybe_committed=state["committing"] and not _rolled_back(exc),
            ) from None

    async def _write(
        self, batch: Sequence[InstanceRecord], state: dict[str, bool]
    ) -> list[IndexOutcome]:
        uids = [r.sop_instance_uid for r in batch]
        conn = await self._connection()
        # A UID twice in one batch needs the duplicate decisions made here.
        if len(set(uids)) == len(uids):
            # NOTE: in autocommit the statement's end is its COMMIT: from the
            # moment it is sent, a lost connection or a timeout may hide a commit.
            state["committing"] = True
            ids = await self._ingest(conn, batch)
            if ids is not None:
                return [IndexOutcome("stored", ids[r.file_path]) for r in batch]
            state["committing"] = False
        transaction = conn.transaction()
        await transaction.start()
        try:
            final = await self._write_in(conn, batch, uids)
        except BaseException:
            with contextlib.suppress(Exception):
                await transaction.rollback()
            raise
        state["committing"] = True
        await transaction.commit()
        return final

    async def _connection(self) -> asyncpg.Connection:
        """The writer's own connection, kept across batches (no pool round trip and
        reset per batch); replaced after it breaks."""
        if self._conn is not None and _broken(self._conn):
            await self._drop_connection()
        if self._conn is None:
            self._conn = await self._pool.acquire()
        return self._conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await self._pool.release(conn, timeout=1)

    async def _ingest(
        self, conn: asyncpg.Connection, batch: Sequence[InstanceRecord]
    ) -> dict[str, int] | None:
        """The fast path: instance id by file path, or None if a UID of the batch
        is indexed already (then nothing was written)."""
        # Version 1: the statement writes only if no UID of the batch is indexed.
        rows = [(1, r.event, *r.row(seq)) for seq, r in enumerate(batch)]
        jobs: list[tuple[int, int, int, int, str | None]] = [
            (seq, j.rule_id, j.destination_id, j.delay_s, j.hold_key)
            for seq, record in enumerate(batch)
            for j in self._router(record)
        ]
        columns = list(zip(*rows, strict=True))
        job_columns = list(zip(*jobs, strict=True)) or [()] * len(_ROUTE_ARRAYS)
        indexed = await conn.fetch(INGEST, *columns, *job_columns)
        if not indexed:
            return None
        return {r["file_path"]: r["id"] for r in indexed}

    async def _write_in(
        self, conn: asyncpg.Connection, batch: Sequence[InstanceRecord], uids: list[str]
    ) -> list[IndexOutcome]:
        # (instance id, version, checksum, data set size, file path)
        known: dict[str, list[tuple[int, int, str, int, str]]] = {}
        for row in await conn.fetch("SELECT * FROM pg_temp.dicomgw_lock_existing($1)", uids):
            known.setdefault(row["sop_instance_uid"], []).append(
                (
                    row["id"],
                    row["version"],
                    row["checksum"],
                    row["dataset_size"],
                    row["file_path"],
                )
            )
        outcomes: list[IndexOutcome | None] = []
        new_versions: dict[int, int] = {}
        rows = []
        for seq, record in enumerate(batch):
            versions = known.setdefault(record.sop_instance_uid, [])
            # NOTE: equal CRC-32C and size are confirmed byte for byte: a
            # collision must never turn other data into a silent "duplicate".
            same = [
                v
                for v in versions
                if v[2] == record.checksum
                and v[3] == record.dataset_size
                and await self._same_content(v[4], record.file_path, record.dataset_size)
            ]
            if same:
                outcomes.append(IndexOutcome("duplicate", same[0][0], same[0][1]))
            elif versions and self._policy == "reject":
                newest = max(versions, key=lambda v: v[1])
                outcomes.append(IndexOutcome("conflict", newest[0], newest[1]))
            else:
                version = max((v[1] for v in versions), default=0) + 1
                # Instance id is filled in after INSERT; -seq marks "this batch".
                versions.append(
                    (-seq - 1, version, record.checksum, record.dataset_size, record.file_path)
                )
                outcomes.append(None)
                new_versions[seq] = version
                routes = self._router(record)
                rows.append(
                    (
                        seq,
                        version,
                        record.event,
                        *record.row(seq)[1:],
                        [r.rule_id for r in routes],
                        [r.destination_id for r in routes],
                        [r.delay_s for r in routes],
                        [r.hold_key for r in routes],
                    )
                )
        ids: dict[str, int] = {}
        if rows:
            await conn.copy_records_to_table(
                "staging_instances",
                records=rows,
                columns=[
                    "seq",
                    "version",
                    "event",
                    *COLUMNS[1:],
                    "rule_ids",
                    "destination_ids",
                    "delays",
                    "hold_keys",
                ],
            )
            ids = {
                r["file_path"]: r["id"]
                for r in await conn.fetch("SELECT * FROM pg_temp.dicomgw_index_staged()")
            }
        final: list[IndexOutcome] = []
        for seq, (record, outcome) in enumerate(zip(batch, outcomes, strict=True)):
            if outcome is None:
                final.append(IndexOutcome("stored", ids[record.file_path], new_versions[seq]))
            elif outcome.instance_id < 0:
                # An identical copy earlier in this same batch.
                first = batch[-outcome.instance_id - 1]
                final.append(IndexOutcome("duplicate", ids[first.file_path], outcome.version))
            else:
                final.append(outcome)
        await self._events(conn, batch, final)
        return final

    async def _events(
        self,
        conn: asyncpg.Connection,
        batch: Sequence[InstanceRecord],
        outcomes: list[IndexOutcome],
    ) -> None:
        """Events of what was not stored (stored ones come with their rows)."""
        kinds = {"duplicate": "duplicate", "conflict": "rejected"}
        pairs = [(o, r) for o, r in zip(outcomes, batch, strict=True) if o.kind in kinds]
        if not pairs:
            return
        await conn.execute(
            INSERT_EVENTS,
            [kinds[o.kind] for o, _ in pairs],
            [o.instance_id for o, _ in pairs],
            [r.sop_instance_uid for _, r in pairs],
            [0x0111 if o.kind == "conflict" else 0 for o, _ in pairs],
            [r.source_ae for _, r in pairs],
            [r.called_ae for _, r in pairs],
            [r.source_ip for _, r in pairs],
            [r.association_id for _, r in pairs],
            [r.size_bytes for _, r in pairs],
            [
                f"same SOP Instance UID stored with other content (version {o.version})"
                if o.kind == "conflict"
                else None
                for o, _ in pairs
            ],
            [r.received_at for _, r in pairs],
        )
