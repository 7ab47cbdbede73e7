"""Destinations over the API, in-process on a real PostgreSQL: CRUD, validation,
write-only encrypted secrets, roles, config-declared protection, delete guards,
pause/resume and echo against a real DICOM peer.

The helpers at the top are shared with test_rules.py and test_queue.py.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import falcon.testing
import orjson

from dicomgw.api.app import ROUTES
from dicomgw.api.resources import destinations, queue, rules
from dicomgw.config import Config, load_config
from dicomgw.db.channels import ROUTING
from dicomgw.send.destinations import apply_declared
from dicomgw.send.secrets import SecretBox
from tests.api.inprocess import Api, api_config, logged_in, migrated
from tests.interop.corpus import running_sink
from tests.records import indexing, record
from tests.support.wait import eventually

# -- shared with test_rules.py and test_queue.py ------------------------------------

FORWARDING = (*ROUTES, destinations.add_routes, rules.add_routes, queue.add_routes)

PACS = {
    "name": "pacs1",
    "type": "dimse",
    "ae_title": "STORESCP",
    "host": "127.0.0.1",
    "port": 11113,
}
CLOUD = {
    "name": "cloud",
    "type": "stowrs",
    "url": "http://127.0.0.1:8042/dicom-web",
    "auth": "bearer",
    "token": "s3cret-token",
}


async def prepared(dsn: str, tmp_path: Path) -> Config:
    await migrated(dsn)
    return api_config(dsn, tmp_path)


def as_role(config: Config, role: str) -> contextlib.AbstractAsyncContextManager[Api]:
    return logged_in(config, role, routes=FORWARDING)


async def created(api: Api, path: str, body: dict[str, Any]) -> dict[str, Any]:
    result = await api.call("POST", path, json=body)
    assert result.status_code == 201, result.text
    body = result.json
    return body


def problem_field(result: falcon.testing.Result, status: int = 422) -> str | None:
    assert result.status_code == status, result.text
    assert result.headers["content-type"] == "application/problem+json"
    field: str | None = result.json.get("field")
    return field


async def audit_rows(dsn: str, prefix: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(
            "SELECT actor, action, target, detail, outcome FROM audit_log "
            "WHERE action LIKE $1 ORDER BY id",
            f"{prefix}%",
        )
        return rows
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def ingesting(dsn: str) -> AsyncIterator[Callable[..., Awaitable[None]]]:
    """``await index(*records)``: index rows and the jobs ingest gives them."""
    async with indexing(dsn) as writer:
        yield writer.index


@contextlib.asynccontextmanager
async def listening(dsn: str, channel: str) -> AsyncIterator[list[str]]:
    """Payloads of NOTIFYs on ``channel`` while inside."""
    heard: list[str] = []
    conn = await asyncpg.connect(dsn)
    await conn.add_listener(channel, lambda *args: heard.append(str(args[-1])))
    try:
        yield heard
    finally:
        await conn.close()


# -- CRUD ---------------------------------------------------------------------------


async def test_create_read_update_delete(empty_db: str, tmp_path: Path) -> None:
    config = await prepared(empty_db, tmp_path)
    async with as_role(config, "operator") as api, listening(empty_db, ROUTING) as heard:
        result = await api.call("POST", "/destinations", json=PACS)
        assert result.status_code == 201, result.text
        made = result.json
        assert result.headers["location"] == f"/api/v1/destinations/{made['id']}"
        assert {k: made[k] for k in PACS} == PACS
        assert made["max_parallel"] == 2 and made["calling_ae_title"] == "DICOMGW"
        assert made["paused"] is False and made["from_config"] is False
        assert made["health"]["circuit_state"] == "closed"
        assert made["queue"]["pending"] == 0 and made["queue"]["oldest_pending_age_s"] is None
        await eventually(lambda: bool(heard))

        one = await api.call("GET", f"/destinations/{made['id']}")
        assert one.status_code == 200 and one.json == made
        listed = (await api.call("GET", "/destinations")).json
        assert [d["name"] for d in listed["items"]] == ["pacs1"]
        assert listed["next_cursor"] is None

        changed = await api.call(
            "PATCH", f"/destinations/{made['id']}", json={"port": 104, "max_parallel": 4}
        )
        assert changed.status_code == 200, changed.text
        assert changed.json["port"] == 104 and changed.json["max_parallel"] == 4
        assert changed.json["ae_title"] == "STORESCP"

        assert (await api.call("DELETE", f"/destinations/{made['id']}")).status_code == 204
        assert (await api.call("GET", f"/destinations/{made['id']}")).status_code == 404
        await eventually(lambda: len(heard) >= 3)  # NOTIFYs arrive after the commits
    actions = [(r["actor"], r["action"], r["target"]) for r in await audit_rows(empty_db, "dest")]
    assert actions == [
        (api.username, "destination.create", "pacs1"),
        (api.username, "destination.update", "pacs1"),
        (api.username, "destination.delete", "pacs1"),
    ]


async def test_validation_errors_name_the_field(empty_db: str, tmp_path: Path) -> None:
    config = await prepared(empty_db, tmp_path)
    async with as_role(config, "admin") as api:

        async def refused(body: dict[str, Any]) -> str | None:
            return problem_field(await api.call("POST", "/destinations", json=body))

        assert await refused(PACS | {"ae_title": "A" * 17}) == "ae_title"
        assert await refused(PACS | {"ae_title": "BAD\\AE"}) == "ae_title"
        assert await refused(PACS | {"type": "ftp"}) == "type"
        assert await refused({k: v for k, v in PACS.items() if k != "host"}) == "host"
        assert await refused(PACS | {"port": "eleven"}) == "port"
        assert await refused(PACS | {"port": 70000}) == "port"
        assert await refused(PACS | {"colour": "red"}) == "colour"
        assert await refused(PACS | {"url": "http://x"}) == "url"
        assert await refused(PACS | {"tls_ca_file": "/etc/ca.pem"}) == "tls_ca_file"
        assert await refused(CLOUD | {"auth": "basic"}) == "auth"
        detail = (await api.call("POST", "/destinations", json=PACS | {"ae_title": ""})).json
        assert "AE title" in detail["detail"]

        made = await created(api, "/destinations", PACS)
        dup = await api.call("POST", "/destinations", json=PACS)
        assert problem_field(dup, 409) == "name"
        retype = await api.call("PATCH", f"/destinations/{made['id']}", json={"type": "stowrs"})
        assert problem_field(retype) == "type"
        bad = await api.call("PATCH", f"/destinations/{made['id']}", json={"ae_title": ""})
        assert problem_field(bad) == "ae_title"
        assert (await api.call("GET", f"/destinations/{made['id']}")).json == made


async def test_secrets_are_write_only_and_stored_encrypted(empty_db: str, tmp_path: Path) -> None:
    config = await prepared(empty_db, tmp_path)
    async with as_role(config, "operator") as api:
        made = await created(api, "/destinations", CLOUD)
        one = (await api.call("GET", f"/destinations/{made['id']}")).json
        for shown in (made, one, (await api.call("GET", "/destinations")).json["items"][0]):
            assert "token" not in shown and "password" not in shown
            assert shown["token_set"] is True and shown["password_set"] is False
            assert b"s3cret-token" not in orjson.dumps(shown)

        conn = await asyncpg.connect(empty_db)
        try:
            row = await conn.fetchrow("SELECT settings::text, secret FROM destinations")
            assert "s3cret" not in row["settings"]
            assert b"s3cret" not in row["secret"]
            box = SecretBox.open(Path(config.state_dir))
            assert box.unseal(row["secret"]) == {"token": "s3cret-token"}

            # Another field changes; the secret stays.
            kept = await api.call("PATCH", f"/destinations/{made['id']}", json={"timeout_s": 5})
            assert kept.status_code == 200 and kept.json["token_set"] is True
            secret = await conn.fetchval("SELECT secret FROM destinations")
            assert box.unseal(secret) == {"token": "s3cret-token"}

            basic = {"auth": "basic", "username": "u", "password": "pw-123", "token": None}
            switched = await api.call("PATCH", f"/destinations/{made['id']}", json=basic)
            assert switched.status_code == 200, switched.text
            assert switched.json["password_set"] is True and switched.json["token_set"] is False
            assert box.unseal(await conn.fetchval("SELECT secret FROM destinations")) == {
                "password": "pw-123"
            }
        finally:
            await conn.close()
    *_, update = await audit_rows(empty_db, "destination.")
    detail = orjson.loads(update["detail"])
    assert detail == {"auth": "basic", "username": "u", "password": "set", "token": "cleared"}


async def test_roles(empty_db: str, tmp_path: Path) -> None:
    config = await prepared(empty_db, tmp_path)
    async with as_role(config, "operator") as operator:
        made = await created(operator, "/destinations", PACS)
    one = f"/destinations/{made['id']}"
    writes = [
        ("POST", "/destinations", PACS | {"name": "other"}),
        ("PATCH", one, {"port": 1}),
        ("DELETE", one, None),
        ("POST", f"{one}/pause", None),
        ("POST", f"{one}/resume", None),
        ("POST", f"{one}/echo", None),
    ]
    async with as_role(config, "viewer") as viewer:
        assert (await viewer.call("GET", "/destinations")).status_code == 200
        assert (await viewer.call("GET", one)).status_code == 200
        for method, path, body in writes:
            assert (await viewer.call(method, path, json=body)).status_code == 403, path
        anonymous = await viewer.conductor.simulate_get("/api/v1/destinations")
        assert anonymous.status_code == 401
    async with as_role(config, "auditor") as auditor:
        assert (await auditor.call("GET", "/destinations")).status_code == 403
        assert (await auditor.call("GET", one)).status_code == 403
    async with as_role(config, "admin") as admin:
        assert (await admin.call("PATCH", one, json={"port": 1})).status_code == 200


async def test_declared_destinations_are_read_paused_and_echoed_only(
    empty_db: str, tmp_path: Path
) -> None:
    config = await prepared(empty_db, tmp_path)
    declared_yaml = tmp_path / "dicom-gw.yaml"
    declared_yaml.write_text(orjson.dumps({"destinations": [PACS]}).decode())
    declaring = load_config(str(declared_yaml), {"DICOMGW_STATE_DIR": str(tmp_path)})
    conn = await asyncpg.connect(empty_db)
    try:
        await apply_declared(conn, declaring, SecretBox.open(Path(config.state_dir)))
    finally:
        await conn.close()
    async with as_role(config, "admin") as api:
        [shown] = (await api.call("GET", "/destinations")).json["items"]
        assert shown["from_config"] is True
        one = f"/destinations/{shown['id']}"
        for method, body in (("PATCH", {"port": 1}), ("DELETE", None)):
            refused = await api.call(method, one, json=body)
            assert refused.status_code == 409
            assert refused.json["type"] == "urn:dicom-gw:problem:from-config"
            assert "config file" in refused.json["detail"]
        paused = await api.call("POST", f"{one}/pause")
        assert paused.status_code == 200 and paused.json["paused"] is True
        resumed = await api.call("POST", f"{one}/resume")
        assert resumed.status_code == 200 and resumed.json["paused"] is False
        assert (await api.call("POST", f"{one}/echo")).json["ok"] is False
    actions = [r["action"] for r in await audit_rows(empty_db, "destination.")]
    assert actions == ["destination.pause", "destination.resume", "destination.echo"]


async def test_delete_refused_while_a_rule_names_it_or_jobs_wait(
    empty_db: str, tmp_path: Path
) -> None:
    config = await prepared(empty_db, tmp_path)
    async with as_role(config, "operator") as api:
        pacs = await created(api, "/destinations", PACS)
        rule = await created(api, "/rules", {"name": "all", "destinations": ["pacs1"]})
        one = f"/destinations/{pacs['id']}"
        named = await api.call("DELETE", one)
        assert named.status_code == 409 and named.json["rules"] == ["all"]

        async with ingesting(empty_db) as index:
            await index(record(1))
        assert (await api.call("DELETE", f"/rules/{rule['id']}")).status_code == 204
        waiting = await api.call("DELETE", one)
        assert waiting.status_code == 409 and waiting.json["jobs"] == 1

        [job] = (await api.call("GET", "/queue/jobs")).json["items"]
        assert (await api.call("POST", f"/queue/jobs/{job['id']}/cancel")).status_code == 200
        assert (await api.call("DELETE", one)).status_code == 204
    [deleted] = await audit_rows(empty_db, "destination.delete")
    assert orjson.loads(deleted["detail"]) == {"finished_jobs_removed": 1}


async def test_echo_a_real_peer_and_a_closed_port(empty_db: str, tmp_path: Path) -> None:
    config = await prepared(empty_db, tmp_path)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    async with as_role(config, "operator") as api:
        with running_sink() as sink:
            peer = await created(
                api, "/destinations", PACS | {"ae_title": "IOPSINK", "port": sink.port}
            )
            echo = await api.call("POST", f"/destinations/{peer['id']}/echo")
        assert echo.status_code == 200, echo.text
        assert echo.json["ok"] is True and echo.json["error"] is None
        assert 0 < echo.json["rtt_ms"] < 5000

        closed = await created(api, "/destinations", PACS | {"name": "closed", "port": closed_port})
        refused = (await api.call("POST", f"/destinations/{closed['id']}/echo")).json
        assert refused["ok"] is False and refused["rtt_ms"] is None
        assert f"127.0.0.1:{closed_port}" in refused["error"]

        stow = await created(
            api, "/destinations", CLOUD | {"url": f"http://127.0.0.1:{closed_port}"}
        )
        unreachable = (await api.call("POST", f"/destinations/{stow['id']}/echo")).json
        assert unreachable["ok"] is False and "not reachable" in unreachable["error"]
    outcomes = [(r["target"], r["outcome"]) for r in await audit_rows(empty_db, "destination.echo")]
    assert outcomes == [("pacs1", "success"), ("closed", "failure"), ("cloud", "failure")]


async def test_pause_and_resume(empty_db: str, tmp_path: Path) -> None:
    config = await prepared(empty_db, tmp_path)
    async with as_role(config, "operator") as api:
        made = await created(api, "/destinations", PACS)
        one = f"/destinations/{made['id']}"
        async with listening(empty_db, ROUTING) as heard:
            assert (await api.call("POST", f"{one}/pause")).json["paused"] is True
            await eventually(lambda: bool(heard))
        assert (await api.call("GET", one)).json["paused"] is True
        assert (await api.call("POST", f"{one}/resume")).json["paused"] is False
        assert (await api.call("POST", "/destinations/999999/pause")).status_code == 404
