"""Studies in the index: search, a study with its series, a series' instances,
downloads (one Part 10 file, or a study as a streamed ZIP), and deletion.

Viewers, operators and admins read; only admins delete. PHI access is audited:
every search as a query (DICOM event 110112) with its filter, every view and
download as instances accessed (110103), a deletion as study deleted (110105,
in the deleting transaction).
"""

from __future__ import annotations

import base64
import collections
import datetime as dt
import functools
import logging
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

import asyncpg
import falcon
import falcon.asgi
import orjson

from dicomgw import audit
from dicomgw.api import zipstream
from dicomgw.api.auditing import audit_request
from dicomgw.api.auth import allow
from dicomgw.api.context import PREFIX, ApiContext, App
from dicomgw.api.middleware import PoolMiddleware
from dicomgw.api.problems import Problem, invalid, not_found
from dicomgw.api.storedfile import StoredFile
from dicomgw.api.validation import date_or_time, whole_number
from dicomgw.errors import DicomGwError
from dicomgw.storage import deletions
from dicomgw.storage.layout import StoredFileMissing

log = logging.getLogger(__name__)

READERS = ("viewer", "operator")
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
INTEGER_MAX = 2**31 - 1
"""instances.version is an integer column."""
MAX_TEXT = 64
"""Longest accepted search text: LO and PN component groups are 64 characters."""

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_MODALITY = re.compile(r"[A-Z0-9_ ]{1,16}")
_UNSAFE_NAME = re.compile(r"[^0-9A-Za-z._-]+")

STUDY_COLUMNS = (
    "s.id, s.study_instance_uid, s.patient_id, s.patient_name, s.patient_birth_date, "
    "s.patient_sex, s.study_date, s.study_time, s.accession_number, s.study_description, "
    "s.modalities, s.num_series, s.num_instances, s.size_bytes, s.first_received_at, "
    "s.last_received_at"
)
SEARCH_PARAMS = (
    "patient_id", "patient_name", "fuzzy", "accession_number", "study_date_from",
    "study_date_to", "modality", "source_ae", "received_from", "received_to", "limit", "cursor",
)  # fmt: skip

SERIES = """
SELECT series_instance_uid, modality, series_number, series_description, num_instances,
       first_received_at, last_received_at
FROM series WHERE study_id = $1
ORDER BY series_number NULLS LAST, series_instance_uid
"""

SERIES_IN_STUDY = """
SELECT se.id, st.patient_id FROM series se JOIN studies st ON st.id = se.study_id
WHERE st.study_instance_uid = $1 AND se.series_instance_uid = $2
"""

# Instances without a number come last; the key is a bigint so that they sort
# after any integer-string number.
INSTANCE_ORDER = "coalesce(instance_number::bigint, 2147483648)"
INSTANCES = f"""
SELECT id, {INSTANCE_ORDER} AS number_key, sop_instance_uid, sop_class_uid, instance_number,
       number_of_frames, transfer_syntax_uid, size_bytes, checksum, source_ae, received_at,
       version
FROM instances
WHERE series_id = $1 AND ({INSTANCE_ORDER}, id) > ($2, $3)
ORDER BY {INSTANCE_ORDER}, id
LIMIT $4
"""

INSTANCE_FILE = """
SELECT i.file_path, i.version, se.series_instance_uid, st.study_instance_uid, st.patient_id
FROM instances i JOIN series se ON se.id = i.series_id JOIN studies st ON st.id = se.study_id
WHERE i.sop_instance_uid = $1 AND ($2::integer IS NULL OR i.version = $2)
ORDER BY i.version DESC
LIMIT 1
"""

# The newest version of each instance, in viewing order.
ARCHIVE_MEMBERS = """
SELECT * FROM (
    SELECT DISTINCT ON (i.sop_instance_uid) i.sop_instance_uid, i.instance_number,
           i.file_path, i.received_at, se.series_instance_uid, se.series_number
    FROM instances i JOIN series se ON se.id = i.series_id
    WHERE se.study_id = $1
    ORDER BY i.sop_instance_uid, i.version DESC
) newest
ORDER BY series_number NULLS LAST, series_instance_uid, instance_number NULLS LAST,
         sop_instance_uid
"""

# NOTE: the study row is locked first, as the index writer's upsert does: an
# instance being indexed into this study either committed before (and is
# deleted here) or waits and then starts a new study row.
LOCK_STUDY = """
SELECT id, patient_id, size_bytes FROM studies
WHERE study_instance_uid = $1 FOR UPDATE
"""
# Forward jobs (and their attempts) go with their instances (ON DELETE CASCADE);
# ingest events stay, without their instance.
DELETE_INSTANCES = """
DELETE FROM instances i USING series se
WHERE se.id = i.series_id AND se.study_id = $1
RETURNING i.file_path
"""


# -- query parameters -------------------------------------------------------------------


def _params(req: falcon.asgi.Request, allowed: Collection[str]) -> dict[str, str]:
    """The query parameters, each given once, as sent. Unknown ones are refused (a
    typo must not silently widen a search); empty ones are ignored (forms send them)."""
    params: dict[str, str] = {}
    for name, value in req.params.items():
        if name not in allowed:
            raise invalid(f"unknown parameter '{name}'; allowed: {', '.join(allowed) or 'none'}",
                          field=name)  # fmt: skip
        if isinstance(value, list):
            raise invalid(f"give '{name}' once", field=name)
        if value:
            params[name] = value
    return params


def _text(params: dict[str, str], name: str, longest: int = MAX_TEXT) -> str | None:
    """A search text without the spaces around it (None if that leaves nothing). Its
    length is the one sent, as the OpenAPI description's maxLength counts."""
    value = params.get(name)
    if value is None:
        return None
    if len(value) > longest or not value.isprintable():
        raise invalid(f"'{name}' must be at most {longest} printable characters", field=name)
    return value.strip() or None


def _prefix(params: dict[str, str], name: str) -> tuple[str, bool] | None:
    """(value, is a prefix): a trailing '*' asks for a prefix match."""
    value = _text(params, name)
    if value is None:
        return None
    stem = value.removesuffix("*")
    if "*" in stem or not stem:
        raise invalid(f"'{name}': '*' is only allowed at the end, after some text", field=name)
    return stem, stem != value


def _like_prefix(value: str) -> str:
    """A LIKE pattern matching strings that start with ``value``."""
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _regex_literal(value: str) -> str:
    # In PostgreSQL's regular expressions a backslash before a character that is
    # not a letter or digit stands for that character.
    return "".join(c if c.isalnum() else f"\\{c}" for c in value)


def _date(params: dict[str, str], name: str) -> dt.date | None:
    value = params.get(name)
    if value is None:
        return None
    try:
        if not _DATE.fullmatch(value):
            raise ValueError(value)
        return dt.date.fromisoformat(value)
    except ValueError:
        raise invalid(f"'{name}' must be a date, YYYY-MM-DD", field=name) from None


def _ordered(low: dt.date | None, high: dt.date | None, name: str) -> None:
    if low is not None and high is not None and low > high:
        raise invalid(f"'{name}' is before the start of the range", field=name)


def _limit(params: dict[str, str]) -> int:
    return whole_number(params.get("limit"), "limit", MAX_LIMIT) or DEFAULT_LIMIT


def _encode_cursor(*key: object) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(key)).decode()


def _cursor(params: dict[str, str]) -> list[Any] | None:
    """The key a cursor holds: [sort value, row id]."""
    value = params.get("cursor")
    if value is None:
        return None
    try:
        key = orjson.loads(base64.urlsafe_b64decode(value.encode()))
    except ValueError:
        raise _bad_cursor() from None
    if not (isinstance(key, list) and len(key) == 2 and type(key[1]) is int):
        raise _bad_cursor()
    return key


def _bad_cursor() -> Problem:
    return invalid("'cursor' is not one this API returned", field="cursor")


class _Where:
    """A WHERE clause built a condition at a time; ``{}`` in a condition stands for
    its next argument."""

    def __init__(self) -> None:
        self.conditions: list[str] = []
        self.args: list[object] = []

    def add(self, condition: str, *values: object) -> None:
        numbers = [f"${len(self.args) + n}" for n in range(1, len(values) + 1)]
        self.args.extend(values)
        self.conditions.append(condition.format(*numbers))

    @property
    def sql(self) -> str:
        return " AND ".join(self.conditions) or "true"


def _search_filter(params: dict[str, str]) -> _Where:
    where = _Where()
    patient_id = _prefix(params, "patient_id")
    if patient_id is not None:
        value, is_prefix = patient_id
        if is_prefix:
            where.add("s.patient_id LIKE {}", _like_prefix(value))
        else:
            where.add("s.patient_id = {}", value)
    fuzzy = params.get("fuzzy", "false")
    if fuzzy not in ("true", "false"):
        raise invalid("'fuzzy' is true or false", field="fuzzy")
    name = _prefix(params, "patient_name")
    if name is None and fuzzy == "true":
        raise invalid("'fuzzy' needs 'patient_name'", field="fuzzy")
    if name is not None and fuzzy == "true":
        # Any name component or word: after '^' (components), '=' (groups) or ' '.
        # PERF: a sequential scan, as no index serves an inner component's prefix
        # (measured: 8 ms for 200,000 studies).
        where.add("lower(s.patient_name) ~ ('(^|[=^ ])' || lower({}))", _regex_literal(name[0]))
    elif name is not None:
        # The whole name's prefix, served by studies_patient_name (text_pattern_ops).
        where.add("lower(s.patient_name) LIKE lower({})", _like_prefix(name[0]))
    accession = _text(params, "accession_number")
    if accession is not None:
        where.add("s.accession_number = {}", accession)
    date_from, date_to = _date(params, "study_date_from"), _date(params, "study_date_to")
    _ordered(date_from, date_to, "study_date_to")
    if date_from is not None:
        where.add("s.study_date >= {}", date_from)
    if date_to is not None:
        where.add("s.study_date <= {}", date_to)
    modality = _text(params, "modality", 16)
    if modality is not None:
        if not _MODALITY.fullmatch(modality.upper()):
            raise invalid("'modality' is a DICOM modality code such as CT", field="modality")
        where.add("s.modalities @> ARRAY[{}::text]", modality.upper())
    source_ae = _text(params, "source_ae", 16)
    if source_ae is not None:
        if "\\" in source_ae:
            raise invalid("'source_ae' is an AE title (at most 16 characters)", field="source_ae")
        where.add(
            "EXISTS (SELECT FROM series se JOIN instances i ON i.series_id = se.id "
            "WHERE se.study_id = s.id AND i.source_ae = {})",
            source_ae,
        )
    received_from = date_or_time(params.get("received_from"), "received_from")
    received_to = date_or_time(params.get("received_to"), "received_to")
    _ordered(received_from, received_to, "received_to")
    # Studies that received anything in [from, to): their reception overlaps it.
    if received_from is not None:
        where.add("s.last_received_at >= {}", received_from)
    if received_to is not None:
        where.add("s.first_received_at < {}", received_to)
    return where


# -- JSON -------------------------------------------------------------------------------


def _iso(value: dt.date | None) -> str | None:
    return value.isoformat() if value is not None else None


def _study_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "study_instance_uid": row["study_instance_uid"],
        "patient_id": row["patient_id"],
        "patient_name": row["patient_name"],
        "patient_birth_date": row["patient_birth_date"],
        "patient_sex": row["patient_sex"],
        "study_date": _iso(row["study_date"]),
        "study_time": row["study_time"],
        "accession_number": row["accession_number"],
        "study_description": row["study_description"],
        "modalities": list(row["modalities"]),
        "num_series": row["num_series"],
        "num_instances": row["num_instances"],
        "size_bytes": row["size_bytes"],
        "first_received_at": _iso(row["first_received_at"]),
        "last_received_at": _iso(row["last_received_at"]),
    }


def _series_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "series_instance_uid": row["series_instance_uid"],
        "modality": row["modality"],
        "series_number": row["series_number"],
        "series_description": row["series_description"],
        "num_instances": row["num_instances"],
        "first_received_at": _iso(row["first_received_at"]),
        "last_received_at": _iso(row["last_received_at"]),
    }


def _instance_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "sop_instance_uid": row["sop_instance_uid"],
        "sop_class_uid": row["sop_class_uid"],
        "instance_number": row["instance_number"],
        "number_of_frames": row["number_of_frames"],
        "transfer_syntax_uid": row["transfer_syntax_uid"],
        "size_bytes": row["size_bytes"],
        "checksum": row["checksum"],
        "source_ae": row["source_ae"],
        "received_at": _iso(row["received_at"]),
        "version": row["version"],
    }


# -- file names -------------------------------------------------------------------------


def safe_name(value: str) -> str:
    """A peer-supplied string (a UID) as one file name component: only
    [0-9A-Za-z._-], no leading dot, at most 64 characters."""
    return _UNSAFE_NAME.sub("_", value).lstrip(".")[:64] or "_"


def archive_names(rows: list[asyncpg.Record]) -> list[str]:
    """``<series>/<instance number>_<SOP Instance UID>.dcm`` for each row, unique.

    The series folder is its number, or its UID when it has none; series that
    share a number get ``<number>_<UID>``."""
    numbers = collections.Counter(
        number
        for number, _ in {(r["series_number"], r["series_instance_uid"]) for r in rows}
        if number is not None
    )
    names: list[str] = []
    taken: set[str] = set()
    for r in rows:
        number, uid = r["series_number"], safe_name(r["series_instance_uid"])
        if number is None:
            folder = uid
        else:
            folder = str(number) if numbers[number] == 1 else f"{number}_{uid}"
        stem = safe_name(r["sop_instance_uid"])
        if r["instance_number"] is not None:
            stem = f"{r['instance_number']}_{stem}"
        name, n = f"{folder}/{stem}.dcm", 1
        while name in taken:
            n += 1
            name = f"{folder}/{stem}_{n}.dcm"
        taken.add(name)
        names.append(name)
    return names


# -- resources --------------------------------------------------------------------------


def _file_missing(exc: StoredFileMissing) -> Problem:
    log.error("indexed file cannot be read", extra={"file": exc.relative, "error": str(exc)})
    return Problem(500, "stored-file-missing", "Stored file missing", str(exc))


class StudiesResource:
    def __init__(self, api: ApiContext) -> None:
        self._pools: PoolMiddleware = api.pools
        self._root: Path = api.config.storage_root
        self._fsync = api.config.storage.fsync

    @allow(*READERS)
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        params = _params(req, SEARCH_PARAMS)
        where = _search_filter(params)
        limit = _limit(params)
        after = _cursor(params)
        if after is not None:
            try:
                received_at = dt.datetime.fromisoformat(after[0])
            except (TypeError, ValueError):
                raise _bad_cursor() from None
            where.add("(s.last_received_at, s.id) < ({}, {})", received_at, after[1])
        args = [*where.args, limit + 1]
        sql = (
            f"SELECT {STUDY_COLUMNS} FROM studies s WHERE {where.sql} "
            f"ORDER BY s.last_received_at DESC, s.id DESC LIMIT ${len(args)}"
        )
        async with self._pools.pool.acquire() as conn:
            rows = await conn.fetch(sql, *args)
            await audit_request(
                conn, req, action="study.search", target="studies", event_id=audit.QUERY,
                detail={"filter": {k: v for k, v in params.items() if k not in ("limit", "cursor")},
                        "returned": min(len(rows), limit)},
            )  # fmt: skip
        last = rows[limit - 1] if len(rows) > limit else None
        resp.media = {
            "items": [_study_json(r) for r in rows[:limit]],
            "next_cursor": _encode_cursor(last["last_received_at"].isoformat(), last["id"])
            if last is not None
            else None,
        }

    @allow(*READERS)
    async def on_get_one(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, study_uid: str
    ) -> None:
        _params(req, ())
        async with self._pools.pool.acquire() as conn:
            study = await conn.fetchrow(
                f"SELECT {STUDY_COLUMNS}, s.referring_physician_name FROM studies s "
                "WHERE s.study_instance_uid = $1",
                study_uid,
            )
            if study is None:
                raise not_found(f"study {study_uid}")
            series = await conn.fetch(SERIES, study["id"])
            await audit_request(
                conn, req, action="study.view", target=study_uid,
                event_id=audit.INSTANCES_ACCESSED, detail={"patient_id": study["patient_id"]},
            )  # fmt: skip
        resp.media = {
            **_study_json(study),
            "referring_physician_name": study["referring_physician_name"],
            "series": [_series_json(r) for r in series],
        }

    @allow(*READERS)
    async def on_get_instances(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, study_uid: str,
        series_uid: str,
    ) -> None:  # fmt: skip
        params = _params(req, ("limit", "cursor"))
        limit = _limit(params)
        number_key, after_id = _cursor(params) or (-(2**31) - 1, 0)
        if type(number_key) is not int:
            raise _bad_cursor()
        async with self._pools.pool.acquire() as conn:
            series = await conn.fetchrow(SERIES_IN_STUDY, study_uid, series_uid)
            if series is None:
                raise not_found(f"series {series_uid} of study {study_uid}")
            rows = await conn.fetch(INSTANCES, series["id"], number_key, after_id, limit + 1)
            await audit_request(
                conn, req, action="series.view", target=series_uid,
                event_id=audit.INSTANCES_ACCESSED,
                detail={"study_instance_uid": study_uid, "patient_id": series["patient_id"]},
            )  # fmt: skip
        last = rows[limit - 1] if len(rows) > limit else None
        resp.media = {
            "items": [_instance_json(r) for r in rows[:limit]],
            "next_cursor": _encode_cursor(last["number_key"], last["id"]) if last else None,
        }

    @allow(*READERS)
    async def on_get_archive(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, study_uid: str
    ) -> None:
        _params(req, ())
        async with self._pools.pool.acquire() as conn:
            study = await conn.fetchrow(
                "SELECT id, patient_id FROM studies WHERE study_instance_uid = $1", study_uid
            )
            if study is None:
                raise not_found(f"study {study_uid}")
            rows = await conn.fetch(ARCHIVE_MEMBERS, study["id"])
            await audit_request(
                conn, req, action="study.download", target=study_uid,
                event_id=audit.INSTANCES_ACCESSED,
                detail={"patient_id": study["patient_id"], "instances": len(rows)},
            )  # fmt: skip
        resp.content_type = "application/zip"
        resp.downloadable_as = f"{safe_name(study_uid)}.zip"
        resp.stream = zipstream.ZipStream(
            zipstream.Member(
                name,
                row["received_at"],
                functools.partial(StoredFile.open, self._root, row["file_path"]),
            )
            for name, row in zip(archive_names(rows), rows, strict=True)
        )

    @allow("admin")
    async def on_delete_one(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, study_uid: str
    ) -> None:
        _params(req, ())
        manifest: deletions.Manifest | None = None
        try:
            async with self._pools.pool.acquire() as conn, conn.transaction():
                study = await conn.fetchrow(LOCK_STUDY, study_uid)
                if study is None:
                    raise not_found(f"study {study_uid}")
                files = [r["file_path"] for r in await conn.fetch(DELETE_INSTANCES, study["id"])]
                await conn.execute("DELETE FROM studies WHERE id = $1", study["id"])
                await audit_request(
                    conn, req, action="study.delete", target=study_uid,
                    event_id=audit.STUDY_DELETED,
                    detail={"patient_id": study["patient_id"], "instances": len(files),
                            "size_bytes": study["size_bytes"]},
                )  # fmt: skip
                if files:
                    manifest = await deletions.write(self._root, files, fsync=self._fsync)
        finally:
            # After COMMIT, or after a failed or lost one: the index decides.
            if manifest is not None:
                await self._settle(manifest, study_uid)
        resp.status = falcon.HTTP_204

    async def _settle(self, manifest: deletions.Manifest, study_uid: str) -> None:
        try:
            removed = await deletions.settle(
                self._root, manifest, self._still_indexed, fsync=self._fsync
            )
        except (OSError, DicomGwError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.error(
                "files of a deleted study are left for the next start",
                extra={"study": study_uid, "manifest": str(manifest.path), "error": str(exc)},
            )
            return
        log.info("study deleted", extra={"study": study_uid, "files_removed": removed})

    async def _still_indexed(self, files: list[str]) -> set[str]:
        async with self._pools.pool.acquire() as conn:
            return {r["file_path"] for r in await conn.fetch(deletions.STILL_INDEXED, files)}


class InstanceFileResource:
    def __init__(self, api: ApiContext) -> None:
        self._pools = api.pools
        self._root = api.config.storage_root

    @allow(*READERS)
    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, sop_instance_uid: str
    ) -> None:
        params = _params(req, ("version",))
        version = whole_number(params.get("version"), "version", INTEGER_MAX)
        async with self._pools.pool.acquire() as conn:
            row = await conn.fetchrow(INSTANCE_FILE, sop_instance_uid, version)
            if row is None:
                what = f" version {version}" if version else ""
                raise not_found(f"instance {sop_instance_uid}{what}")
            try:
                stored = await StoredFile.open(self._root, row["file_path"])
            except StoredFileMissing as exc:
                raise _file_missing(exc) from None
            try:
                await audit_request(
                    conn, req, action="instance.download", target=sop_instance_uid,
                    event_id=audit.INSTANCES_ACCESSED,
                    detail={"study_instance_uid": row["study_instance_uid"],
                            "series_instance_uid": row["series_instance_uid"],
                            "version": row["version"], "patient_id": row["patient_id"]},
                )  # fmt: skip
            except BaseException:
                await stored.close()
                raise
        suffix = f"_v{row['version']}" if row["version"] > 1 else ""
        resp.content_type = "application/dicom"
        resp.content_length = stored.size
        resp.downloadable_as = f"{safe_name(sop_instance_uid)}{suffix}.dcm"
        resp.stream = stored


def add_routes(app: App, api: ApiContext) -> None:
    studies = StudiesResource(api)
    app.add_route(f"{PREFIX}/studies", studies)
    app.add_route(f"{PREFIX}/studies/{{study_uid}}", studies, suffix="one")
    app.add_route(f"{PREFIX}/studies/{{study_uid}}/archive", studies, suffix="archive")
    app.add_route(
        f"{PREFIX}/studies/{{study_uid}}/series/{{series_uid}}/instances",
        studies,
        suffix="instances",
    )
    app.add_route(f"{PREFIX}/instances/{{sop_instance_uid}}/file", InstanceFileResource(api))
