"""The index writer's two ways in, on a real PostgreSQL.

A batch of new UIDs is one statement in autocommit (``pg_temp.dicomgw_ingest``);
a batch with a UID already indexed falls back to the explicit transaction. Both
must leave exactly the same rows, jobs and events, and report the same outcomes.
In autocommit the statement's end is its COMMIT, so a connection lost during it
must say "maybe committed".
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import asyncpg
import pytest

from dicomgw.db import migrate
from dicomgw.index.batcher import (
    INGEST,
    STAGING_VACUUM_EVERY,
    DuplicatePolicy,
    IndexBatcher,
    IndexOutcome,
    IndexUnavailable,
    init_connection,
)
from dicomgw.index.records import InstanceRecord, JobRoute
from dicomgw.ingest.routing import Rule, load_rules, route
from dicomgw.send.destinations import apply_declared
from dicomgw.send.secrets import SecretBox
from tests.records import DESTINATIONS, EVERYTHING_TO_PACS1, declared_config, record

ROUTES = (
    DESTINATIONS
    + """routes:
  - name: ct-to-cloud
    match: {modality: CT}
    destinations: [cloud]
    granularity: study
    quiet_period_s: 600"""
    + EVERYTHING_TO_PACS1
)

# Rows compared between the two paths: everything but now() columns, which
# forward_jobs keeps only as due_at relative to its last update.
DUMPS = {
    "studies": "SELECT * FROM studies ORDER BY id",
    "series": "SELECT * FROM series ORDER BY id",
    "instances": "SELECT * FROM instances ORDER BY id",
    "ingest_events": "SELECT * FROM ingest_events ORDER BY id",
    "forward_jobs": """SELECT id, instance_id, destination_id, rule_id, state, hold_key,
                              due_at - updated_at AS delay
                       FROM forward_jobs ORDER BY id""",
    "routing_rules": "SELECT id, name, hits FROM routing_rules ORDER BY id",
}


async def content_is_equal(_a: str, _b: str, _n: int) -> bool:
    return True


async def as_if_indexed(_conn: asyncpg.Connection, _batch: object) -> None:
    """The fast path's answer when a UID of the batch is indexed already."""
    return None


@dataclass
class Index:
    pool: asyncpg.Pool
    batcher: IndexBatcher
    queries: list[str]
    """Every statement the pool's connections ran, in order."""

    async def batch(self, *records: InstanceRecord) -> list[IndexOutcome | BaseException]:
        """Index the records as one batch; their outcomes, or their errors."""
        return await asyncio.gather(
            *(self.batcher.index(r) for r in records), return_exceptions=True
        )

    async def dump(self) -> dict[str, list[dict[str, object]]]:
        return {t: [dict(r) for r in await self.pool.fetch(q)] for t, q in DUMPS.items()}

    async def rows(self, uid: str) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self.pool.fetch(
            "SELECT * FROM instances WHERE sop_instance_uid = $1 ORDER BY version", uid
        )
        return rows

    def ingested(self) -> int:
        return self.queries.count(INGEST)

    def explicit(self) -> int:
        return sum(1 for q in self.queries if "dicomgw_lock_existing" in q)


IndexFactory = Callable[..., Awaitable[Index]]


async def new_database(pg_server: str) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(pg_server)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    head, _, query = pg_server.partition("?")
    base = f"{head.rsplit('/', 1)[0]}/{name}"
    return f"{base}?{query}" if query else base


@pytest.fixture
async def make_index(pg_server: str, tmp_path: Path) -> AsyncIterator[IndexFactory]:
    """Index writers, each on a fresh database with ROUTES declared."""
    made: list[Index] = []

    async def make(
        policy: DuplicatePolicy = "reject",
        *,
        timeout_s: float = 10,
        server_settings: dict[str, str] | None = None,
    ) -> Index:
        dsn = await new_database(pg_server)
        await asyncio.to_thread(migrate.upgrade, dsn)
        queries: list[str] = []

        async def init(conn: asyncpg.Connection) -> None:
            await init_connection(conn)
            conn.add_query_logger(lambda q: queries.append(q.query))

        pool = await asyncpg.create_pool(
            dsn, min_size=1, max_size=4, init=init, server_settings=server_settings
        )
        config = declared_config(tmp_path, ROUTES)
        async with pool.acquire() as conn:
            await apply_declared(conn, config, SecretBox.open(tmp_path))
            rules: list[Rule] = await load_rules(conn)

        def router(r: InstanceRecord) -> list[JobRoute]:
            return route(rules, r)

        batcher = IndexBatcher(
            pool,
            batch_size=64,
            max_delay_s=0,
            duplicate_policy=policy,
            same_content=content_is_equal,
            timeout_s=timeout_s,
            router=router,
        )
        batcher.start()
        index = Index(pool, batcher, queries)
        made.append(index)
        return index

    yield make
    for index in made:
        await index.batcher.close()
        await index.pool.close()


def batches(n: int = 0) -> list[list[InstanceRecord]]:
    """Four batches: new instances over two studies (CT, held by study, and MR);
    more in the same series; a mix of an identical resend, other bytes under a
    stored UID and new ones; the same new UID twice in one batch."""
    ct = [record(n + i, modality="CT", study="9.1", series="9.1.1") for i in range(3)]
    mr = [record(n + 3 + i, modality="MR", study="9.2", series="9.2.1") for i in range(2)]
    more = [record(n + 5 + i, modality="CT", study="9.1", series="9.1.1") for i in range(3)]
    resend = replace(ct[0], file_path=f"objects/x/{uuid.uuid4().hex}.dcm")
    other_bytes = replace(mr[1], file_path=f"objects/x/{uuid.uuid4().hex}.dcm", checksum="crc32c:1")
    new = [record(n + 8 + i, modality="MR", study="9.2", series="9.2.2") for i in range(2)]
    twice = record(n + 10, modality="CT", study="9.3", series="9.3.1")
    twice_again = replace(twice, file_path=f"objects/x/{uuid.uuid4().hex}.dcm")
    return [ct + mr, more, [resend, new[0], other_bytes, new[1]], [twice, twice_again]]


@pytest.mark.parametrize("policy", ["reject", "keep-both"])
async def test_both_paths_leave_the_same_rows(
    make_index: IndexFactory, monkeypatch: pytest.MonkeyPatch, policy: DuplicatePolicy
) -> None:
    fast, explicit = await make_index(policy), await make_index(policy)
    work = batches()
    fast_outcomes = [await fast.batch(*b) for b in work]
    monkeypatch.setattr(explicit.batcher, "_ingest", as_if_indexed)
    explicit_outcomes = [await explicit.batch(*b) for b in work]

    assert fast_outcomes == explicit_outcomes
    kinds = [[o.kind for o in b if isinstance(o, IndexOutcome)] for b in fast_outcomes]
    second = "conflict" if policy == "reject" else "stored"
    assert kinds == [["stored"] * 5, ["stored"] * 3, ["duplicate", "stored", second, "stored"],
                     ["stored", "duplicate"]]  # fmt: skip
    assert await fast.dump() == await explicit.dump()
    jobs = (await fast.dump())["forward_jobs"]
    assert {j["hold_key"] for j in jobs} == {None, "study:9.1", "study:9.3"}
    # One statement per batch of new UIDs; the explicit path for a stored UID
    # (after the statement said so) and for a UID twice in a batch.
    assert fast.ingested() == 3
    assert fast.explicit() == 2
    assert explicit.ingested() == 0


async def test_new_uids_are_one_statement(make_index: IndexFactory) -> None:
    index = await make_index()
    # asyncpg prepares the statement (and looks up its array types) once per connection.
    await index.batch(record(0, study="7.0", series="7.0.1"))
    work = [record(i, modality="CT", study="7.1", series="7.1.1") for i in range(4)]
    index.queries.clear()
    outcomes = await index.batch(*work)
    assert index.queries == [INGEST]
    assert [(o.kind, o.version) for o in outcomes if isinstance(o, IndexOutcome)] == [
        ("stored", 1)
    ] * 4
    for r, o in zip(work, outcomes, strict=True):
        [row] = await index.rows(r.sop_instance_uid)
        assert isinstance(o, IndexOutcome) and row["id"] == o.instance_id
        assert row["file_path"] == r.file_path
    study = await index.pool.fetchrow("SELECT * FROM studies WHERE study_instance_uid = '7.1'")
    assert (study["num_instances"], study["num_series"], study["modalities"]) == (4, 1, ["CT"])
    events = await index.pool.fetch(
        "SELECT event, instance_id FROM ingest_events WHERE id > 1 ORDER BY id"
    )
    assert [(e["event"], e["instance_id"]) for e in events] == [
        ("stored", o.instance_id) for o in outcomes if isinstance(o, IndexOutcome)
    ]


async def test_an_unindexable_instance_is_split_out_of_its_statement(
    make_index: IndexFactory,
) -> None:
    index = await make_index()
    bad, good = replace(record(1), patient_id="AB\x00CD"), record(2)
    bad_outcome, good_outcome = await index.batch(bad, good)
    assert isinstance(bad_outcome, IndexUnavailable)
    assert not bad_outcome.maybe_committed
    assert isinstance(good_outcome, IndexOutcome) and good_outcome.kind == "stored"
    assert await index.rows(bad.sop_instance_uid) == []
    assert len(await index.rows(good.sop_instance_uid)) == 1


async def hold_lock(index: Index, uid: str) -> asyncpg.Connection:
    """Another session holding the writer's advisory lock on ``uid``."""
    holder: asyncpg.Connection = await index.pool.acquire()
    await holder.execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", uid)
    return holder


async def writer_waiting(index: Index) -> tuple[int, str]:
    """The writer's backend pid and statement once it waits for the lock."""
    for _ in range(200):
        waiting = await index.pool.fetchrow(
            """SELECT pid, query FROM pg_stat_activity
               WHERE wait_event_type = 'Lock' AND query LIKE '%dicomgw_%' LIMIT 1"""
        )
        if waiting is not None:
            return int(waiting["pid"]), str(waiting["query"])
        await asyncio.sleep(0.02)
    raise AssertionError("the writer never waited for the lock")


async def release(index: Index, holder: asyncpg.Connection) -> None:
    await holder.execute("SELECT pg_advisory_unlock_all()")
    await index.pool.release(holder)


async def test_backend_killed_during_the_statement_may_have_committed(
    make_index: IndexFactory,
) -> None:
    index = await make_index()
    lone = record(1)
    holder = await hold_lock(index, lone.sop_instance_uid)
    try:
        pending = asyncio.ensure_future(index.batcher.index(lone))
        pid, statement = await writer_waiting(index)
        assert statement == INGEST
        assert await index.pool.fetchval("SELECT pg_terminate_backend($1)", pid)
        with pytest.raises(IndexUnavailable) as caught:
            await pending
        assert caught.value.maybe_committed
    finally:
        await release(index, holder)
    # Here it had not: the row is absent, and the writer reconnects.
    assert await index.rows(lone.sop_instance_uid) == []
    again = await index.batcher.index(replace(lone, file_path="objects/x/again.dcm"))
    assert again.kind == "stored"


async def test_backend_killed_before_commit_in_the_explicit_path(
    make_index: IndexFactory,
) -> None:
    index = await make_index()
    once = record(1)
    twice = replace(once, file_path="objects/x/twice.dcm")
    holder = await hold_lock(index, once.sop_instance_uid)
    try:
        # The same UID twice: the explicit transaction, whose COMMIT is never sent.
        pending = asyncio.ensure_future(index.batch(once, twice))
        pid, statement = await writer_waiting(index)
        assert "dicomgw_lock_existing" in statement
        assert await index.pool.fetchval("SELECT pg_terminate_backend($1)", pid)
        outcomes = await pending
    finally:
        await release(index, holder)
    assert all(isinstance(o, IndexUnavailable) and not o.maybe_committed for o in outcomes)
    assert await index.rows(once.sop_instance_uid) == []


async def test_statement_timeout_in_the_statement_did_not_commit(
    make_index: IndexFactory,
) -> None:
    index = await make_index(server_settings={"statement_timeout": "300"})
    lone = record(1)
    holder = await hold_lock(index, lone.sop_instance_uid)
    try:
        with pytest.raises(IndexUnavailable) as caught:
            await index.batcher.index(lone)
    finally:
        await release(index, holder)
    assert "QueryCanceled" in caught.value.reason
    assert not caught.value.maybe_committed
    assert await index.rows(lone.sop_instance_uid) == []


async def test_our_timeout_during_the_statement_may_have_committed(
    make_index: IndexFactory,
) -> None:
    index = await make_index(timeout_s=0.3)
    lone = record(1)
    holder = await hold_lock(index, lone.sop_instance_uid)
    try:
        with pytest.raises(IndexUnavailable) as caught:
            await index.batcher.index(lone)
    finally:
        await release(index, holder)
    assert caught.value.reason.startswith("TimeoutError")
    assert caught.value.maybe_committed


async def test_the_staging_table_is_emptied_and_vacuumed(make_index: IndexFactory) -> None:
    index = await make_index()
    n = 0
    while n < STAGING_VACUUM_EVERY:
        await index.batch(*(record(n + i) for i in range(64)))
        n += 64
    # The writer vacuums after answering the batch, before taking the next one.
    after = await index.batcher.index(record(n))
    assert after.kind == "stored"
    assert "VACUUM staging_instances" in index.queries
    # Vacuumed with no live row left: every batch deleted what it staged.
    tuples = await index.pool.fetch(
        "SELECT reltuples FROM pg_class WHERE relname = 'staging_instances'"
    )
    assert 0 in [t["reltuples"] for t in tuples]
    assert all(t["reltuples"] <= 0 for t in tuples)
