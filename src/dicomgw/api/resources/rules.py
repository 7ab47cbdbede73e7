"""Routing rules: list them in order with their hits, create, change, delete,
reorder, and try them on a stored instance (dry run).

A rule is written in the config file's own shape (a ``routes:`` entry: match,
destinations by name, granularity, quiet period) and validated by the same type
and the same pattern compiler as at start-up. Rules declared in the config file
take the first positions and are applied again at every start, so the API shows
them but does not change, delete or move them; the API's own rules follow them.
Every change is audited and announced on ``dicomgw_routing``.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import asyncpg
import falcon
import falcon.asgi
import msgspec
import orjson

from dicomgw.api.auditing import audit_request
from dicomgw.api.auth import allow
from dicomgw.api.context import PREFIX, ApiContext, App
from dicomgw.api.problems import Problem, invalid, not_found
from dicomgw.api.resources.destinations import (
    READERS,
    WRITERS,
    routing_changed,
    validation_problem,
)
from dicomgw.api.validation import body_of
from dicomgw.config import Route
from dicomgw.index.records import InstanceRecord
from dicomgw.ingest.routing import Rule, RuleError, load_rules, route

FIELDS = dict.fromkeys(Route.__struct_fields__, object)

# Serializes the API's changes to rule positions. Not a table lock: ingest updates
# routing_rules (hits) in every index transaction and must not wait for the API.
POSITIONS_LOCK = "SELECT pg_advisory_xact_lock(hashtext('dicomgw.routing_rules.position'))"

SELECT = """
SELECT r.id, r.name, r.position, r.enabled, r.match, r.granularity, r.quiet_period_s, r.hits,
       r.from_config, r.created_at, r.updated_at,
       array_remove(array_agg(d.name ORDER BY d.id), NULL) AS destinations,
       array_remove(array_agg(d.id ORDER BY d.id), NULL) AS destination_ids
FROM routing_rules r
LEFT JOIN routing_rule_destinations rd ON rd.rule_id = r.id
LEFT JOIN destinations d ON d.id = rd.destination_id
"""
GROUPED = " GROUP BY r.id ORDER BY r.position, r.id"


def rule_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "position": row["position"],
        "enabled": row["enabled"],
        "match": orjson.loads(row["match"]),
        "destinations": row["destinations"],
        "destination_ids": row["destination_ids"],
        "granularity": row["granularity"],
        "quiet_period_s": row["quiet_period_s"],
        "hits": row["hits"],
        "from_config": row["from_config"],
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
    }


async def fetch_rule(
    conn: asyncpg.Connection, rule_id: int, *, lock: bool = False
) -> asyncpg.Record:
    if lock:
        # NOTE: an aggregate cannot be FOR UPDATE; the rule's row is locked on its own.
        await conn.execute("SELECT 1 FROM routing_rules WHERE id = $1 FOR UPDATE", rule_id)
    row = await conn.fetchrow(SELECT + "WHERE r.id = $1" + GROUPED, rule_id)
    if row is None:
        raise not_found(f"rule {rule_id}")
    return row


def validated(data: dict[str, Any]) -> Route:
    """The config's checks, then the patterns compiled as the receivers will."""
    try:
        rule = msgspec.convert(data, Route)
    except msgspec.ValidationError as exc:
        raise validation_problem(exc, FIELDS) from None
    try:
        Rule.build(0, rule.name, rule.match, ())
    except RuleError as exc:
        raise invalid(str(exc), field="match") from None
    if not rule.destinations:
        raise invalid("'destinations' must name at least one destination", field="destinations")
    return rule


async def destination_ids(conn: asyncpg.Connection, names: tuple[str, ...]) -> list[int]:
    rows = await conn.fetch("SELECT id, name FROM destinations WHERE name = ANY($1::text[])", names)
    ids = {r["name"]: r["id"] for r in rows}
    unknown = [name for name in names if name not in ids]
    if unknown:
        raise invalid(
            f"'destinations' names {', '.join(repr(n) for n in unknown)}, which do not exist",
            field="destinations",
        )
    return list(dict.fromkeys(ids[name] for name in names))


async def save_destinations(conn: asyncpg.Connection, rule_id: int, names: tuple[str, ...]) -> None:
    ids = await destination_ids(conn, names)
    await conn.execute("DELETE FROM routing_rule_destinations WHERE rule_id = $1", rule_id)
    await conn.executemany(
        "INSERT INTO routing_rule_destinations (rule_id, destination_id) VALUES ($1, $2)",
        [(rule_id, d) for d in ids],
    )


def declared(row: asyncpg.Record, doing: str) -> Problem:
    return Problem(
        409,
        "from-config",
        "Declared in the config file",
        f"rule '{row['name']}' is declared in the config file, which is applied at every "
        f"start: {doing} it there",
    )


def _name_taken(name: str) -> Problem:
    return Problem(409, "conflict", "Rule exists", f"a rule named '{name}' exists", field="name")


INSERT = """
INSERT INTO routing_rules (name, position, enabled, match, granularity, quiet_period_s)
VALUES ($1, (SELECT coalesce(max(position) + 1, 0) FROM routing_rules), $2, $3::jsonb, $4, $5)
RETURNING id
"""

UPDATE = """
UPDATE routing_rules SET name = $2, enabled = $3, match = $4::jsonb, granularity = $5,
    quiet_period_s = $6, updated_at = now()
WHERE id = $1
"""


def _values(rule: Route) -> tuple[object, ...]:
    return (
        rule.name,
        rule.enabled,
        orjson.dumps(rule.match).decode(),
        rule.granularity,
        rule.quiet_period_s,
    )


class RulesResource:
    def __init__(self, api: ApiContext) -> None:
        self._pools = api.pools

    @allow(*READERS)
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """In the order they are evaluated."""
        async with self._pools.pool.acquire() as conn:
            rows = await conn.fetch(SELECT + GROUPED)
        resp.media = {"items": [rule_json(r) for r in rows], "next_cursor": None}

    @allow(*WRITERS)
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """A new rule, evaluated after all others."""
        rule = validated(await body_of(req, {}, FIELDS))
        async with self._pools.pool.acquire() as conn, conn.transaction():
            # NOTE: rules added at once would otherwise share a position.
            await conn.execute(POSITIONS_LOCK)
            try:
                rule_id = await conn.fetchval(INSERT, *_values(rule))
            except asyncpg.UniqueViolationError:
                raise _name_taken(rule.name) from None
            await save_destinations(conn, rule_id, rule.destinations)
            await audit_request(conn, req, "rule.create", rule.name, msgspec.to_builtins(rule))
            await routing_changed(conn)
            row = await fetch_rule(conn, rule_id)
        resp.status = falcon.HTTP_201
        resp.location = f"{PREFIX}/rules/{rule_id}"
        resp.media = rule_json(row)

    @allow(*READERS)
    async def on_get_one(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, rule_id: int
    ) -> None:
        async with self._pools.pool.acquire() as conn:
            resp.media = rule_json(await fetch_rule(conn, rule_id))

    @allow(*WRITERS)
    async def on_patch_one(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, rule_id: int
    ) -> None:
        """Change some fields; the rest stay."""
        body = await body_of(req, {}, FIELDS)
        if not body:
            raise invalid("nothing to change: send the fields to change")
        async with self._pools.pool.acquire() as conn, conn.transaction():
            row = await fetch_rule(conn, rule_id, lock=True)
            if row["from_config"]:
                raise declared(row, "change")
            shown = rule_json(row)
            rule = validated({name: shown[name] for name in FIELDS} | body)
            try:
                await conn.execute(UPDATE, rule_id, *_values(rule))
            except asyncpg.UniqueViolationError:
                raise _name_taken(rule.name) from None
            if "destinations" in body:
                await save_destinations(conn, rule_id, rule.destinations)
            await audit_request(conn, req, "rule.update", row["name"], body)
            await routing_changed(conn)
            row = await fetch_rule(conn, rule_id)
        resp.media = rule_json(row)

    @allow(*WRITERS)
    async def on_delete_one(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, rule_id: int
    ) -> None:
        """Jobs it created stay queued."""
        async with self._pools.pool.acquire() as conn, conn.transaction():
            row = await fetch_rule(conn, rule_id, lock=True)
            if row["from_config"]:
                raise declared(row, "remove")
            await conn.execute("DELETE FROM routing_rules WHERE id = $1", rule_id)
            await audit_request(conn, req, "rule.delete", row["name"])
            await routing_changed(conn)
        resp.status = falcon.HTTP_204


class RuleOrderResource:
    def __init__(self, api: ApiContext) -> None:
        self._pools = api.pools

    @allow(*WRITERS)
    async def on_put(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """The API's rules in a new order: ``ids`` lists every one of them, once."""
        ids = (await body_of(req, {"ids": list}))["ids"]
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise invalid("'ids' must be a list of rule ids", field="ids")
        async with self._pools.pool.acquire() as conn, conn.transaction():
            await conn.execute(POSITIONS_LOCK)
            rows = await conn.fetch("SELECT id, position, from_config FROM routing_rules")
            movable = {r["id"] for r in rows if not r["from_config"]}
            if len(ids) != len(set(ids)) or set(ids) != movable:
                fixed = sorted({r["id"] for r in rows} - movable)
                raise invalid(
                    "'ids' must list each rule created through the API exactly once "
                    f"({len(movable)} rules); rules from the config file ({fixed}) keep the "
                    "first positions",
                    field="ids",
                )
            first = max((r["position"] + 1 for r in rows if r["from_config"]), default=0)
            await conn.executemany(
                "UPDATE routing_rules SET position = $2, updated_at = now() WHERE id = $1",
                [(rule_id, first + n) for n, rule_id in enumerate(ids)],
            )
            await audit_request(conn, req, "rule.reorder", "rules", {"ids": ids})
            await routing_changed(conn)
            rows = await conn.fetch(SELECT + GROUPED)
        resp.media = {"items": [rule_json(r) for r in rows], "next_cursor": None}


INSTANCE = """
SELECT i.id, i.sop_instance_uid, i.sop_class_uid, i.transfer_syntax_uid, i.file_path,
       i.size_bytes, i.dataset_size, i.checksum, i.source_kind, i.source_user, i.source_ae,
       i.called_ae, host(i.source_ip) AS source_ip, NULL AS association_id, i.received_at,
       'stored' AS event, i.instance_number, i.number_of_frames,
       se.series_instance_uid, se.modality, se.series_number, se.series_description,
       st.study_instance_uid, st.patient_id, st.patient_name, st.patient_birth_date,
       st.patient_sex, st.study_date, st.study_time, st.accession_number,
       st.study_description, st.referring_physician_name
FROM instances i JOIN series se ON se.id = i.series_id JOIN studies st ON st.id = se.study_id
"""


def instance_record(row: asyncpg.Record) -> InstanceRecord:
    """The record routing saw at ingest, from the index rows (study and series
    attributes as the index holds them now)."""
    return InstanceRecord(**{f.name: row[f.name] for f in fields(InstanceRecord)})


class DryRunResource:
    def __init__(self, api: ApiContext) -> None:
        self._pools = api.pools

    @allow(*WRITERS)
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Which rules in force a stored instance matches and where it would go."""
        body = await body_of(req, {}, {"instance_id": int, "sop_instance_uid": str})
        if len(body) != 1:
            raise invalid("send one of 'instance_id' and 'sop_instance_uid'")
        async with self._pools.pool.acquire() as conn:
            if "instance_id" in body:
                row = await conn.fetchrow(INSTANCE + "WHERE i.id = $1", body["instance_id"])
            else:
                row = await conn.fetchrow(
                    INSTANCE + "WHERE i.sop_instance_uid = $1 ORDER BY i.version DESC LIMIT 1",
                    body["sop_instance_uid"],
                )
            if row is None:
                raise not_found(f"instance {next(iter(body.values()))}")
            rules = await load_rules(conn)
            names = dict(await conn.fetch("SELECT id, name FROM destinations"))
        record = instance_record(row)
        by_id = {rule.id: rule.name for rule in rules}
        resp.media = {
            "instance_id": row["id"],
            "sop_instance_uid": record.sop_instance_uid,
            "rules": [
                {"id": rule.id, "name": rule.name, "matched": rule.matches(record)}
                for rule in rules
            ],
            "routes": [
                {
                    "rule_id": r.rule_id,
                    "rule": by_id[r.rule_id],
                    "destination_id": r.destination_id,
                    "destination": names[r.destination_id],
                    "hold_key": r.hold_key,
                    "delay_s": r.delay_s,
                }
                for r in route(rules, record)
            ],
        }


def add_routes(app: App, api: ApiContext) -> None:
    rules = RulesResource(api)
    app.add_route(f"{PREFIX}/rules", rules)
    app.add_route(f"{PREFIX}/rules/{{rule_id:id}}", rules, suffix="one")
    app.add_route(f"{PREFIX}/rules/order", RuleOrderResource(api))
    app.add_route(f"{PREFIX}/rules/dry-run", DryRunResource(api))
