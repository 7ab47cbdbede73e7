"""Destinations in the database: (de)serialising them, and applying the ones the
config file declares.

A destination row keeps its settings as JSON (the config's own shape, so one
validation serves both) and its secrets encrypted in a separate column.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import asyncpg
import msgspec
import orjson

from dicomgw.config import Config, Destination, DimseDestination, StowDestination
from dicomgw.db import channels
from dicomgw.ingest.routing import Rule
from dicomgw.send.secrets import SecretBox, SecretsError

log = logging.getLogger(__name__)

SECRET_FIELDS = ("password", "token")
# Columns of their own, not part of the settings JSON.
_COLUMNS = ("name", "type", "max_parallel", "enabled")


@dataclass(frozen=True, slots=True)
class DestinationRow:
    id: int
    destination: Destination
    paused: bool


def split(destination: Destination) -> tuple[dict[str, object], dict[str, str]]:
    """(settings JSON, secrets) of a destination."""
    data = msgspec.to_builtins(destination)
    secrets = {k: data.pop(k) for k in SECRET_FIELDS if data.get(k) is not None}
    for key in (*SECRET_FIELDS, *_COLUMNS):
        data.pop(key, None)
    return data, secrets


def join(row: asyncpg.Record, box: SecretBox) -> Destination:
    settings = orjson.loads(row["settings"])
    data = {
        **settings,
        **box.unseal(row["secret"]),
        "name": row["name"],
        "type": row["kind"],
        "max_parallel": row["max_parallel"],
        "enabled": row["enabled"],
    }
    return msgspec.convert(data, DimseDestination | StowDestination)


async def load_destinations(conn: asyncpg.Connection, box: SecretBox) -> list[DestinationRow]:
    rows = await conn.fetch(
        "SELECT id, name, kind, settings, secret, max_parallel, enabled, paused "
        "FROM destinations ORDER BY id"
    )
    out = []
    for row in rows:
        try:
            out.append(DestinationRow(row["id"], join(row, box), row["paused"]))
        except (msgspec.ValidationError, SecretsError) as exc:
            # NOTE: its jobs wait in the queue; one bad row must not stop the others.
            log.error("destination skipped", extra={"destination": row["name"], "error": str(exc)})
    return out


UPSERT_DESTINATION = """
INSERT INTO destinations (name, kind, settings, secret, max_parallel, enabled, from_config)
VALUES ($1, $2, $3::jsonb, $4, $5, $6, true)
ON CONFLICT (name) DO UPDATE SET
    kind = EXCLUDED.kind, settings = EXCLUDED.settings, secret = EXCLUDED.secret,
    max_parallel = EXCLUDED.max_parallel, enabled = EXCLUDED.enabled, from_config = true,
    updated_at = now()
RETURNING id, (xmax = 0) AS created
"""

UPSERT_RULE = """
INSERT INTO routing_rules (name, position, enabled, match, granularity, quiet_period_s,
                           from_config)
VALUES ($1, $2, $3, $4::jsonb, $5, $6, true)
ON CONFLICT (name) DO UPDATE SET
    position = EXCLUDED.position, enabled = EXCLUDED.enabled, match = EXCLUDED.match,
    granularity = EXCLUDED.granularity, quiet_period_s = EXCLUDED.quiet_period_s,
    from_config = true, updated_at = now()
RETURNING id
"""


async def apply_declared(conn: asyncpg.Connection, config: Config, box: SecretBox) -> None:
    """Make the database hold the config's destinations and routes, by name.

    Declared destinations are created or updated. One that was declared before and
    no longer is gets disabled, not deleted: its queued jobs stay for an operator
    to see. Declared routes take the first positions, in the order written;
    routes no longer declared are deleted. Rules and destinations created through
    the API are left alone.
    """
    async with conn.transaction():
        ids: dict[str, int] = {}
        for destination in config.destinations:
            settings, secrets = split(destination)
            row = await conn.fetchrow(
                UPSERT_DESTINATION,
                destination.name,
                "dimse" if isinstance(destination, DimseDestination) else "stowrs",
                orjson.dumps(settings).decode(),
                box.seal(secrets),
                destination.max_parallel,
                destination.enabled,
            )
            ids[destination.name] = row["id"]
        dropped = await conn.fetch(
            "UPDATE destinations SET enabled = false, updated_at = now() "
            "WHERE from_config AND enabled AND NOT (name = ANY($1::text[])) RETURNING name",
            list(ids),
        )
        for row in dropped:
            log.warning(
                "destination no longer declared: disabled, its queued jobs kept",
                extra={"destination": row["name"]},
            )
        for position, route in enumerate(config.routes):
            # Compiled here so a bad pattern fails the start, naming the route.
            Rule.build(0, route.name, route.match, ())
            rule_id = await conn.fetchval(
                UPSERT_RULE,
                route.name,
                position,
                route.enabled,
                orjson.dumps(route.match).decode(),
                route.granularity,
                route.quiet_period_s,
            )
            await conn.execute("DELETE FROM routing_rule_destinations WHERE rule_id = $1", rule_id)
            await conn.executemany(
                "INSERT INTO routing_rule_destinations (rule_id, destination_id) VALUES ($1, $2)",
                [(rule_id, ids[name]) for name in route.destinations],
            )
        await conn.execute(
            "DELETE FROM routing_rules WHERE from_config AND NOT (name = ANY($1::text[]))",
            [r.name for r in config.routes],
        )
        await conn.execute(f"NOTIFY {channels.ROUTING}")
