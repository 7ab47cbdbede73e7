"""Routing rules: which destinations an instance goes to, decided once at ingest.

A rule's ``match`` maps an attribute to a pattern; every entry must match (an
empty ``match`` matches everything). Patterns:

- ``"CT"``: equals (exact, case-sensitive, as DICOM code strings are);
- ``"glob:CT*"``: shell-style wildcards over the whole value;
- ``"re:^(CT|MR)$"``: a regular expression, searched (anchor it to match whole);
- ``"cidr:10.0.0.0/8"``: ``source_ip`` inside a network;
- a list: any of its patterns.

An attribute the instance does not have (no value) matches nothing.
Rules are evaluated in order; every enabled matching rule contributes its
destinations, each destination once per instance (the first rule naming it wins).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import ipaddress
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Literal

import asyncpg
import orjson

from dicomgw.db import channels
from dicomgw.index.records import InstanceRecord, JobRoute
from dicomgw.ingest.source import NOT_ROUTED

# Attribute names a rule may match on: the index record's fields, plus the
# names operators know from DIMSE for the association's AE titles.
ALIASES = {
    "source": "source_kind",
    "user": "source_user",
    "calling_ae": "source_ae",
    "calling_ae_title": "source_ae",
    "called_ae_title": "called_ae",
}
ATTRIBUTES = frozenset(f.name for f in fields(InstanceRecord)) - {
    "file_path",
    "event",
    "association_id",
    "checksum",
} | frozenset(ALIASES)

log = logging.getLogger(__name__)

Granularity = Literal["instance", "series", "study"]
Matcher = Callable[[str], bool]


class RuleError(ValueError):
    """A rule that cannot be used; the message names the rule and the key."""


def _matcher(rule: str, key: str, pattern: object) -> Matcher:
    if isinstance(pattern, int) and not isinstance(pattern, bool):
        pattern = str(pattern)
    if isinstance(pattern, list):
        alternatives = [_matcher(rule, key, p) for p in pattern]
        return lambda value: any(m(value) for m in alternatives)
    if not isinstance(pattern, str):
        raise RuleError(f"rule '{rule}': match.{key} must be a string or a list of strings")
    kind, sep, body = pattern.partition(":")
    if sep and kind == "glob":
        return lambda value: fnmatch.fnmatchcase(value, body)
    if sep and kind == "re":
        try:
            compiled = re.compile(body)
        except re.error as exc:
            raise RuleError(f"rule '{rule}': match.{key}: bad regular expression: {exc}") from None
        return lambda value: compiled.search(value) is not None
    if sep and kind == "cidr":
        try:
            network = ipaddress.ip_network(body, strict=False)
        except ValueError as exc:
            raise RuleError(f"rule '{rule}': match.{key}: {exc}") from None

        def in_network(value: str) -> bool:
            try:
                return ipaddress.ip_address(value) in network
            except ValueError:
                return False

        return in_network
    return lambda value: value == pattern


@dataclass(frozen=True, slots=True)
class Rule:
    id: int
    name: str
    destination_ids: tuple[int, ...]
    conditions: tuple[tuple[str, Matcher], ...]
    granularity: Granularity = "instance"
    quiet_period_s: int = 0

    @classmethod
    def build(
        cls,
        id: int,
        name: str,
        match: Mapping[str, object],
        destination_ids: Iterable[int],
        *,
        granularity: Granularity = "instance",
        quiet_period_s: int = 0,
    ) -> Rule:
        conditions = []
        for key, pattern in match.items():
            if key not in ATTRIBUTES:
                raise RuleError(
                    f"rule '{name}': cannot match on '{key}'; attributes: "
                    f"{', '.join(sorted(ATTRIBUTES))}"
                )
            conditions.append((ALIASES.get(key, key), _matcher(name, key, pattern)))
        return cls(id, name, tuple(destination_ids), tuple(conditions), granularity, quiet_period_s)

    @property
    def names_source(self) -> bool:
        return any(attribute == "source_kind" for attribute, _ in self.conditions)

    def matches(self, record: InstanceRecord) -> bool:
        for attribute, matcher in self.conditions:
            value = getattr(record, attribute)
            if value is None or not matcher(str(value)):
                return False
        return True


def route(rules: Sequence[Rule], record: InstanceRecord) -> list[JobRoute]:
    """The jobs a received instance gets, in rule order.

    An instance that came from a retrieval or a re-index is routed only by rules
    that name its source (``match: {source: retrieve}``): it must not go back
    to where it came from.
    """
    routes: list[JobRoute] = []
    seen: set[int] = set()
    for rule in rules:
        if record.source_kind in NOT_ROUTED and not rule.names_source:
            continue
        if not rule.matches(record):
            continue
        hold_key = None
        if rule.granularity == "study":
            hold_key = f"study:{record.study_instance_uid}"
        elif rule.granularity == "series":
            hold_key = f"series:{record.series_instance_uid}"
        for destination_id in rule.destination_ids:
            if destination_id not in seen:
                seen.add(destination_id)
                routes.append(JobRoute(rule.id, destination_id, rule.quiet_period_s, hold_key))
    return routes


LOAD_RULES = """
SELECT r.id, r.name, r.match, r.granularity, r.quiet_period_s,
       array_agg(d.id ORDER BY d.id) AS destination_ids
FROM routing_rules r
JOIN routing_rule_destinations rd ON rd.rule_id = r.id
JOIN destinations d ON d.id = rd.destination_id AND d.enabled
WHERE r.enabled
GROUP BY r.id ORDER BY r.position, r.id
"""


async def load_rules(conn: asyncpg.Connection) -> list[Rule]:
    """The enabled rules with their enabled destinations, in order.

    A rule that cannot be compiled (it was stored by an older version, or by hand)
    is logged and left out rather than stopping ingest.
    """
    rules = []
    for row in await conn.fetch(LOAD_RULES):
        try:
            rules.append(
                Rule.build(
                    row["id"],
                    row["name"],
                    orjson.loads(row["match"]),
                    row["destination_ids"],
                    granularity=row["granularity"],
                    quiet_period_s=row["quiet_period_s"],
                )
            )
        except RuleError as exc:
            log.error("routing rule skipped", extra={"rule": row["name"], "error": str(exc)})
    return rules


class RoutingTable:
    """The rules in force: loaded at start, reloaded when channels.ROUTING says they
    changed. Its :meth:`route` is the index writer's router."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._conn: asyncpg.Connection | None = None
        self._rules: list[Rule] = []
        self._reload: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        await self._listen()

    def route(self, record: InstanceRecord) -> list[JobRoute]:
        return route(self._rules, record)

    @property
    def rules(self) -> list[Rule]:
        return self._rules

    async def _listen(self) -> None:
        conn = await self._pool.acquire()
        await conn.add_listener(channels.ROUTING, self._changed)
        conn.add_termination_listener(self._lost)
        self._conn = conn
        self._rules = await load_rules(conn)
        log.info("routing rules loaded", extra={"rules": len(self._rules)})

    def _changed(self, *_: object) -> None:
        if self._reload is None or self._reload.done():
            self._reload = asyncio.get_running_loop().create_task(self._reload_rules())

    async def _reload_rules(self) -> None:
        if self._conn is None:
            return
        try:
            self._rules = await load_rules(self._conn)
            log.info("routing rules reloaded", extra={"rules": len(self._rules)})
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.error("routing rules not reloaded", extra={"error": str(exc)})

    def _lost(self, *_: object) -> None:
        # NOTE: changes made while we were not listening would be missed, so
        # reconnect and reload; meanwhile the last rules stay in force.
        self._conn = None
        if not self._closed:
            self._reload = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        delay = 0.5
        while not self._closed:
            try:
                await self._listen()
                return
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("routing rules: reconnecting", extra={"error": str(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def close(self) -> None:
        self._closed = True
        if self._reload is not None:
            self._reload.cancel()
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.remove_listener(channels.ROUTING, self._changed)
                await self._pool.release(conn, timeout=1)
