"""Routing rules over the API, in-process on a real PostgreSQL: CRUD, validation,
order, config-declared protection, hits, dry run, roles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import orjson

from dicomgw.config import load_config
from dicomgw.db.channels import ROUTING
from dicomgw.send.destinations import apply_declared
from dicomgw.send.secrets import SecretBox
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

CT_TO_CLOUD = {"name": "ct-to-cloud", "match": {"modality": "CT"}, "destinations": ["cloud"]}
EVERYTHING = {"name": "everything", "destinations": ["pacs1"]}


async def test_create_read_update_delete(empty_db: str, tmp_path: Path) -> None:
    config = await prepared(empty_db, tmp_path)
    async with as_role(config, "operator") as api:
        pacs = await created(api, "/destinations", PACS)
        cloud = await created(api, "/destinations", CLOUD)
        async with listening(empty_db, ROUTING) as heard:
            result = await api.call("POST", "/rules", json=CT_TO_CLOUD)
            assert result.status_code == 201, result.text
            await eventually(lambda: bool(heard))
        rule = result.json
        assert result.headers["location"] == f"/api/v1/rules/{rule['id']}"
        assert rule["match"] == {"modality": "CT"}
        assert rule["destinations"] == ["cloud"] and rule["destination_ids"] == [cloud["id"]]
        assert rule["granularity"] == "instance" and rule["hits"] == 0
        assert rule["enabled"] is True and rule["from_config"] is False
        assert (await api.call("GET", f"/rules/{rule['id']}")).json == rule

        change = {
            "match": {"modality": ["CT", "re:^M"], "calling_ae": "glob:CT_*"},
            "destinations": ["pacs1", "cloud"],
            "granularity": "study",
            "quiet_period_s": 30,
        }
        changed = await api.call("PATCH", f"/rules/{rule['id']}", json=change)
        assert changed.status_code == 200, changed.text
        assert {k: changed.json[k] for k in change} == change | {"destinations": ["pacs1", "cloud"]}
        assert changed.json["destination_ids"] == [pacs["id"], cloud["id"]]
        assert changed.json["name"] == "ct-to-cloud"

        listed = (await api.call("GET", "/rules")).json
        assert [r["id"] for r in listed["items"]] == [rule["id"]]
        assert (await api.call("DELETE", f"/rules/{rule['id']}")).status_code == 204
        assert (await api.call("GET", f"/rules/{rule['id']}")).status_code == 404
        assert (await api.call("GET", "/rules")).json["items"] == []
    actions = [(r["action"], r["target"]) for r in await audit_rows(empty_db, "rule.")]
    assert actions == [
        ("rule.create", "ct-to-cloud"),
        ("rule.update", "ct-to-cloud"),
        ("rule.delete", "ct-to-cloud"),
    ]


async def test_validation_errors_name_the_field(empty_db: str, tmp_path: Path) -> None:
    config = await prepared(empty_db, tmp_path)
    async with as_role(config, "admin") as api:
        await created(api, "/destinations", PACS)

        async def refused(body: dict[str, Any], status: int = 422) -> str | None:
            return problem_field(await api.call("POST", "/rules", json=body), status)

        bad_regex = await api.call(
            "POST", "/rules", json=EVERYTHING | {"match": {"modality": "re:("}}
        )
        assert problem_field(bad_regex) == "match"
        assert "bad regular expression" in bad_regex.json["detail"]
        assert await refused(EVERYTHING | {"match": {"colour": "red"}}) == "match"
        assert await refused(EVERYTHING | {"match": {"modality": {"x": 1}}}) == "match"
        unknown = await api.call("POST", "/rules", json=EVERYTHING | {"destinations": ["nowhere"]})
        assert problem_field(unknown) == "destinations"
        assert "'nowhere'" in unknown.json["detail"]
        assert await refused(EVERYTHING | {"destinations": []}) == "destinations"
        assert await refused({"name": "x"}) == "destinations"
        assert await refused(EVERYTHING | {"granularity": "patient"}) == "granularity"
        assert await refused(EVERYTHING | {"quiet_period_s": -1}) == "quiet_period_s"
        assert await refused(EVERYTHING | {"position": 3}) == "position"
        made = await created(api, "/rules", EVERYTHING)
        assert await refused(EVERYTHING, 409) == "name"
        bad = await api.call("PATCH", f"/rules/{made['id']}", json={"match": {"x": "y"}})
        assert problem_field(bad) == "match"
        assert (await api.call("GET", f"/rules/{made['id']}")).json == made
    assert [r["action"] for r in await audit_rows(empty_db, "rule.")] == ["rule.create"]


async def test_reorder_and_declared_rules(empty_db: str, tmp_path: Path) -> None:
    config = await prepared(empty_db, tmp_path)
    declaring = tmp_path / "dicom-gw.yaml"
    declaring.write_text(
        orjson.dumps(
            {"destinations": [PACS], "routes": [{"name": "declared", "destinations": ["pacs1"]}]}
        ).decode()
    )
    conn = await asyncpg.connect(empty_db)
    try:
        await apply_declared(
            conn,
            load_config(str(declaring), {"DICOMGW_STATE_DIR": str(tmp_path)}),
            SecretBox.open(Path(config.state_dir)),
        )
    finally:
        await conn.close()
    async with as_role(config, "operator") as api:
        ids = [
            (await created(api, "/rules", EVERYTHING | {"name": name}))["id"]
            for name in ("a", "b", "c")
        ]
        listed = (await api.call("GET", "/rules")).json["items"]
        assert [r["name"] for r in listed] == ["declared", "a", "b", "c"]
        declared = listed[0]
        assert declared["from_config"] is True

        reordered = await api.call("PUT", "/rules/order", json={"ids": ids[::-1]})
        assert reordered.status_code == 200, reordered.text
        assert [r["name"] for r in reordered.json["items"]] == ["declared", "c", "b", "a"]
        assert [r["name"] for r in (await api.call("GET", "/rules")).json["items"]] == [
            "declared",
            "c",
            "b",
            "a",
        ]
        for wrong in (ids[:2], [*ids, ids[0]], [declared["id"], *ids], [*ids, "x"]):
            refused = await api.call("PUT", "/rules/order", json={"ids": wrong})
            assert problem_field(refused) == "ids", wrong

        for method, body in (("PATCH", {"enabled": False}), ("DELETE", None)):
            refused = await api.call(method, f"/rules/{declared['id']}", json=body)
            assert refused.status_code == 409
            assert refused.json["type"] == "urn:dicom-gw:problem:from-config"
    [reorder] = await audit_rows(empty_db, "rule.reorder")
    assert orjson.loads(reorder["detail"]) == {"ids": ids[::-1]}


async def instance_of(dsn: str, sop_instance_uid: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        instance_id: int = await conn.fetchval(
            "SELECT id FROM instances WHERE sop_instance_uid = $1", sop_instance_uid
        )
        return instance_id
    finally:
        await conn.close()


async def test_hits_and_dry_run(empty_db: str, tmp_path: Path) -> None:
    config = await prepared(empty_db, tmp_path)
    async with as_role(config, "operator") as api:
        pacs = await created(api, "/destinations", PACS)
        cloud = await created(api, "/destinations", CLOUD)
        ct_rule = await created(
            api, "/rules", CT_TO_CLOUD | {"granularity": "series", "quiet_period_s": 20}
        )
        everything = await created(api, "/rules", EVERYTHING)
        off = await created(api, "/rules", EVERYTHING | {"name": "off", "enabled": False})
        ct, mr = record(1, modality="CT"), record(2, modality="MR", series="9.8")
        async with ingesting(empty_db) as index:
            await index(ct, mr)
        hits = {r["name"]: r["hits"] for r in (await api.call("GET", "/rules")).json["items"]}
        assert hits == {"ct-to-cloud": 1, "everything": 2, "off": 0}

        dry = await api.call(
            "POST", "/rules/dry-run", json={"sop_instance_uid": ct.sop_instance_uid}
        )
        assert dry.status_code == 200, dry.text
        assert dry.json["sop_instance_uid"] == ct.sop_instance_uid
        assert dry.json["rules"] == [
            {"id": ct_rule["id"], "name": "ct-to-cloud", "matched": True},
            {"id": everything["id"], "name": "everything", "matched": True},
        ]
        assert dry.json["routes"] == [
            {
                "rule_id": ct_rule["id"],
                "rule": "ct-to-cloud",
                "destination_id": cloud["id"],
                "destination": "cloud",
                "hold_key": "series:1.2.3.4",
                "delay_s": 20,
            },
            {
                "rule_id": everything["id"],
                "rule": "everything",
                "destination_id": pacs["id"],
                "destination": "pacs1",
                "hold_key": None,
                "delay_s": 0,
            },
        ]
        assert off["id"] not in {r["id"] for r in dry.json["rules"]}

        instance_id = await instance_of(empty_db, mr.sop_instance_uid)
        by_id = await api.call("POST", "/rules/dry-run", json={"instance_id": instance_id})
        assert by_id.json["sop_instance_uid"] == mr.sop_instance_uid
        assert [r["destination"] for r in by_id.json["routes"]] == ["pacs1"]

        missing = await api.call("POST", "/rules/dry-run", json={"instance_id": 999999})
        assert missing.status_code == 404
        both = {"instance_id": 1, "sop_instance_uid": "1.2"}
        assert (await api.call("POST", "/rules/dry-run", json=both)).status_code == 422
        assert (await api.call("POST", "/rules/dry-run", json={})).status_code == 422


async def test_roles(empty_db: str, tmp_path: Path) -> None:
    config = await prepared(empty_db, tmp_path)
    async with as_role(config, "operator") as operator:
        await created(operator, "/destinations", PACS)
        rule = await created(operator, "/rules", EVERYTHING)
    one = f"/rules/{rule['id']}"
    writes = [
        ("POST", "/rules", EVERYTHING | {"name": "other"}),
        ("PATCH", one, {"enabled": False}),
        ("DELETE", one, None),
        ("PUT", "/rules/order", {"ids": [rule["id"]]}),
        ("POST", "/rules/dry-run", {"instance_id": 1}),
    ]
    async with as_role(config, "viewer") as viewer:
        assert (await viewer.call("GET", "/rules")).status_code == 200
        assert (await viewer.call("GET", one)).status_code == 200
        for method, path, body in writes:
            assert (await viewer.call(method, path, json=body)).status_code == 403, path
        assert (await viewer.conductor.simulate_get("/api/v1/rules")).status_code == 401
    async with as_role(config, "auditor") as auditor:
        assert (await auditor.call("GET", "/rules")).status_code == 403
    async with as_role(config, "admin") as admin:
        assert (await admin.call("PATCH", one, json={"enabled": False})).status_code == 200
