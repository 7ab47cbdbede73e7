"""The forward queue over the API, in-process on a real PostgreSQL: listing with
filters and stable keyset pages, job detail with attempts, retry/cancel/retry-dead/
replay, statistics, roles. Jobs are made by the real index writer and routing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import orjson

from dicomgw.config import Config
from dicomgw.db.channels import JOBS
from dicomgw.queue import jobs
from dicomgw.queue.jobs import RetryPolicy
from dicomgw.send.delivery import Outcome
from tests.api.inprocess import Api
from tests.api.test_destinations import (
    CLOUD,
    PACS,
    as_role,
    audit_rows,
    created,
    eventually,
    ingesting,
    listening,
    prepared,
    problem_field,
)
from tests.records import record

STUDY_A, STUDY_B = "1.2.3", "1.2.9"
# Any failure sends a job to dead-letter at once.
DEAD_AT_ONCE = RetryPolicy(
    max_attempts=1, permanent_attempts=1, backoff_initial_s=1, backoff_max_s=1
)


async def with_pacs(api: Api) -> dict[str, Any]:
    """pacs1, and a rule sending everything to it."""
    pacs = await created(api, "/destinations", PACS)
    await created(api, "/rules", {"name": "everything", "destinations": ["pacs1"]})
    return pacs


async def fail_all(dsn: str, destination_id: int, outcome: Outcome) -> list[int]:
    """A worker claims the destination's due jobs and records ``outcome`` for each."""
    conn = await asyncpg.connect(dsn)
    try:
        claimed = await jobs.claim(conn, destination_id, "test-worker", 100, 60)
        await jobs.finish(conn, "test-worker", [(j, outcome) for j in claimed], DEAD_AT_ONCE)
        return [j.job_id for j in claimed]
    finally:
        await conn.close()


async def test_list_filters_and_job_detail(empty_db: str, tmp_path: Path) -> None:
    config = await prepared(empty_db, tmp_path)
    async with as_role(config, "viewer") as viewer, as_role(config, "operator") as api:
        pacs = await with_pacs(api)
        in_a = [record(n, study=STUDY_A) for n in range(3)]
        in_b = [record(n, study=STUDY_B, series="1.2.9.1") for n in range(3, 5)]
        async with ingesting(empty_db) as index:
            await index(*in_a)
            await index(*in_b)
        listed = await viewer.call("GET", "/queue/jobs")
        assert listed.status_code == 200, listed.text
        items = listed.json["items"]
        assert listed.json["next_cursor"] is None
        assert [j["id"] for j in items] == sorted((j["id"] for j in items), reverse=True)
        assert {j["sop_instance_uid"] for j in items} == {r.sop_instance_uid for r in in_a + in_b}
        job = items[0]
        assert job["destination"] == "pacs1" and job["destination_id"] == pacs["id"]
        assert job["rule"] == "everything" and job["state"] == "pending"
        assert job["study_instance_uid"] == STUDY_B and job["series_instance_uid"] == "1.2.9.1"
        assert job["attempts"] == 0 and job["due_at"] is not None
        for key in ("last_status", "last_error", "warning", "converted_to"):
            assert job[key] is None

        async def ids(query: str) -> set[str]:
            found = (await viewer.call("GET", "/queue/jobs", query_string=query)).json["items"]
            return {j["sop_instance_uid"] for j in found}

        assert await ids(f"study_instance_uid={STUDY_A}") == {r.sop_instance_uid for r in in_a}
        assert await ids(f"destination_id={pacs['id']}&state=pending") == await ids("")
        assert await ids("state=dead") == set()
        assert await ids(f"destination_id={pacs['id'] + 1}") == set()

        failed = Outcome("transient", None, "connection refused")
        await fail_all(empty_db, pacs["id"], failed)
        detail = await viewer.call("GET", f"/queue/jobs/{job['id']}")
        assert detail.status_code == 200
        assert detail.json["state"] == "dead" and detail.json["attempts"] == 1
        assert detail.json["last_error"] == "connection refused"
        [attempt] = detail.json["attempt_history"]
        assert attempt["outcome"] == "transient" and attempt["message"] == "connection refused"
        assert attempt["worker"] == "test-worker" and attempt["at"]
        assert await ids("state=dead") == {r.sop_instance_uid for r in in_a + in_b}
        assert (await viewer.call("GET", "/queue/jobs/999999")).status_code == 404

        refusals = {
            "state=lost": "state",
            "limit=0": "limit",
            "limit=²": "limit",
            "cursor=42": "cursor",
            "colour=red": "colour",
            "state=dead&state=done": "state",
        }
        for query, field in refusals.items():
            refused = await viewer.call("GET", "/queue/jobs", query_string=query)
            assert problem_field(refused) == field


async def test_keyset_pages_are_stable_while_jobs_arrive(empty_db: str, tmp_path: Path) -> None:
    config = await prepared(empty_db, tmp_path)
    async with as_role(config, "operator") as api:
        await with_pacs(api)
        async with ingesting(empty_db) as index:
            await index(*(record(n) for n in range(23)))
            first = await api.call("GET", "/queue/jobs", query_string="limit=500")
            before = [j["id"] for j in first.json["items"]]
            seen: list[int] = []
            cursor: str | None = None
            pages = 0
            while True:
                query = "limit=5" + (f"&cursor={cursor}" if cursor else "")
                page = (await api.call("GET", "/queue/jobs", query_string=query)).json
                seen += [j["id"] for j in page["items"]]
                pages += 1
                # New jobs arrive between pages: they are newer than every page.
                await index(record(100 + pages), record(200 + pages))
                cursor = page["next_cursor"]
                if cursor is None:
                    break
        assert len(before) == 23 and pages == 5
        assert seen == before


async def test_retry_and_cancel_a_job(empty_db: str, tmp_path: Path) -> None:
    config = await prepared(empty_db, tmp_path)
    async with as_role(config, "operator") as api:
        pacs = await with_pacs(api)
        async with ingesting(empty_db) as index:
            await index(record(1))
        [job_id] = await fail_all(empty_db, pacs["id"], Outcome("permanent", 0xC000, "no"))
        path = f"/queue/jobs/{job_id}"
        async with listening(empty_db, JOBS) as woken:
            retried = await api.call("POST", f"{path}/retry")
            assert retried.status_code == 200, retried.text
            assert retried.json["state"] == "pending" and retried.json["attempts"] == 0
            await eventually(lambda: woken == [str(pacs["id"])])
        cancelled = await api.call("POST", f"{path}/cancel")
        assert cancelled.json["state"] == "cancelled"
        again = await api.call("POST", f"{path}/cancel")
        assert again.status_code == 409 and again.json["state"] == "cancelled"
        assert (await api.call("POST", f"{path}/retry")).json["state"] == "pending"
        await fail_all(empty_db, pacs["id"], Outcome("delivered", 0))
        done = await api.call("POST", f"{path}/retry")
        assert done.status_code == 409 and "done" in done.json["detail"]
        assert (await api.call("POST", "/queue/jobs/999999/retry")).status_code == 404
    audited = [
        (r["action"], r["target"], orjson.loads(r["detail"]))
        for r in await audit_rows(empty_db, "queue.")
    ]
    assert audited == [
        ("queue.retry", f"job {job_id}", {"from_state": "dead"}),
        ("queue.cancel", f"job {job_id}", {"from_state": "pending"}),
        ("queue.retry", f"job {job_id}", {"from_state": "cancelled"}),
    ]


async def test_retry_dead_and_replay(empty_db: str, tmp_path: Path) -> None:
    config = await prepared(empty_db, tmp_path)
    async with as_role(config, "operator") as api:
        pacs = await with_pacs(api)
        cloud = await created(api, "/destinations", CLOUD)
        async with ingesting(empty_db) as index:
            await index(
                *(record(n, study=STUDY_A) for n in range(3)),
                record(3, study=STUDY_B, series="1.2.9.1"),
            )
        await fail_all(empty_db, pacs["id"], Outcome("permanent", 0xC000, "no"))
        requeued = await api.call("POST", f"/destinations/{pacs['id']}/retry-dead")
        assert requeued.status_code == 200 and requeued.json == {"requeued": 4}
        pending = await api.call("GET", "/queue/jobs", query_string="state=pending")
        assert len(pending.json["items"]) == 4

        replay = f"/destinations/{cloud['id']}/replay"
        made = await api.call("POST", replay, json={"study_instance_uid": STUDY_A})
        assert made.status_code == 200 and made.json == {"created": 3}
        made = await api.call("POST", replay, json={"series_instance_uid": "1.2.3.4"})
        assert made.json == {"created": 3}
        to_cloud = await api.call(
            "GET", "/queue/jobs", query_string=f"destination_id={cloud['id']}"
        )
        assert len(to_cloud.json["items"]) == 6
        assert all(j["rule_id"] is None for j in to_cloud.json["items"])

        unknown = await api.call("POST", replay, json={"study_instance_uid": "9.9"})
        assert unknown.status_code == 404 and "study" in unknown.json["detail"]
        both = {"study_instance_uid": STUDY_A, "series_instance_uid": "1.2.3.4"}
        assert (await api.call("POST", replay, json=both)).status_code == 422
        assert (await api.call("POST", "/destinations/999999/retry-dead")).status_code == 404
    audited = [(r["action"], r["target"]) for r in await audit_rows(empty_db, "queue.")]
    assert audited == [
        ("queue.retry_dead", "pacs1"),
        ("queue.replay", "cloud"),
        ("queue.replay", "cloud"),
    ]


async def test_stats(empty_db: str, tmp_path: Path) -> None:
    config = await prepared(empty_db, tmp_path)
    async with as_role(config, "operator") as api:
        pacs = await with_pacs(api)
        await created(api, "/destinations", CLOUD)
        async with ingesting(empty_db) as index:
            await index(record(1), record(2))
        conn = await asyncpg.connect(empty_db)
        try:
            claimed = await jobs.claim(conn, pacs["id"], "w", 1, 60)
            await jobs.finish(conn, "w", [(claimed[0], Outcome("delivered", 0))], DEAD_AT_ONCE)
            await conn.execute("UPDATE forward_jobs SET created_at = now() - interval '90 s'")
        finally:
            await conn.close()
        stats = await api.call("GET", "/queue/stats")
        assert stats.status_code == 200
        by_name = {s["destination"]: s for s in stats.json["items"]}
        assert list(by_name) == ["cloud", "pacs1"]
        assert by_name["cloud"] | {"destination_id": 0} == {
            "destination_id": 0,
            "destination": "cloud",
            "enabled": True,
            "paused": False,
            "circuit_state": "closed",
            **dict.fromkeys(("pending", "leased", "done", "dead", "cancelled"), 0),
            "oldest_pending_age_s": None,
        }
        queued = by_name["pacs1"]
        assert (queued["pending"], queued["done"], queued["leased"]) == (1, 1, 0)
        assert 90 <= queued["oldest_pending_age_s"] < 200
        shown = (await api.call("GET", f"/destinations/{pacs['id']}")).json["queue"]
        assert shown.pop("oldest_pending_age_s") >= queued["oldest_pending_age_s"]
        assert shown == {k: queued[k] for k in shown}


async def test_roles(empty_db: str, tmp_path: Path) -> None:
    config: Config = await prepared(empty_db, tmp_path)
    async with as_role(config, "operator") as operator:
        pacs = await with_pacs(operator)
        async with ingesting(empty_db) as index:
            await index(record(1))
        [job] = (await operator.call("GET", "/queue/jobs")).json["items"]
    reads = ["/queue/jobs", f"/queue/jobs/{job['id']}", "/queue/stats"]
    writes = [
        (f"/queue/jobs/{job['id']}/retry", None),
        (f"/queue/jobs/{job['id']}/cancel", None),
        (f"/destinations/{pacs['id']}/retry-dead", None),
        (f"/destinations/{pacs['id']}/replay", {"study_instance_uid": "1.2.3"}),
    ]
    async with as_role(config, "viewer") as viewer:
        for path in reads:
            assert (await viewer.call("GET", path)).status_code == 200, path
        for path, body in writes:
            assert (await viewer.call("POST", path, json=body)).status_code == 403, path
        for path in reads:
            assert (await viewer.conductor.simulate_get(f"/api/v1{path}")).status_code == 401
    async with as_role(config, "auditor") as auditor:
        for path in reads:
            assert (await auditor.call("GET", path)).status_code == 403, path
    async with as_role(config, "admin") as admin:
        for path, body in writes:
            assert (await admin.call("POST", path, json=body)).status_code == 200, path
