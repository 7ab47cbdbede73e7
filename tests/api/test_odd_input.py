"""Odd input that the conformance run (test_conformance.py) answered with a 500,
or with a status its description does not give: each is a 4xx problem now that
says what is wrong."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from falcon.testing import Result

from tests.api.inprocess import Api, api_config, logged_in, migrated

BEYOND_BIGINT = 2**63


@pytest.fixture
async def admin(empty_db: str, tmp_path: Path) -> AsyncIterator[Api]:
    await migrated(empty_db)
    async with logged_in(api_config(empty_db, tmp_path), "admin") as api:
        yield api


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


def _problem(resp: Result, status: int) -> dict[str, object]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    body: dict[str, object] = resp.json
    assert body["status"] == status
    return body


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", f"/me/sessions/{BEYOND_BIGINT}"),
        ("DELETE", f"/me/tokens/{BEYOND_BIGINT}"),
        ("PATCH", f"/users/{BEYOND_BIGINT}"),
        ("GET", f"/destinations/{BEYOND_BIGINT}"),
        ("POST", f"/destinations/{BEYOND_BIGINT}/echo"),
        ("POST", f"/destinations/{BEYOND_BIGINT}/retry-dead"),
        ("GET", f"/rules/{BEYOND_BIGINT}"),
        ("GET", f"/queue/jobs/{BEYOND_BIGINT}"),
        ("POST", f"/queue/jobs/{BEYOND_BIGINT}/retry"),
        ("GET", "/queue/jobs/0"),
        ("GET", "/queue/jobs/-1"),
    ],
)
async def test_a_row_id_beyond_bigint_is_not_found(admin: Api, method: str, path: str) -> None:
    # Past bigint it overflowed in the database driver (500); 0 and below share its 404.
    body = _problem(await admin.call(method, path, json={"disabled": False}), 404)
    assert body["type"] == "urn:dicom-gw:problem:not-found"
    assert "whole numbers from 1" in str(body["detail"])


async def test_a_row_id_within_bigint_reaches_the_resource(admin: Api) -> None:
    body = _problem(await admin.call("GET", f"/queue/jobs/{BEYOND_BIGINT - 1}"), 404)
    assert body["detail"] == f"job {BEYOND_BIGINT - 1} does not exist"


async def test_nul_in_a_path_is_not_found(admin: Api) -> None:
    body = _problem(await admin.call("GET", "/studies/1.2.3%00"), 404)
    assert "NUL" in str(body["detail"])


async def test_nul_in_a_query_parameter_is_refused(admin: Api) -> None:
    body = _problem(await admin.call("GET", "/audit", query_string="actor=adm%00in"), 422)
    assert body["field"] == "actor"
    assert "NUL" in str(body["detail"])


async def test_nul_in_a_json_body_is_refused(admin: Api) -> None:
    login = {"username": "ad\x00min", "password": "whatever"}
    body = _problem(await admin.call("POST", "/auth/login", json=login), 422)
    assert body["field"] == "username"
    rule = {"name": "r", "destinations": ["x"], "match": {"Modality": ["CT", "M\x00R"]}}
    assert _problem(await admin.call("POST", "/rules", json=rule), 422)["field"] == "match"


@pytest.mark.parametrize(
    ("path", "query", "field"),
    [
        # int('²') raises although '²'.isdigit(): 500.
        ("/studies", "limit=%C2%B2", "limit"),
        ("/instances/1.2.3/file", "version=%C2%B2", "version"),
        ("/instances/1.2.3/file", f"version={'9' * 5000}", "version"),
        # Falcon's own 400, which the description did not give.
        ("/audit", "limit=ten", "limit"),
        # Past bigint in the database driver: 500.
        ("/audit", f"cursor={_cursor(str(2**64))}", "cursor"),
        ("/queue/jobs", f"cursor={_cursor('9' * 19)}", "cursor"),
    ],
)
async def test_bad_numbers_in_queries_are_refused(
    admin: Api, path: str, query: str, field: str
) -> None:
    assert _problem(await admin.call("GET", path, query_string=query), 422)["field"] == field


@pytest.mark.parametrize("value", ["2025-01-01 10:00", "20250101", "2025-01-01T10", "2025-W01-1"])
async def test_only_the_documented_dates_and_times_are_taken(admin: Api, value: str) -> None:
    # fromisoformat takes these too; the description's pattern does not.
    for path, name in (("/audit", "from"), ("/studies", "received_from")):
        resp = await admin.call("GET", path, params={name: value})
        assert _problem(resp, 422)["field"] == name


@pytest.mark.parametrize("value", ["2025-01-01", "2025-01-01T10:00", "2025-01-01T10:00:00.5Z"])
async def test_a_date_or_a_date_and_time_is_taken(admin: Api, value: str) -> None:
    for path, name in (("/audit", "from"), ("/studies", "received_from")):
        resp = await admin.call("GET", path, params={name: value})
        assert resp.status_code == 200, resp.text


@pytest.mark.parametrize(
    ("query", "field"),
    [
        # Spaces around a value are not searched for, but count towards its length, as
        # the description's maxLength does; and a value of spaces is not an empty one.
        ({"patient_id": "0" * 64 + " "}, "patient_id"),
        ({"modality": "CT" + " " * 15}, "modality"),
        ({"source_ae": " STORESCU" + " " * 8}, "source_ae"),
        ({"limit": " "}, "limit"),
    ],
)
async def test_lengths_count_what_was_sent(admin: Api, query: dict[str, str], field: str) -> None:
    assert _problem(await admin.call("GET", "/studies", params=query), 422)["field"] == field


async def test_a_token_name_counts_what_was_sent(admin: Api) -> None:
    name = {"name": "t" * 64 + " "}
    assert _problem(await admin.call("POST", "/me/tokens", json=name), 422)["field"] == "name"
    name = {"name": " padded "}
    made = await admin.call("POST", "/me/tokens", json=name)
    assert made.status_code == 201 and made.json["name"] == "padded"


async def test_an_empty_query_parameter_is_ignored(admin: Api) -> None:
    # As the description says of every query parameter (forms send them).
    resp = await admin.call("GET", "/audit", query_string="limit=&cursor=&from=")
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"name": "pacs\n"}, "name"),
        ({"ae_title": "STORESCP\n"}, "ae_title"),
        ({"preferred_transfer_syntaxes": ["1.2.840.10008.1.2.1\n"]}, "preferred_transfer_syntaxes"),
    ],
)
async def test_a_final_newline_does_not_pass_a_pattern(
    admin: Api, change: dict[str, object], field: str
) -> None:
    # Python's $ matches before a final newline; the description's (JSON Schema's) does not.
    destination = {"type": "dimse", "name": "pacs", "ae_title": "STORESCP", "host": "127.0.0.1",
                   "port": 11112} | change  # fmt: skip
    resp = await admin.call("POST", "/destinations", json=destination)
    assert str(_problem(resp, 422)["field"]).startswith(field)
