"""The audit log for auditors: search with keyset paging, and a streamed CSV export."""

from __future__ import annotations

import base64
import csv
import datetime as dt
import io
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import falcon
import falcon.asgi
import orjson

from dicomgw import audit
from dicomgw.api.auditing import audit_request
from dicomgw.api.auth import allow
from dicomgw.api.context import BIGINT_MAX, PREFIX, ApiContext, App
from dicomgw.api.problems import Problem, invalid
from dicomgw.api.spreadsheet import cell
from dicomgw.api.validation import date_or_time, whole_number

COLUMNS = (
    "id", "at", "actor", "action", "target", "outcome", "event_id", "source_ip", "request_id",
    "detail",
)  # fmt: skip
MAX_LIMIT = 500
DEFAULT_LIMIT = 100
CSV_BATCH = 1000


def _filters(req: falcon.asgi.Request) -> tuple[str, list[Any]]:
    """WHERE clause and its arguments from the query parameters."""
    where: list[str] = ["true"]
    args: list[Any] = []
    for name, column in (("actor", "actor"), ("action", "action"), ("target", "target")):
        value = req.get_param(name)
        if value:
            args.append(value.replace("*", "%") if value.endswith("*") else value)
            where.append(f"{column} {'LIKE' if value.endswith('*') else '='} ${len(args)}")
    outcome = req.get_param("outcome")
    if outcome:
        if outcome not in ("success", "failure"):
            raise invalid("'outcome' is success or failure", field="outcome")
        args.append(outcome)
        where.append(f"outcome = ${len(args)}")
    for name, op in (("from", ">="), ("to", "<")):
        value = req.get_param(name)
        if value:
            args.append(date_or_time(value, name))
            where.append(f"at {op} ${len(args)}")
    return " AND ".join(where), args


def _row(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "at": row["at"].isoformat(),
        "actor": row["actor"],
        "action": row["action"],
        "target": row["target"],
        "outcome": row["outcome"],
        "event_id": row["event_id"],
        "source_ip": row["source_ip"],
        "request_id": row["request_id"],
        "detail": orjson.loads(row["detail"]),
    }


SELECT = (
    "SELECT id, at, actor, action, target, outcome, event_id, host(source_ip) AS source_ip, "
    "request_id, detail FROM audit_log"
)


class AuditResource:
    def __init__(self, api: ApiContext) -> None:
        self._pools = api.pools

    async def _note(self, req: falcon.asgi.Request, what: str) -> None:
        async with self._pools.pool.acquire() as conn:
            await audit_request(conn, req, what, detail=dict(req.params), event_id=audit.QUERY)

    @allow("auditor")
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        where, args = _filters(req)
        limit = whole_number(req.get_param("limit") or None, "limit", MAX_LIMIT) or DEFAULT_LIMIT
        cursor = req.get_param("cursor")
        if cursor:
            try:
                raw = base64.urlsafe_b64decode(cursor.encode()).decode()
                before = whole_number(raw, "cursor", BIGINT_MAX)
            except (ValueError, Problem):
                raise invalid("'cursor' is not one this API returned", field="cursor") from None
            args.append(before)
            where += f" AND id < ${len(args)}"
        args.append(limit + 1)
        async with self._pools.pool.acquire() as conn:
            rows = await conn.fetch(
                f"{SELECT} WHERE {where} ORDER BY id DESC LIMIT ${len(args)}", *args
            )
        more = len(rows) > limit
        rows = rows[:limit]
        await self._note(req, "audit.search")
        resp.media = {
            "items": [_row(r) for r in rows],
            "next_cursor": base64.urlsafe_b64encode(str(rows[-1]["id"]).encode()).decode()
            if more
            else None,
        }

    @allow("auditor")
    async def on_get_csv(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        where, args = _filters(req)
        await self._note(req, "audit.export")
        resp.content_type = "text/csv; charset=utf-8"
        resp.downloadable_as = f"audit-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.csv"
        resp.stream = self._csv(where, args)

    async def _csv(self, where: str, args: list[Any]) -> AsyncIterator[bytes]:
        """Oldest first, read in batches by id, so memory stays flat for any size."""
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(COLUMNS)
        last = 0
        while True:
            async with self._pools.pool.acquire() as conn:
                rows = await conn.fetch(
                    f"{SELECT} WHERE {where} AND id > ${len(args) + 1} "
                    f"ORDER BY id LIMIT {CSV_BATCH}",
                    *args,
                    last,
                )
            for row in rows:
                item = _row(row)
                item["detail"] = orjson.dumps(item["detail"]).decode()
                writer.writerow([cell(item[c]) for c in COLUMNS])
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
            if len(rows) < CSV_BATCH:
                return
            last = rows[-1]["id"]


def add_routes(app: App, api: ApiContext) -> None:
    resource = AuditResource(api)
    app.add_route(f"{PREFIX}/audit", resource)
    app.add_route(f"{PREFIX}/audit.csv", resource, suffix="csv")
