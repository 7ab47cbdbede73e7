"""Routing at ingest and the forward queue, on a real PostgreSQL.

Instances are indexed by the real index writer with the real routing table, so
the jobs under test are the ones ingest creates.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import asyncpg
import msgspec
import pytest

from dicomgw.db import migrate
from dicomgw.db.channels import JOBS
from dicomgw.index.batcher import IndexBatcher
from dicomgw.index.records import InstanceRecord
from dicomgw.ingest.routing import RoutingTable
from dicomgw.queue import jobs
from dicomgw.queue.jobs import RetryPolicy
from dicomgw.send.delivery import Outcome
from dicomgw.send.destinations import apply_declared, load_destinations
from dicomgw.send.secrets import SecretBox
from tests.records import (
    DESTINATIONS,
    EVERYTHING_TO_PACS1,
    declared_config,
    indexing,
    record,
)

POLICY = RetryPolicy(max_attempts=3, permanent_attempts=2, backoff_initial_s=60, backoff_max_s=600)


BASE = (
    DESTINATIONS
    + """    auth: bearer
    token: s3cret-token
routes:
  - name: ct-to-cloud
    match: {modality: CT}
    destinations: [cloud]"""
    + EVERYTHING_TO_PACS1
)


@dataclass
class Env:
    pool: asyncpg.Pool
    routing: RoutingTable
    batcher: IndexBatcher
    box: SecretBox
    dest: dict[str, int]

    async def index(self, *records: InstanceRecord) -> None:
        await asyncio.gather(*(self.batcher.index(r) for r in records))

    async def jobs(self, name: str) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            "SELECT * FROM forward_jobs WHERE destination_id = $1 ORDER BY id", self.dest[name]
        )


@pytest.fixture
async def env(empty_db: str, tmp_path: Path) -> AsyncIterator[Env]:
    await asyncio.to_thread(migrate.upgrade, empty_db)
    box = SecretBox.open(tmp_path)
    conn = await asyncpg.connect(empty_db)
    try:
        await apply_declared(conn, declared_config(tmp_path, BASE), box)
    finally:
        await conn.close()
    async with indexing(empty_db) as writer:
        dest = {
            r["name"]: r["id"] for r in await writer.pool.fetch("SELECT id, name FROM destinations")
        }
        yield Env(writer.pool, writer.routing, writer.batcher, box, dest)


async def test_jobs_are_created_with_the_index_rows_by_rule(env: Env) -> None:
    await env.index(record(1, modality="CT"), record(2, modality="MR"), record(3, modality="CT"))
    assert len(await env.jobs("pacs1")) == 3
    cloud = await env.jobs("cloud")
    assert len(cloud) == 2
    assert all(j["state"] == "pending" for j in cloud)
    hits = dict(await env.pool.fetch("SELECT name, hits FROM routing_rules"))
    assert hits == {"ct-to-cloud": 2, "everything-to-pacs1": 3}


async def test_identical_resend_creates_no_new_jobs(env: Env) -> None:
    first = record(1)
    await env.index(first)
    await env.index(replace(first, file_path=f"objects/x/{uuid.uuid4().hex}.dcm"))
    assert len(await env.jobs("pacs1")) == 1


async def test_new_jobs_notify_their_destination(env: Env) -> None:
    heard: list[str] = []
    conn = await env.pool.acquire()

    def listener(*args: object) -> None:
        heard.append(str(args[-1]))

    try:
        await conn.add_listener(JOBS, listener)
        await env.index(record(1, modality="MR"))
        for _ in range(50):
            if heard:
                break
            await asyncio.sleep(0.05)
    finally:
        await conn.remove_listener(JOBS, listener)
        await env.pool.release(conn)
    assert heard == [str(env.dest["pacs1"])]


async def test_rule_changes_apply_without_restart(env: Env, tmp_path: Path) -> None:
    changed = BASE.replace("match: {modality: CT}", "match: {modality: [MR, re:^U]}")
    async with env.pool.acquire() as conn:
        await apply_declared(conn, declared_config(tmp_path, changed), env.box)
    for _ in range(50):
        if any(
            r.name == "ct-to-cloud" and r.conditions and r.conditions[0][1]("US")
            for r in env.routing.rules
        ):
            break
        await asyncio.sleep(0.05)
    await env.index(record(1, modality="CT"), record(2, modality="US"))
    cloud = await env.jobs("cloud")
    assert len(cloud) == 1


async def test_claims_are_disjoint_across_workers(env: Env) -> None:
    await env.index(*(record(n, modality="MR") for n in range(40)))
    dest = env.dest["pacs1"]

    async def claim(owner: str) -> set[int]:
        got: set[int] = set()
        while True:
            async with env.pool.acquire() as conn:
                batch = await jobs.claim(conn, dest, owner, 3, 60)
            if not batch:
                return got
            got |= {j.job_id for j in batch}

    a, b, c = await asyncio.gather(claim("a"), claim("b"), claim("c"))
    assert not (a & b or a & c or b & c)
    assert len(a | b | c) == 40


async def finish_one(env: Env, outcome: Outcome) -> asyncpg.Record:
    async with env.pool.acquire() as conn:
        [job] = await jobs.claim(conn, env.dest["pacs1"], "w", 1, 60)
        await jobs.finish(conn, "w", [(job, outcome)], POLICY)
        return await conn.fetchrow("SELECT * FROM forward_jobs WHERE id = $1", job.job_id)


async def test_delivered_job_is_done_with_its_warning(env: Env) -> None:
    await env.index(record(1, modality="MR"))
    row = await finish_one(env, Outcome("delivered", 0xB000, "coercion of data elements", True))
    assert row["state"] == "done"
    assert row["finished_at"] is not None
    assert row["warning"] == "coercion of data elements"
    assert row["last_status"] == 0xB000
    attempts = await env.pool.fetch("SELECT * FROM forward_attempts WHERE job_id = $1", row["id"])
    assert [a["outcome"] for a in attempts] == ["delivered"]


async def test_transient_failures_back_off_then_dead_letter(env: Env) -> None:
    await env.index(record(1, modality="MR"))
    outcome = Outcome("transient", None, "connection refused")
    row = await finish_one(env, outcome)
    assert row["state"] == "pending"
    wait = (row["due_at"] - dt.datetime.now(dt.UTC)).total_seconds()
    assert 25 < wait <= 60  # initial 60 s, jittered to half at least
    for expected in ("pending", "dead"):
        await env.pool.execute("UPDATE forward_jobs SET due_at = now()")
        row = await finish_one(env, outcome)
        assert row["state"] == expected
    assert row["last_error"] == "connection refused"
    assert row["attempts"] == 3
    assert row["finished_at"] is not None


async def test_permanent_rejection_dead_letters_after_its_budget(env: Env) -> None:
    await env.index(record(1, modality="MR"))
    outcome = Outcome("permanent", 0xA900, "data set does not match SOP class")
    assert (await finish_one(env, outcome))["state"] == "pending"
    await env.pool.execute("UPDATE forward_jobs SET due_at = now()")
    row = await finish_one(env, outcome)
    assert row["state"] == "dead"
    assert row["last_status"] == 0xA900


async def test_expired_lease_is_reclaimed_and_late_finish_ignored(env: Env) -> None:
    await env.index(record(1, modality="MR"))
    async with env.pool.acquire() as conn:
        [job] = await jobs.claim(conn, env.dest["pacs1"], "dead-worker", 1, 0.05)
        await asyncio.sleep(0.2)
        assert await jobs.reclaim_expired(conn) == 1
        [again] = await jobs.claim(conn, env.dest["pacs1"], "w2", 1, 60)
        assert again.job_id == job.job_id
        assert again.attempts == 2
        # The first worker's result arrives late: it must not touch w2's lease.
        assert (
            await jobs.finish(conn, "dead-worker", [(job, Outcome("delivered", 0))], POLICY) == {}
        )
        state = await conn.fetchval("SELECT state FROM forward_jobs WHERE id = $1", job.job_id)
    assert state == "leased"


async def test_claims_are_sized_by_bytes_and_leases_renewed(env: Env) -> None:
    await env.index(*(record(n, modality="MR") for n in range(5)))  # 800-byte data sets
    dest = env.dest["pacs1"]
    async with env.pool.acquire() as conn:
        first = await jobs.claim(conn, dest, "w", 10, 60, max_bytes=2000)
        assert len(first) == 3
        # A data set larger than the budget is still claimed, alone.
        assert len(await jobs.claim(conn, dest, "w", 10, 60, max_bytes=1)) == 1
        ids = [j.job_id for j in first]
        assert await jobs.renew(conn, "w", ids, 600) == set(ids)
        soonest = await conn.fetchval(
            "SELECT min(lease_expires_at - now()) FROM forward_jobs WHERE id = ANY($1)", ids
        )
        assert soonest > dt.timedelta(seconds=500)
        # Cancelled, or held by another: no longer renewed.
        await jobs.cancel(conn, ids[:1])
        assert await jobs.renew(conn, "w", ids, 600) == set(ids[1:])
        assert await jobs.renew(conn, "other", ids, 600) == set()


async def test_operator_actions(env: Env) -> None:
    await env.index(record(1, modality="MR"), record(2, modality="MR"))
    dest = env.dest["pacs1"]
    async with env.pool.acquire() as conn:
        claimed = await jobs.claim(conn, dest, "w", 2, 60)
        dead = [(j, Outcome("permanent", 0xC000, "cannot understand")) for j in claimed]
        await jobs.finish(conn, "w", dead, replace(POLICY, permanent_attempts=1))
        assert await jobs.retry_dead(conn, dest) == 2
        first, second = (j.job_id for j in claimed)
        assert await jobs.cancel(conn, [first]) == 1
        assert await jobs.retry(conn, [first]) == 1
        states = dict(
            await conn.fetch("SELECT id, state FROM forward_jobs WHERE destination_id = $1", dest)
        )
        assert states == {first: "pending", second: "pending"}
        assert await jobs.replay(conn, env.dest["cloud"], study_instance_uid="1.2.3") == 2
        assert await jobs.set_paused(conn, dest, True)
        rows = await load_destinations(conn, env.box)
    assert {r.destination.name: r.paused for r in rows} == {"pacs1": True, "cloud": False}


async def test_study_granularity_holds_the_group_until_quiet(env: Env, tmp_path: Path) -> None:
    held = BASE.replace(
        "    match: {modality: CT}\n    destinations: [cloud]",
        "    match: {modality: CT}\n    destinations: [cloud]\n"
        "    granularity: study\n    quiet_period_s: 600",
    )
    async with env.pool.acquire() as conn:
        await apply_declared(conn, declared_config(tmp_path, held), env.box)
    for _ in range(50):
        if any(r.granularity == "study" for r in env.routing.rules):
            break
        await asyncio.sleep(0.05)
    await env.index(record(1, study="9.9"))
    await env.pool.execute("UPDATE forward_jobs SET due_at = now() + interval '1 second'")
    await env.index(record(2, study="9.9"))
    cloud = await env.jobs("cloud")
    assert len(cloud) == 2
    assert {j["hold_key"] for j in cloud} == {"study:9.9"}
    # The second arrival pushed the first job back by the quiet period too.
    assert all((j["due_at"] - dt.datetime.now(dt.UTC)).total_seconds() > 590 for j in cloud)
    async with env.pool.acquire() as conn:
        assert await jobs.claim(conn, env.dest["cloud"], "w", 10, 60) == []


async def test_secrets_are_encrypted_at_rest(env: Env) -> None:
    row = await env.pool.fetchrow("SELECT settings, secret FROM destinations WHERE name = 'cloud'")
    assert b"s3cret-token" not in bytes(row["secret"])
    assert "s3cret-token" not in row["settings"]
    async with env.pool.acquire() as conn:
        [cloud] = [
            r for r in await load_destinations(conn, env.box) if r.destination.name == "cloud"
        ]
    assert msgspec.to_builtins(cloud.destination)["token"] == "s3cret-token"


async def test_undeclared_destinations_are_disabled_and_routes_deleted(
    env: Env, tmp_path: Path
) -> None:
    only_pacs = BASE.split("  - name: cloud", maxsplit=1)[0] + (
        "routes:\n  - name: everything-to-pacs1\n    match: {}\n    destinations: [pacs1]\n"
    )
    await env.index(record(1))
    async with env.pool.acquire() as conn:
        await apply_declared(conn, declared_config(tmp_path, only_pacs), env.box)
        enabled = dict(await conn.fetch("SELECT name, enabled FROM destinations"))
        rules = [r["name"] for r in await conn.fetch("SELECT name FROM routing_rules")]
    assert enabled == {"pacs1": True, "cloud": False}
    assert rules == ["everything-to-pacs1"]
    assert len(await env.jobs("cloud")) == 1  # kept for the operator


async def test_next_due_is_none_when_nothing_is_pending(env: Env) -> None:
    dest = env.dest["pacs1"]
    async with env.pool.acquire() as conn:
        assert await jobs.next_due(conn, dest) is None
        await env.index(record(1, modality="MR"))
        assert await jobs.next_due(conn, dest) == 0
        await conn.execute("UPDATE forward_jobs SET due_at = now() + interval '60 seconds'")
        assert 59 < (await jobs.next_due(conn, dest) or 0) <= 60


async def test_finish_survives_a_job_deleted_meanwhile(env: Env) -> None:
    await env.index(record(1, modality="MR"), record(2, modality="MR"))
    async with env.pool.acquire() as conn:
        first, second = await jobs.claim(conn, env.dest["pacs1"], "w", 2, 60)
        # An admin deletes the first job's study while the worker is sending.
        await conn.execute("DELETE FROM instances WHERE id = $1", first.instance_id)
        done = await jobs.finish(
            conn, "w", [(first, Outcome("delivered", 0)), (second, Outcome("delivered", 0))],
            POLICY,
        )  # fmt: skip
    assert done == {second.job_id: "done"}


async def test_history_purge_keeps_recent_dead_and_unfinished_jobs(env: Env) -> None:
    await env.index(*(record(n) for n in range(1, 7)))
    ids = [j["id"] for j in await env.jobs("pacs1")]
    done_old, done_new, cancelled_old, dead_old, pending, attempted = ids
    await env.pool.execute(
        "INSERT INTO forward_attempts (job_id, outcome) VALUES ($1, 'delivered')", done_old
    )
    await env.pool.execute(
        "UPDATE forward_jobs SET state = s.state, finished_at = now() - s.age "
        "FROM unnest($1::bigint[], $2::text[], $3::interval[]) AS s(id, state, age) "
        "WHERE forward_jobs.id = s.id",
        [done_old, done_new, cancelled_old, dead_old, attempted],
        ["done", "done", "cancelled", "dead", "done"],
        [dt.timedelta(days=91), dt.timedelta(days=89), dt.timedelta(days=200),
         dt.timedelta(days=300), dt.timedelta(days=91)],
    )  # fmt: skip
    async with env.pool.acquire() as conn:
        assert await jobs.purge_history(conn, 90, batch=1) == 1
        assert await jobs.purge_history(conn, 90) == 2
        assert await jobs.purge_history(conn, 90) == 0
    left = {j["id"] for j in await env.jobs("pacs1")}
    assert left == {done_new, dead_old, pending}
    assert await env.pool.fetchval("SELECT count(*) FROM forward_attempts") == 0


async def test_an_older_arrival_moves_first_received_back(env: Env) -> None:
    """Start-up recovery can index an instance received before the ones indexed."""
    await env.index(record(1))
    older = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    await env.index(replace(record(2), received_at=older))
    for table in ("studies", "series"):
        first, last = await env.pool.fetchrow(
            f"SELECT first_received_at, last_received_at FROM {table}"
        )
        assert first == older
        assert last - older > dt.timedelta(hours=23)
