"""Volume statistics for the dashboard: hourly and daily sums in ``metrics_rollup``.

Every minute the gateway recomputes the hour buckets of the last two hours from
the index and the queue, and the day buckets touched by them from the hour
buckets, so a dashboard query reads a few hundred rows whatever the volume.
Recomputing (delete + insert in one transaction) rather than incrementing makes
it idempotent: a restart, a second gateway or a late commit never counts twice.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

import asyncpg

log = logging.getLogger(__name__)

METRICS = ("received_instances", "received_bytes", "forwarded_instances", "forwarded_bytes")
DIMENSIONS = ("total", "modality", "source_ae", "destination")
ROLLUP_INTERVAL_S = 60.0
# Hour buckets serve ranges up to 7 days; day buckets up to 90 (kept for a year).
HOUR_RETENTION = dt.timedelta(days=8)
DAY_RETENTION = dt.timedelta(days=400)

# Hour buckets from $1 on: received by modality and by source AE, forwarded by
# destination, and totals; dimension '' is the total.
HOURS = """
WITH received AS (
    SELECT date_trunc('hour', i.received_at) AS bucket, se.modality, i.source_ae, i.size_bytes
    FROM instances i JOIN series se ON se.id = i.series_id
    WHERE i.received_at >= $1
), forwarded AS (
    SELECT date_trunc('hour', j.finished_at) AS bucket, d.name AS destination, i.size_bytes
    FROM forward_jobs j JOIN destinations d ON d.id = j.destination_id
    JOIN instances i ON i.id = j.instance_id
    WHERE j.state = 'done' AND j.finished_at >= $1
)
SELECT bucket, 'received_instances' AS metric, '' AS dimension, count(*) AS value
    FROM received GROUP BY 1
UNION ALL SELECT bucket, 'received_bytes', '', sum(size_bytes) FROM received GROUP BY 1
UNION ALL SELECT bucket, 'received_instances', 'modality:' || coalesce(modality, '?'), count(*)
    FROM received GROUP BY 1, 3
UNION ALL SELECT bucket, 'received_bytes', 'modality:' || coalesce(modality, '?'), sum(size_bytes)
    FROM received GROUP BY 1, 3
UNION ALL SELECT bucket, 'received_instances', 'source_ae:' || coalesce(source_ae, '?'), count(*)
    FROM received GROUP BY 1, 3
UNION ALL SELECT bucket, 'received_bytes', 'source_ae:' || coalesce(source_ae, '?'),
    sum(size_bytes) FROM received GROUP BY 1, 3
UNION ALL SELECT bucket, 'forwarded_instances', '', count(*) FROM forwarded GROUP BY 1
UNION ALL SELECT bucket, 'forwarded_bytes', '', sum(size_bytes) FROM forwarded GROUP BY 1
UNION ALL SELECT bucket, 'forwarded_instances', 'destination:' || destination, count(*)
    FROM forwarded GROUP BY 1, 3
UNION ALL SELECT bucket, 'forwarded_bytes', 'destination:' || destination, sum(size_bytes)
    FROM forwarded GROUP BY 1, 3
"""


async def rollup(conn: asyncpg.Connection, hours: int = 2) -> None:
    """Recompute the last ``hours`` hour buckets and the days they fall in."""
    async with conn.transaction():
        # NOTE: two gateways on one database take turns instead of deadlocking.
        await conn.execute("SELECT pg_advisory_xact_lock(7349262)")
        since = await conn.fetchval(
            "SELECT date_trunc('hour', now()) - make_interval(hours => $1)", hours - 1
        )
        await conn.execute(
            "DELETE FROM metrics_rollup WHERE granularity = 'hour' AND bucket >= $1", since
        )
        await conn.execute(
            "INSERT INTO metrics_rollup (granularity, bucket, metric, dimension, value) "
            f"SELECT 'hour', bucket, metric, dimension, value FROM ({HOURS}) h",
            since,
        )
        day = await conn.fetchval("SELECT date_trunc('day', $1::timestamptz)", since)
        await conn.execute(
            "DELETE FROM metrics_rollup WHERE granularity = 'day' AND bucket >= $1", day
        )
        await conn.execute(
            "INSERT INTO metrics_rollup (granularity, bucket, metric, dimension, value) "
            "SELECT 'day', date_trunc('day', bucket), metric, dimension, sum(value) "
            "FROM metrics_rollup WHERE granularity = 'hour' AND bucket >= $1 GROUP BY 2, 3, 4",
            day,
        )
        await conn.execute(
            "DELETE FROM metrics_rollup "
            "WHERE (granularity = 'hour' AND bucket < now() - $1::interval) "
            "OR (granularity = 'day' AND bucket < now() - $2::interval)",
            HOUR_RETENTION,
            DAY_RETENTION,
        )


async def rollup_forever(pool: asyncpg.Pool, interval_s: float = ROLLUP_INTERVAL_S) -> None:
    """The serve process's task: a rollup now and then every ``interval_s``.

    The first run covers the last 48 hours, so a gateway that was down for a
    while catches up on the day buckets it missed.
    """
    hours = 48
    while True:
        try:
            async with pool.acquire() as conn:
                await rollup(conn, hours)
            hours = 2
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("statistics rollup failed", extra={"error": str(exc)})
        await asyncio.sleep(interval_s)
