"""Dashboard volumes: the rollup sums what the index and the queue hold, and the
API serves it per hour/day and dimension."""

from __future__ import annotations

import csv
import datetime as dt
import io
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from dicomgw.stats import rollup
from tests.api.inprocess import api_config, logged_in, migrated
from tests.records import indexing, record


async def seed(dsn: str) -> None:
    """12 CT from CT1, 5 MR from MR1 (received now), 3 CT received two days ago;
    4 of the CT forwarded to 'pacs'."""
    now = dt.datetime.now(dt.UTC)
    records = [replace(record(n), source_ae="CT1", size_bytes=1000) for n in range(12)]
    records += [
        replace(record(n, modality="MR", series=f"9.{uuid.uuid4().int % 10**6}"),
                source_ae="MR1", size_bytes=500)
        for n in range(5)
    ]  # fmt: skip
    records += [
        replace(record(n), source_ae="CT1", size_bytes=1000, received_at=now - dt.timedelta(days=2))
        for n in range(3)
    ]
    async with indexing(dsn) as writer, writer.pool.acquire() as conn:
        for r in records:
            await writer.index(r)
        dest = await conn.fetchval(
            "INSERT INTO destinations (name, kind) VALUES ('pacs', 'dimse') RETURNING id"
        )
        await conn.execute(
            "INSERT INTO forward_jobs (instance_id, destination_id, state, finished_at) "
            "SELECT id, $1, 'done', now() FROM instances WHERE source_ae = 'CT1' "
            "AND received_at > now() - interval '1 hour' LIMIT 4",
            dest,
        )
        await rollup(conn, hours=72)
        await rollup(conn)  # idempotent: a second run changes nothing


@pytest.fixture
async def seeded(empty_db: str) -> str:
    await migrated(empty_db)
    await seed(empty_db)
    return empty_db


async def test_volumes_by_dimension(seeded: str, tmp_path: Path) -> None:
    async with logged_in(api_config(seeded, tmp_path), "viewer") as api:
        day = await api.call("GET", "/stats/volume", params={"range": "1d", "by": "modality"})
        assert day.status_code == 200
        assert day.json["granularity"] == "hour"
        assert {k: sum(v) for k, v in day.json["series"].items()} == {"CT": 12, "MR": 5}
        assert len(day.json["buckets"]) in (24, 25)
        week = await api.call("GET", "/stats/volume", params={"range": "7d"})
        assert sum(week.json["series"]["total"]) == 20
        month = await api.call(
            "GET", "/stats/volume", params={"range": "30d", "metric": "received_bytes",
                                            "by": "source_ae"},
        )  # fmt: skip
        assert month.json["granularity"] == "day"
        assert {k: sum(v) for k, v in month.json["series"].items()} == {
            "CT1": 15_000,
            "MR1": 2_500,
        }
        fwd = await api.call(
            "GET", "/stats/volume", params={"metric": "forwarded_instances", "by": "destination"}
        )
        assert {k: sum(v) for k, v in fwd.json["series"].items()} == {"pacs": 4}


async def test_csv_and_validation(seeded: str, tmp_path: Path) -> None:
    async with logged_in(api_config(seeded, tmp_path), "operator") as api:
        result = await api.call("GET", "/stats/volume.csv", params={"by": "source_ae"})
        assert result.status_code == 200
        rows = list(csv.reader(io.StringIO(result.text)))
        assert rows[0] == ["bucket", "CT1", "MR1"]
        assert sum(int(r[1]) for r in rows[1:]) == 12
        bad = await api.call("GET", "/stats/volume", params={"range": "2y"})
        assert bad.status_code == 422
        assert bad.json["field"] == "range"


async def test_auditors_do_not_see_dashboards(seeded: str, tmp_path: Path) -> None:
    async with logged_in(api_config(seeded, tmp_path), "auditor") as api:
        assert (await api.call("GET", "/stats/volume")).status_code == 403
