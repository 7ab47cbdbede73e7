"""The audit log over the API: auditors (and admins) search and export it."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import asyncpg
import pytest

from dicomgw import audit
from tests.api.inprocess import api_config, logged_in, migrated


async def seed(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for n in range(30):
            await audit.record(
                conn,
                actor="alice" if n % 2 else "=cmd|' /C calc'!A0",
                action="study.view" if n % 3 else "auth.login",
                target=f"1.2.{n}",
                outcome="failure" if n % 5 == 0 else "success",
            )
    finally:
        await conn.close()


@pytest.mark.parametrize("role", ["operator", "viewer"])
async def test_only_auditors_and_admins_read_it(empty_db: str, tmp_path: Path, role: str) -> None:
    await migrated(empty_db)
    async with logged_in(api_config(empty_db, tmp_path), role) as api:
        assert (await api.call("GET", "/audit")).status_code == 403
        assert (await api.call("GET", "/audit.csv")).status_code == 403


async def test_search_filters_and_pages(empty_db: str, tmp_path: Path) -> None:
    await migrated(empty_db)
    await seed(empty_db)
    async with logged_in(api_config(empty_db, tmp_path), "auditor") as api:
        seen: list[int] = []
        cursor = None
        while True:
            params = {"actor": "alice", "limit": "4", **({"cursor": cursor} if cursor else {})}
            page = await api.call("GET", "/audit", params=params)
            assert page.status_code == 200
            seen += [item["id"] for item in page.json["items"]]
            assert all(item["actor"] == "alice" for item in page.json["items"])
            cursor = page.json["next_cursor"]
            if cursor is None:
                break
        assert len(seen) == 15 == len(set(seen))
        assert seen == sorted(seen, reverse=True)
        failures = await api.call("GET", "/audit", params={"outcome": "failure", "action": "auth*"})
        assert {i["outcome"] for i in failures.json["items"]} == {"failure"}
        assert {i["action"] for i in failures.json["items"]} == {"auth.login"}
        bad = await api.call("GET", "/audit", params={"from": "yesterday"})
        assert bad.status_code == 422
        assert bad.json["field"] == "from"
        # Reading the audit log is itself audited.
        mine = await api.call("GET", "/audit", params={"actor": api.username})
        assert "audit.search" in {i["action"] for i in mine.json["items"]}


async def test_csv_export_is_complete_and_safe(empty_db: str, tmp_path: Path) -> None:
    await migrated(empty_db)
    await seed(empty_db)
    async with logged_in(api_config(empty_db, tmp_path), "auditor") as api:
        result = await api.call("GET", "/audit.csv", params={"action": "study.view"})
        assert result.status_code == 200
        assert result.headers["content-type"].startswith("text/csv")
        assert "attachment" in result.headers["content-disposition"]
        rows = list(csv.DictReader(io.StringIO(result.text)))
    assert len(rows) == 20
    assert all(r["action"] == "study.view" for r in rows)
    formulas = [r["actor"] for r in rows if "calc" in r["actor"]]
    assert formulas and all(a.startswith("'=") for a in formulas)
