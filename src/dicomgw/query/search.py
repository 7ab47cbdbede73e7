"""A search of the index at one level, from DICOM query keys: PS3.4 C.2.2.2
matching (single value, wildcards, ranges, UID lists, universal) turned into
one SQL statement over the index tables, answered as DICOM JSON (PS3.18 F.2).

QIDO-RS (PS3.18 10.6) parses its request into a :class:`Query` here; the C-FIND
SCP parses its identifier into the same (:mod:`dicomgw.query.identifier`).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from dicomgw.query.attributes import (
    ATTRIBUTES,
    LEVELS,
    PATIENT_COUNTS,
    Attribute,
    Level,
    is_tag,
    lookup,
)
from dicomgw.ul.uids import is_valid_uid

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_PREFETCH = 50
"""Rows a cursor fetches at a time: small enough that the first match goes out at once."""
MAX_VALUE = 256
"""Longest query value taken (a UID list of a few UIDs; names are 64 per group)."""

_FROM: dict[Level, str] = {
    "patient": "studies st",
    "study": "studies st",
    "series": "series se JOIN studies st ON st.id = se.study_id",
    # NOTE: under duplicate_policy keep-both an instance has versions; the newest answers.
    "instance": "instances i JOIN series se ON se.id = i.series_id "
    "JOIN studies st ON st.id = se.study_id",
}
_NEWEST = (
    "NOT EXISTS (SELECT 1 FROM instances n "
    "WHERE n.sop_instance_uid = i.sop_instance_uid AND n.version > i.version)"
)
_ORDER: dict[Level, str] = {
    "patient": "min(st.id)",
    "study": "st.id",
    "series": "st.id, se.series_number NULLS LAST, se.id",
    "instance": "st.id, se.series_number NULLS LAST, se.id, i.instance_number NULLS LAST, i.id",
}
_DATE = re.compile(r"\d{8}")
_TIME = re.compile(r"([01]\d|2[0-3])([0-5]\d(([0-5]\d|60)(\.\d{1,6})?)?)?")


class QueryError(ValueError):
    """A query the index cannot answer as asked; the message names the key."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        super().__init__(f"{key}: {problem}")


@dataclass
class Query:
    level: Level
    filters: list[tuple[Attribute, str]] = field(default_factory=list)
    include_all: bool = False
    included: set[str] = field(default_factory=set)
    """Tags asked for with includefield (beyond the defaults)."""
    fuzzy: bool = False
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    limited_by_server: bool = False
    """The client asked for more than MAX_LIMIT, or gave no limit: say so if cut."""

    def returned(self) -> list[Attribute]:
        """The attributes each match carries: those of its level and the levels above."""
        depth = LEVELS.index(self.level)
        return [
            a
            for a in ATTRIBUTES
            if LEVELS.index(a.level) <= depth
            and (a.default or self.include_all or a.tag in self.included)
        ]


def parse_qido(
    level: Level, params: Mapping[str, str | list[str]], within: Mapping[str, str]
) -> Query:
    """A QIDO-RS request's query (PS3.18 8.3.4): attribute keys by keyword or tag,
    ``includefield``, ``fuzzymatching``, ``limit``, ``offset``; ``within``: the
    Study/Series Instance UIDs of the resource's path."""
    query = Query(level)
    for name, raw in params.items():
        values = raw if isinstance(raw, list) else [raw]
        if name == "includefield":
            for value in values:
                for item in value.split(","):
                    if item == "all":
                        query.include_all = True
                    elif attribute := lookup(item):
                        query.included.add(attribute.tag)
                    # NOTE: an attribute the index does not hold is left out, not refused:
                    # viewers ask for more than any server keeps.
            continue
        if len(values) != 1:
            raise QueryError(name, "given more than once")
        value = values[0]
        if name == "fuzzymatching":
            if value not in ("true", "false"):
                raise QueryError(name, "must be true or false")
            query.fuzzy = value == "true"
        elif name in ("limit", "offset"):
            if not value.isdigit() or len(value) > 9:
                raise QueryError(name, "must be a whole number")
            if name == "offset":
                query.offset = int(value)
            else:
                query.limit = int(value)
        else:
            attribute = lookup(name)
            if attribute is None:
                what = "a tag the index does not hold" if is_tag(name) else "not a DICOM keyword"
                raise QueryError(name, f"cannot search on it ({what} this server matches on)")
            if LEVELS.index(attribute.level) > LEVELS.index(level):
                raise QueryError(name, f"a {attribute.level} attribute, not at the {level} level")
            if len(value) > MAX_VALUE:
                raise QueryError(name, f"longer than {MAX_VALUE} characters")
            if value:  # empty: universal matching, a return key only
                query.filters.append((attribute, value))
            query.included.add(attribute.tag)
    if "limit" not in params or query.limit > MAX_LIMIT:
        query.limited_by_server = True
        query.limit = min(query.limit, MAX_LIMIT)
    for keyword, uid in within.items():
        attribute = lookup(keyword)
        assert attribute is not None
        query.filters.append((attribute, uid))
    statement(query)  # every value checked now: QueryError here, never at search time
    return query


class _Sql:
    def __init__(self) -> None:
        self.conditions: list[str] = []
        self.args: list[object] = []

    def add(self, condition: str, *values: object) -> None:
        """``condition`` with ``{}`` for each value, in order."""
        marks = []
        for value in values:
            self.args.append(value)
            marks.append(f"${len(self.args)}")
        self.conditions.append(condition.format(*marks))


def _like(value: str) -> str:
    """A DICOM wildcard value (``*``, ``?``) as a LIKE pattern (``\\`` escapes)."""
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _date(key: str, text: str) -> dt.date:
    if not _DATE.fullmatch(text):
        raise QueryError(key, f"'{text}' is not a date (YYYYMMDD)")
    try:
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        raise QueryError(key, f"'{text}' is not a date") from None


def _range(key: str, value: str) -> tuple[str | None, str | None]:
    if value.count("-") > 1:
        raise QueryError(key, f"'{value}' is not a value or a range (A-B, A-, -B)")
    low, dash, high = value.partition("-")
    if not dash:
        return low, low
    if not low and not high:
        raise QueryError(key, "a range needs at least one end")
    return low or None, high or None


def _match(sql: _Sql, attribute: Attribute, value: str, fuzzy: bool) -> None:
    key, column, kind = attribute.keyword, attribute.column, attribute.kind
    if kind == "uid":
        uids = [u for u in re.split(r"[\\,]", value) if u]
        bad = [u for u in uids if not is_valid_uid(u)]
        if bad:
            raise QueryError(key, f"'{bad[0][:80]}' is not a UID")
        sql.add(f"{column} = ANY({{}}::text[])", uids)
    elif kind == "modalities":
        sql.add(f"{column} && {{}}::text[]", [m for m in re.split(r"[\\,]", value) if m])
    elif kind == "integer":
        if not re.fullmatch(r"[+-]?\d{1,9}", value):
            raise QueryError(key, f"'{value}' is not a whole number")
        sql.add(f"{column} = {{}}", int(value))
    elif kind == "date":
        low, high = _range(key, value)
        if low is not None:
            sql.add(f"{column} >= {{}}", _date(key, low))
        if high is not None:
            sql.add(f"{column} <= {{}}", _date(key, high))
    elif kind == "time":
        low, high = _range(key, value.replace(":", ""))
        for end, op in ((low, ">="), (high, "<=")):
            if end is not None:
                if not _TIME.fullmatch(end):
                    raise QueryError(key, f"'{end}' is not a time (HHMMSS)")
                # NOTE: text comparison of HHMMSS[.ffffff]; an upper bound of HHMM
                # includes every second of that minute.
                sql.add(f"{column} {op} {{}}", end if op == ">=" else end + "\uffff")
    elif kind == "person":
        if fuzzy:
            # Any name component that starts with the value, whatever the case.
            sql.add(
                f"(lower({column}) LIKE {{}} OR lower({column}) LIKE {{}})",
                _like(value.lower()) + "%",
                "%^" + _like(value.lower()) + "%",
            )
        elif "*" in value or "?" in value:
            sql.add(f"lower({column}) LIKE {{}}", _like(value.lower()))
        else:
            sql.add(f"lower({column}) = {{}}", value.lower())
    elif "*" in value or "?" in value:
        sql.add(f"{column} LIKE {{}}", _like(value))
    else:
        sql.add(f"{column} = {{}}", value)


def statement(query: Query) -> tuple[str, list[object]]:
    """The SQL and its arguments; fetches one row more than the limit (to know
    whether the answer was cut)."""
    sql = _Sql()
    for attribute, value in query.filters:
        _match(sql, attribute, value, query.fuzzy)
    if query.level == "instance":
        sql.conditions.append(_NEWEST)
    if query.level == "patient":
        # One row per Patient ID, whatever the name spelling of its studies.
        select = ", ".join(
            f'{a.column if a.keyword == "PatientID" else f"min({a.column})"} AS "{a.keyword}"'
            for a in ATTRIBUTES
            if a.patient
        )
        select += "".join(f', {a.column} AS "{a.keyword}"' for a in PATIENT_COUNTS)
        group = " GROUP BY st.patient_id"
    else:
        depth = LEVELS.index(query.level)
        columns = [a for a in ATTRIBUTES if LEVELS.index(a.level) <= depth]
        select = ", ".join(f'{a.column} AS "{a.keyword}"' for a in columns)
        group = ""
    where = f"WHERE {' AND '.join(sql.conditions)}" if sql.conditions else ""
    sql.args += [query.limit + 1, query.offset]
    n = len(sql.args)
    text = (
        f"SELECT {select} FROM {_FROM[query.level]} {where}{group} "
        f"ORDER BY {_ORDER[query.level]} LIMIT ${n - 1} OFFSET ${n}"
    )
    return text, sql.args


async def search(conn: asyncpg.Connection, query: Query) -> tuple[list[asyncpg.Record], bool]:
    """The matches (at most ``query.limit``), and whether more were left out."""
    text, args = statement(query)
    rows = await conn.fetch(text, *args)
    return rows[: query.limit], len(rows) > query.limit


async def stream(conn: asyncpg.Connection, query: Query) -> AsyncIterator[asyncpg.Record]:
    """The matches as the database finds them (a cursor: the first one comes before
    the search has ended), up to one more than ``query.limit`` so the caller knows
    it was exceeded. ``conn`` must be in a transaction."""
    text, args = statement(query)
    async for row in conn.cursor(text, *args, prefetch=_PREFETCH):
        yield row


# -- DICOM JSON (PS3.18 F.2) -----------------------------------------------------------

RETRIEVE_URL = "00081190"
INSTANCE_AVAILABILITY = "00080056"


def _value(attribute: Attribute, value: Any) -> list[Any]:
    if attribute.kind == "modalities":
        return list(value)
    if attribute.vr == "PN":
        return [{"Alphabetic": value}]
    if attribute.vr == "DA" and isinstance(value, dt.date):
        return [value.strftime("%Y%m%d")]
    return [value]


def dicom_json(
    row: asyncpg.Record, attributes: Iterable[Attribute], level: Level, root: str
) -> dict[str, Any]:
    """One match as a DICOM JSON object, with its RetrieveURL under ``root``
    (the DICOMweb base URL) and its availability (everything here is ONLINE)."""
    out: dict[str, Any] = {}
    for attribute in attributes:
        value = row[attribute.keyword]
        element: dict[str, Any] = {"vr": attribute.vr}
        if value is not None and value != []:
            element["Value"] = _value(attribute, value)
        out[attribute.tag] = element
    url = f"{root}/studies/{row['StudyInstanceUID']}"
    if level in ("series", "instance"):
        url += f"/series/{row['SeriesInstanceUID']}"
    if level == "instance":
        url += f"/instances/{row['SOPInstanceUID']}"
    out[RETRIEVE_URL] = {"vr": "UR", "Value": [url]}
    out[INSTANCE_AVAILABILITY] = {"vr": "CS", "Value": ["ONLINE"]}
    return dict(sorted(out.items()))
