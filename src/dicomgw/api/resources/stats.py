"""Dashboard volumes: instances and bytes received and forwarded, per hour or day,
in total or by modality, source AE or destination (from ``metrics_rollup``); and
the live totals the dashboard takes its rates from (the metrics files)."""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Any

import falcon
import falcon.asgi

from dicomgw.api.auth import allow
from dicomgw.api.context import PREFIX, ApiContext, App
from dicomgw.api.problems import invalid
from dicomgw.api.spreadsheet import cell
from dicomgw.metrics import live_totals
from dicomgw.stats import DIMENSIONS, METRICS

# Range -> (bucket granularity, span).
RANGES = {
    "1d": ("hour", dt.timedelta(days=1)),
    "7d": ("hour", dt.timedelta(days=7)),
    "30d": ("day", dt.timedelta(days=30)),
    "90d": ("day", dt.timedelta(days=90)),
}


STEP = {"hour": dt.timedelta(hours=1), "day": dt.timedelta(days=1)}


def _choice(req: falcon.asgi.Request, name: str, allowed: tuple[str, ...], default: str) -> str:
    value = req.get_param(name) or default
    if value not in allowed:
        raise invalid(f"'{name}' must be one of {', '.join(allowed)}", field=name)
    return value


class VolumeResource:
    def __init__(self, api: ApiContext) -> None:
        self._pools = api.pools

    async def _series(self, req: falcon.asgi.Request) -> dict[str, Any]:
        span = _choice(req, "range", tuple(RANGES), "1d")
        metric = _choice(req, "metric", METRICS, "received_instances")
        by = _choice(req, "by", DIMENSIONS, "total")
        granularity, length = RANGES[span]
        async with self._pools.pool.acquire() as conn:
            start = await conn.fetchval(
                "SELECT date_trunc($1, now() - $2::interval) + make_interval("
                "hours => CASE WHEN $1 = 'hour' THEN 1 ELSE 0 END, "
                "days => CASE WHEN $1 = 'day' THEN 1 ELSE 0 END)",
                granularity,
                length,
            )
            rows = await conn.fetch(
                "SELECT bucket, dimension, value FROM metrics_rollup "
                "WHERE granularity = $1 AND metric = $2 AND bucket >= $3 "
                "AND (dimension = '' AND $4 = 'total' OR dimension LIKE $4 || ':%') "
                "ORDER BY bucket",
                granularity,
                metric,
                start,
                by,
            )
            buckets = [
                r["b"]
                for r in await conn.fetch(
                    "SELECT generate_series($1::timestamptz, now(), $2::interval) AS b",
                    start,
                    STEP[granularity],
                )
            ]
        index = {b: n for n, b in enumerate(buckets)}
        series: dict[str, list[int]] = {}
        for row in rows:
            name = row["dimension"].partition(":")[2] if by != "total" else "total"
            values = series.setdefault(name, [0] * len(buckets))
            if row["bucket"] in index:
                values[index[row["bucket"]]] = int(row["value"])
        return {
            "range": span,
            "metric": metric,
            "by": by,
            "granularity": granularity,
            "buckets": [b.isoformat() for b in buckets],
            "series": series,
        }

    @allow("operator", "viewer")
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = await self._series(req)

    @allow("operator", "viewer")
    async def on_get_csv(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        data = await self._series(req)
        out = io.StringIO()
        writer = csv.writer(out)
        names = sorted(data["series"])
        writer.writerow(["bucket", *map(cell, names)])
        for n, bucket in enumerate(data["buckets"]):
            writer.writerow([bucket, *(data["series"][name][n] for name in names)])
        resp.content_type = "text/csv; charset=utf-8"
        resp.downloadable_as = f"{data['metric']}-{data['range']}-by-{data['by']}.csv"
        resp.text = out.getvalue()


class LiveTotalsResource:
    @allow("operator", "viewer")
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = live_totals()


def add_routes(app: App, api: ApiContext) -> None:
    app.add_route(f"{PREFIX}/stats/live", LiveTotalsResource())
    volume = VolumeResource(api)
    app.add_route(f"{PREFIX}/stats/volume", volume)
    app.add_route(f"{PREFIX}/stats/volume.csv", volume, suffix="csv")
