"""The forward queue: jobs (newest first, filtered, keyset pages) with their
attempts, per-destination statistics, and the operator's actions: retry or cancel
a job, retry a destination's dead jobs, replay a study or series to a destination.

The actions are :mod:`dicomgw.queue.jobs`' own, which wake the destination's
workers (NOTIFY ``dicomgw_jobs``); each is audited.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import falcon
import falcon.asgi

from dicomgw.api.auditing import audit_request
from dicomgw.api.auth import allow
from dicomgw.api.context import BIGINT_MAX, PREFIX, ApiContext, App
from dicomgw.api.problems import Problem, invalid, not_found
from dicomgw.api.resources.destinations import (
    JOB_STATES,
    READERS,
    WRITERS,
    empty_stats,
    fetch_destination,
    queue_stats,
)
from dicomgw.api.validation import body_of, whole_number
from dicomgw.queue import jobs

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
LIST_PARAMETERS = ("state", "destination_id", "study_instance_uid", "cursor", "limit")

SELECT = """
SELECT j.id, j.state, j.destination_id, d.name AS destination, j.rule_id, r.name AS rule,
       j.instance_id, i.sop_instance_uid, se.series_instance_uid, st.study_instance_uid,
       j.attempts, j.permanent_failures, j.last_status, j.last_error, j.warning,
       j.converted_to, j.due_at, j.lease_owner, j.lease_expires_at, j.created_at,
       j.updated_at, j.finished_at
FROM forward_jobs j
JOIN destinations d ON d.id = j.destination_id
LEFT JOIN routing_rules r ON r.id = j.rule_id
JOIN instances i ON i.id = j.instance_id
JOIN series se ON se.id = i.series_id
JOIN studies st ON st.id = se.study_id
"""

_TIMES = ("due_at", "lease_expires_at", "created_at", "updated_at", "finished_at")


def job_json(row: asyncpg.Record) -> dict[str, Any]:
    body = dict(row.items())
    for name in _TIMES:
        body[name] = row[name].isoformat() if row[name] is not None else None
    return body


async def fetch_job(conn: asyncpg.Connection, job_id: int) -> asyncpg.Record:
    row = await conn.fetchrow(SELECT + "WHERE j.id = $1", job_id)
    if row is None:
        raise not_found(f"job {job_id}")
    return row


def _query(req: falcon.asgi.Request) -> dict[str, str]:
    """The query parameters, each given once; empty ones are ignored, unknown ones
    refused (a typo must not silently widen the list)."""
    params: dict[str, str] = {}
    for name, value in req.params.items():
        if name not in LIST_PARAMETERS:
            raise invalid(
                f"unknown parameter '{name}'; allowed: {', '.join(LIST_PARAMETERS)}", field=name
            )
        if isinstance(value, list):
            raise invalid(f"give '{name}' once", field=name)
        if value:
            params[name] = value
    return params


def _cursor(raw: str | None) -> int | None:
    """The job id a page ends with: opaque to clients, who only pass it back."""
    if raw is None:
        return None
    try:
        return whole_number(base64.urlsafe_b64decode(raw.encode()).decode(), "cursor", BIGINT_MAX)
    except (ValueError, Problem):
        raise invalid("'cursor' is not one this API returned", field="cursor") from None


class JobsResource:
    def __init__(self, api: ApiContext) -> None:
        self._pools = api.pools

    @allow(*READERS)
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Newest first; ``next_cursor`` continues after this page (jobs created since
        do not shift it)."""
        params = _query(req)
        filters: list[tuple[str, object]] = []
        state = params.get("state")
        if state is not None:
            if state not in JOB_STATES:
                raise invalid(f"'state' must be one of {', '.join(JOB_STATES)}", field="state")
            filters.append(("j.state = {}", state))
        destination_id = whole_number(params.get("destination_id"), "destination_id", BIGINT_MAX)
        if destination_id is not None:
            filters.append(("j.destination_id = {}", destination_id))
        if "study_instance_uid" in params:
            filters.append(("st.study_instance_uid = {}", params["study_instance_uid"]))
        cursor = _cursor(params.get("cursor"))
        if cursor is not None:
            filters.append(("j.id < {}", cursor))
        limit = whole_number(params.get("limit"), "limit", MAX_LIMIT) or DEFAULT_LIMIT
        # NOTE: only the filters given go into the SQL, so each query gets a plan
        # for what it filters on (no "$1 IS NULL OR ..." for every parameter).
        clauses = [sql.format(f"${n}") for n, (sql, _) in enumerate(filters, start=1)]
        query = (
            SELECT
            + (f"WHERE {' AND '.join(clauses)} " if clauses else "")
            + f"ORDER BY j.id DESC LIMIT ${len(filters) + 1}"
        )
        args = [value for _, value in filters] + [limit + 1]
        async with self._pools.pool.acquire() as conn:
            rows = await conn.fetch(query, *args)
        page = rows[:limit]
        resp.media = {
            "items": [job_json(r) for r in page],
            "next_cursor": (
                base64.urlsafe_b64encode(str(page[-1]["id"]).encode()).decode()
                if len(rows) > limit
                else None
            ),
        }

    @allow(*READERS)
    async def on_get_one(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, job_id: int
    ) -> None:
        """The job with every delivery attempt, oldest first."""
        async with self._pools.pool.acquire() as conn:
            row = await fetch_job(conn, job_id)
            attempts = await conn.fetch(
                "SELECT id, at, outcome, status, message, worker FROM forward_attempts "
                "WHERE job_id = $1 ORDER BY at, id",
                job_id,
            )
        resp.media = job_json(row) | {
            "attempt_history": [dict(a.items()) | {"at": a["at"].isoformat()} for a in attempts]
        }

    @allow(*WRITERS)
    async def on_post_retry(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, job_id: int
    ) -> None:
        """Due now, with fresh attempt budgets (dead, cancelled or waiting jobs)."""
        await self._act(req, resp, job_id, ("retry", "retried"), jobs.retry)

    @allow(*WRITERS)
    async def on_post_cancel(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, job_id: int
    ) -> None:
        """Not sent (again); a send in flight completes and its result is dropped."""
        await self._act(req, resp, job_id, ("cancel", "cancelled"), jobs.cancel)

    async def _act(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        job_id: int,
        verbs: tuple[str, str],
        apply: Callable[[asyncpg.Connection, Sequence[int]], Awaitable[int]],
    ) -> None:
        action, done = verbs
        async with self._pools.pool.acquire() as conn, conn.transaction():
            state = await jobs.state_for_update(conn, job_id)
            if state is None:
                raise not_found(f"job {job_id}")
            if not await apply(conn, [job_id]):
                raise Problem(
                    409,
                    "conflict",
                    f"Cannot {action} this job",
                    f"job {job_id} is {state}: it cannot be {done}",
                    state=state,
                )
            await audit_request(
                conn, req, f"queue.{action}", f"job {job_id}", {"from_state": state}
            )
            row = await fetch_job(conn, job_id)
        resp.media = job_json(row)


class DestinationQueueResource:
    """Actions on all of one destination's jobs."""

    def __init__(self, api: ApiContext) -> None:
        self._pools = api.pools

    @allow(*WRITERS)
    async def on_post_retry_dead(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, destination_id: int
    ) -> None:
        async with self._pools.pool.acquire() as conn, conn.transaction():
            row = await fetch_destination(conn, destination_id)
            count = await jobs.retry_dead(conn, destination_id)
            await audit_request(conn, req, "queue.retry_dead", row["name"], {"jobs": count})
        resp.media = {"requeued": count}

    @allow(*WRITERS)
    async def on_post_replay(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, destination_id: int
    ) -> None:
        """New jobs sending a study's or a series' instances to it again."""
        body = await body_of(req, {}, {"study_instance_uid": str, "series_instance_uid": str})
        if len(body) != 1:
            raise invalid("send one of 'study_instance_uid' and 'series_instance_uid'")
        async with self._pools.pool.acquire() as conn, conn.transaction():
            row = await fetch_destination(conn, destination_id)
            count = await jobs.replay(conn, destination_id, **body)
            if not count:
                (field, uid), *_ = body.items()
                what = field.removesuffix("_instance_uid")
                raise not_found(f"a stored {what} with UID {uid}")
            await audit_request(conn, req, "queue.replay", row["name"], body | {"jobs": count})
        resp.media = {"created": count}


class QueueStatsResource:
    def __init__(self, api: ApiContext) -> None:
        self._pools = api.pools

    @allow(*READERS)
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Per destination: jobs per state and how long the oldest pending one waited."""
        async with self._pools.pool.acquire() as conn:
            destinations = await conn.fetch(
                "SELECT id, name, enabled, paused, circuit_state FROM destinations "
                "ORDER BY lower(name), id"
            )
            stats = await queue_stats(conn)
        resp.media = {
            "items": [
                {
                    "destination_id": d["id"],
                    "destination": d["name"],
                    "enabled": d["enabled"],
                    "paused": d["paused"],
                    "circuit_state": d["circuit_state"],
                    **stats.get(d["id"], empty_stats()),
                }
                for d in destinations
            ],
            "next_cursor": None,
        }


def add_routes(app: App, api: ApiContext) -> None:
    jobs_resource = JobsResource(api)
    one = f"{PREFIX}/queue/jobs/{{job_id:id}}"
    app.add_route(f"{PREFIX}/queue/jobs", jobs_resource)
    app.add_route(one, jobs_resource, suffix="one")
    app.add_route(f"{one}/retry", jobs_resource, suffix="retry")
    app.add_route(f"{one}/cancel", jobs_resource, suffix="cancel")
    app.add_route(f"{PREFIX}/queue/stats", QueueStatsResource(api))
    per_destination = DestinationQueueResource(api)
    destination = f"{PREFIX}/destinations/{{destination_id:id}}"
    app.add_route(f"{destination}/retry-dead", per_destination, suffix="retry_dead")
    app.add_route(f"{destination}/replay", per_destination, suffix="replay")
