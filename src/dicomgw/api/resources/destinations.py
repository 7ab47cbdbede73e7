"""Destinations: list them with their health and queue, create, change, delete,
pause and resume, and probe them (C-ECHO or HTTP).

A destination is written in the config file's own shape (a ``destinations:``
entry) and validated by the same types. Its secrets (a STOW-RS password or token)
are write-only: stored encrypted, answered as ``password_set``/``token_set``.
Destinations declared in the config file are applied again at every start, so the
API reads, pauses and probes them but does not change or delete them.

Every change is audited and announced on ``dicomgw_routing``, on which the
forwarder and the receivers' routing tables reload.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any, get_args

import asyncpg
import falcon
import falcon.asgi
import msgspec
import orjson

from dicomgw.api.auditing import audit_request
from dicomgw.api.auth import allow
from dicomgw.api.context import PREFIX, ApiContext, App
from dicomgw.api.problems import Problem, invalid, not_found
from dicomgw.api.validation import body_of
from dicomgw.config import Destination, DimseDestination, StowDestination
from dicomgw.db import channels
from dicomgw.forward.probe import ProbeResult, run_probe
from dicomgw.queue import jobs
from dicomgw.send.destinations import SECRET_FIELDS, join, split
from dicomgw.send.secrets import SecretBox, SecretsError

READERS = ("viewer", "operator")
WRITERS = ("operator",)

ECHO_TIMEOUT_S = 10.0
JOB_STATES = ("pending", "leased", "done", "dead", "cancelled")
# The fields either type has, of any JSON type: msgspec checks them per type.
FIELDS = {
    name: object for kind in get_args(Destination) for name in ("type", *kind.__struct_fields__)
}


# -- shared by the forwarding resources ----------------------------------------------


async def routing_changed(conn: asyncpg.Connection) -> None:
    """Forwarders and receivers reload destinations and rules (sent at COMMIT)."""
    await conn.execute(f"NOTIFY {channels.ROUTING}")


_AT = re.compile(r" - at `\$\.?(.*)`$")
_NAMED = re.compile(r"^Object (missing required|contains unknown) field `([^`]*)`$")
_AE_TITLE = "an AE title: 1-16 printable ASCII characters, not all spaces, no backslash"
# Values whose pattern reads badly as a regular expression, said in words.
_FORMS = {
    "ae_title": _AE_TITLE,
    "calling_ae_title": _AE_TITLE,
    "preferred_transfer_syntaxes": "a UID: numbers separated by dots",
}


def validation_problem(exc: msgspec.ValidationError, fields: Collection[str]) -> Problem:
    """A 422 naming the field msgspec refused (config types, API input)."""
    message = str(exc)
    at = _AT.search(message)
    # A mapping's value is at `$.match[...]`: the mapping is the field to name.
    field = at.group(1).replace("[...]", "") if at else ""
    problem = message[: at.start()] if at else message
    named = _NAMED.match(problem)
    problem = problem.replace("`", "'")
    base = re.split(r"[.\[]", field)[0]
    if named:
        field = ".".join(f for f in (field, named.group(2)) if f)
        problem = "is required" if named.group(1) == "missing required" else "is not a field"
        detail = f"'{field}' {problem}"
    else:
        if problem.startswith("Expected 'str'") and base in _FORMS:
            problem = f"must be {_FORMS[base]}"
        elif field == "type":
            problem += "; allowed: dimse, stowrs"
        elif not field:
            # NOTE: checks across fields (__post_init__) have no path; their messages
            # start with the field they are about.
            first = problem.split(" ", 1)[0]
            field = first if first in fields else ""
        problem = problem[:1].lower() + problem[1:]
        detail = f"'{field}': {problem}" if at else problem
    return invalid(detail, **({"field": field} if field else {}))


# -- destinations ------------------------------------------------------------------


def validated(data: dict[str, Any]) -> Destination:
    try:
        return msgspec.convert(data, DimseDestination | StowDestination)
    except msgspec.ValidationError as exc:
        raise validation_problem(exc, FIELDS) from None


def columns(destination: Destination, box: SecretBox) -> tuple[object, ...]:
    """(name, kind, settings, secret, max_parallel, enabled) of a destinations row."""
    settings, secrets = split(destination)
    kind = "dimse" if isinstance(destination, DimseDestination) else "stowrs"
    return (
        destination.name,
        kind,
        orjson.dumps(settings).decode(),
        box.seal(secrets),
        destination.max_parallel,
        destination.enabled,
    )


def _secrets_key(exc: SecretsError) -> Problem:
    return Problem(500, "secrets-key", "Secrets cannot be read", str(exc))


def stored(box: SecretBox, row: asyncpg.Record) -> Destination:
    """The destination a row holds, secrets included."""
    try:
        return join(row, box)
    except SecretsError as exc:
        raise _secrets_key(exc) from None


SELECT = """
SELECT id, name, kind, settings, secret, max_parallel, enabled, paused, from_config,
       circuit_state, consecutive_failures, last_success_at, last_failure_at, last_error,
       created_at, updated_at
FROM destinations
"""

QUEUE_STATS = """
SELECT destination_id, state, count(*) AS jobs,
       extract(epoch FROM now() - min(created_at))::float8 AS oldest_age_s
FROM forward_jobs
WHERE $1::bigint IS NULL OR destination_id = $1
GROUP BY destination_id, state
"""


def empty_stats() -> dict[str, Any]:
    return {**dict.fromkeys(JOB_STATES, 0), "oldest_pending_age_s": None}


async def queue_stats(
    conn: asyncpg.Connection, destination_id: int | None = None
) -> dict[int, dict[str, Any]]:
    """{destination id: jobs per state, and how long the oldest pending one has waited}."""
    stats: dict[int, dict[str, Any]] = {}
    for row in await conn.fetch(QUEUE_STATS, destination_id):
        entry = stats.setdefault(row["destination_id"], empty_stats())
        entry[row["state"]] = row["jobs"]
        if row["state"] == "pending":
            entry["oldest_pending_age_s"] = round(row["oldest_age_s"], 3)
    return stats


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def destination_json(
    row: asyncpg.Record, box: SecretBox, stats: dict[str, Any] | None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": row["id"],
        "name": row["name"],
        "type": row["kind"],
        "enabled": row["enabled"],
        "max_parallel": row["max_parallel"],
        **orjson.loads(row["settings"]),
    }
    if row["kind"] == "stowrs":
        try:
            secrets = box.unseal(row["secret"])
        except SecretsError as exc:
            raise _secrets_key(exc) from None
        body |= {f"{name}_set": name in secrets for name in SECRET_FIELDS}
    return body | {
        "paused": row["paused"],
        "from_config": row["from_config"],
        "health": {
            "circuit_state": row["circuit_state"],
            "consecutive_failures": row["consecutive_failures"],
            "last_success_at": _iso(row["last_success_at"]),
            "last_failure_at": _iso(row["last_failure_at"]),
            "last_error": row["last_error"],
        },
        "queue": stats or empty_stats(),
        "created_at": _iso(row["created_at"]),
        "updated_at": _iso(row["updated_at"]),
    }


async def fetch_destination(
    conn: asyncpg.Connection, destination_id: int, *, lock: bool = False
) -> asyncpg.Record:
    row = await conn.fetchrow(
        SELECT + "WHERE id = $1" + (" FOR UPDATE" if lock else ""), destination_id
    )
    if row is None:
        raise not_found(f"destination {destination_id}")
    return row


def declared(row: asyncpg.Record, doing: str) -> Problem:
    return Problem(
        409,
        "from-config",
        "Declared in the config file",
        f"destination '{row['name']}' is declared in the config file, which is applied at "
        f"every start: {doing} it there (the API can pause, resume and echo it)",
    )


def _changes(body: dict[str, Any]) -> dict[str, Any]:
    """What an audit row may say about a change: secrets only as 'set' or 'cleared'."""
    return {
        k: ("cleared" if v is None else "set") if k in SECRET_FIELDS else v for k, v in body.items()
    }


INSERT = """
INSERT INTO destinations (name, kind, settings, secret, max_parallel, enabled)
VALUES ($1, $2, $3::jsonb, $4, $5, $6) RETURNING id
"""

UPDATE = """
UPDATE destinations SET name = $2, kind = $3, settings = $4::jsonb, secret = $5,
    max_parallel = $6, enabled = $7, updated_at = now()
WHERE id = $1
"""


def _name_taken(name: str) -> Problem:
    return Problem(
        409, "conflict", "Destination exists", f"a destination named '{name}' exists", field="name"
    )


class DestinationsResource:
    def __init__(self, api: ApiContext) -> None:
        self._api = api
        self._pools = api.pools

    @property
    def _box(self) -> SecretBox:
        # NOTE: the key file is opened (and made) at the first request, not when the
        # app is built: building it must not touch the state directory.
        return self._api.box

    @allow(*READERS)
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        async with self._pools.pool.acquire() as conn:
            rows = await conn.fetch(SELECT + "ORDER BY lower(name), id")
            stats = await queue_stats(conn)
        resp.media = {
            "items": [destination_json(r, self._box, stats.get(r["id"])) for r in rows],
            "next_cursor": None,
        }

    @allow(*WRITERS)
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        body = await body_of(req, {}, FIELDS)
        destination = validated(body)
        async with self._pools.pool.acquire() as conn, conn.transaction():
            try:
                destination_id = await conn.fetchval(INSERT, *columns(destination, self._box))
            except asyncpg.UniqueViolationError:
                raise _name_taken(destination.name) from None
            await audit_request(conn, req, "destination.create", destination.name, _changes(body))
            await routing_changed(conn)
            row = await fetch_destination(conn, destination_id)
        resp.status = falcon.HTTP_201
        resp.location = f"{PREFIX}/destinations/{destination_id}"
        resp.media = destination_json(row, self._box, None)

    @allow(*READERS)
    async def on_get_one(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, destination_id: int
    ) -> None:
        async with self._pools.pool.acquire() as conn:
            row = await fetch_destination(conn, destination_id)
            stats = await queue_stats(conn, destination_id)
        resp.media = destination_json(row, self._box, stats.get(destination_id))

    @allow(*WRITERS)
    async def on_patch_one(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, destination_id: int
    ) -> None:
        """Change some fields; the rest stay. A secret sent as null is removed."""
        body = await body_of(req, {}, FIELDS)
        if not body:
            raise invalid("nothing to change: send the fields to change")
        async with self._pools.pool.acquire() as conn, conn.transaction():
            row = await fetch_destination(conn, destination_id, lock=True)
            if row["from_config"]:
                raise declared(row, "change")
            if body.get("type", row["kind"]) != row["kind"]:
                raise invalid(
                    "'type' cannot change: create a new destination instead", field="type"
                )
            current = msgspec.to_builtins(stored(self._box, row))
            destination = validated(current | body)
            try:
                await conn.execute(UPDATE, destination_id, *columns(destination, self._box))
            except asyncpg.UniqueViolationError:
                raise _name_taken(destination.name) from None
            await audit_request(conn, req, "destination.update", row["name"], _changes(body))
            await routing_changed(conn)
            row = await fetch_destination(conn, destination_id)
            stats = await queue_stats(conn, destination_id)
        resp.media = destination_json(row, self._box, stats.get(destination_id))

    @allow(*WRITERS)
    async def on_delete_one(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, destination_id: int
    ) -> None:
        """Refused while a rule names it or jobs wait for it; its finished jobs go with it."""
        async with self._pools.pool.acquire() as conn, conn.transaction():
            # NOTE: the row lock waits for, and then blocks, ingest transactions adding
            # jobs for it (their foreign key locks the row too): the checks hold.
            row = await fetch_destination(conn, destination_id, lock=True)
            if row["from_config"]:
                raise declared(row, "remove")
            rules = await conn.fetch(
                "SELECT r.name FROM routing_rules r "
                "JOIN routing_rule_destinations rd ON rd.rule_id = r.id "
                "WHERE rd.destination_id = $1 ORDER BY r.position, r.id",
                destination_id,
            )
            if rules:
                names = ", ".join(f"'{r['name']}'" for r in rules)
                raise Problem(
                    409,
                    "in-use",
                    "Destination in use",
                    f"rules {names} send to it: change or delete them first",
                    rules=[r["name"] for r in rules],
                )
            stats = (await queue_stats(conn, destination_id)).get(destination_id, empty_stats())
            waiting = stats["pending"] + stats["leased"]
            if waiting:
                raise Problem(
                    409,
                    "in-use",
                    "Destination has queued jobs",
                    f"{waiting} job(s) are waiting for or being sent to it: cancel "
                    "them (or let them finish) first",
                    jobs=waiting,
                )
            await conn.execute("DELETE FROM destinations WHERE id = $1", destination_id)
            await audit_request(
                conn,
                req,
                "destination.delete",
                row["name"],
                {"finished_jobs_removed": sum(stats[s] for s in JOB_STATES)},
            )
            await routing_changed(conn)
        resp.status = falcon.HTTP_204

    @allow(*WRITERS)
    async def on_post_pause(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, destination_id: int
    ) -> None:
        """Jobs keep queueing; nothing is sent until it is resumed."""
        await self._set_paused(req, resp, destination_id, True)

    @allow(*WRITERS)
    async def on_post_resume(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, destination_id: int
    ) -> None:
        await self._set_paused(req, resp, destination_id, False)

    async def _set_paused(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        destination_id: int,
        paused: bool,
    ) -> None:
        async with self._pools.pool.acquire() as conn, conn.transaction():
            row = await fetch_destination(conn, destination_id, lock=True)
            await jobs.set_paused(conn, destination_id, paused)
            action = "destination.pause" if paused else "destination.resume"
            await audit_request(conn, req, action, row["name"])
            row = await fetch_destination(conn, destination_id)
            stats = await queue_stats(conn, destination_id)
        resp.media = destination_json(row, self._box, stats.get(destination_id))

    @allow(*WRITERS)
    async def on_post_echo(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, destination_id: int
    ) -> None:
        """C-ECHO (DIMSE) or the HTTP probe (STOW-RS) with the forwarder's own sender."""
        async with self._pools.pool.acquire() as conn:
            row = await fetch_destination(conn, destination_id)
        try:
            destination = stored(self._box, row)
        except msgspec.ValidationError as exc:
            result = ProbeResult(False, error=f"the stored settings are not valid: {exc}")
        else:
            result = await run_probe(destination, ECHO_TIMEOUT_S)
        async with self._pools.pool.acquire() as conn:
            await audit_request(
                conn,
                req,
                "destination.echo",
                row["name"],
                {"ok": result.ok, "error": result.error},
                outcome="success" if result.ok else "failure",
            )
        resp.media = msgspec.to_builtins(result)


def add_routes(app: App, api: ApiContext) -> None:
    destinations = DestinationsResource(api)
    one = f"{PREFIX}/destinations/{{destination_id:id}}"
    app.add_route(f"{PREFIX}/destinations", destinations)
    app.add_route(one, destinations, suffix="one")
    for action in ("pause", "resume", "echo"):
        app.add_route(f"{one}/{action}", destinations, suffix=action)
