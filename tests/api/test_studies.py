"""Studies over the API, in-process on a real PostgreSQL.

The index is built by the real index writer (IndexBatcher) and, where bytes are
served, from real Part 10 files written with pydicom under the storage root the
API is configured with.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import io
import os
import random
import urllib.parse
import uuid
import zipfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from dicomgw.api import zipstream
from dicomgw.api.app import ROUTES
from dicomgw.api.context import RouteAdder
from dicomgw.api.resources import studies
from dicomgw.api.storedfile import StoredFile
from dicomgw.config import Config
from dicomgw.index.batcher import IndexBatcher, init_connection
from dicomgw.index.records import InstanceRecord
from dicomgw.storage import deletions
from tests.api.inprocess import Api, api_config, logged_in, migrated
from tests.records import record

ROUTES_WITH_STUDIES: tuple[RouteAdder, ...] = (
    ROUTES if studies.add_routes in ROUTES else (*ROUTES, studies.add_routes)
)
CT_IMAGE = UID("1.2.840.10008.5.1.4.1.1.2")
T0 = dt.datetime(2025, 1, 1, 10, 0, tzinfo=dt.UTC)
SPEC = Path(__file__).parents[2] / "docs" / "openapi-studies.yaml"


def new_uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


def write_part10(root: Path, sop_uid: str, rec: InstanceRecord, payload: int) -> tuple[str, int]:
    """A real Part 10 file under ``root/objects``: (relative path, size)."""
    key = uuid.uuid4().hex
    relative = f"objects/2025/01/01/{key[:2]}/{key}.dcm"
    ds = Dataset()
    ds.SOPClassUID = CT_IMAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = rec.study_instance_uid
    ds.SeriesInstanceUID = rec.series_instance_uid
    ds.PatientID = rec.patient_id or ""
    ds.Modality = rec.modality or ""
    ds.BitsAllocated = 8
    ds.PixelData = random.randbytes(payload)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return relative, path.stat().st_size


@dataclass
class Index:
    """The index writer and the storage root of one test database."""

    config: Config
    pool: asyncpg.Pool
    batcher: IndexBatcher

    @property
    def root(self) -> Path:
        return self.config.storage_root

    async def add(
        self,
        study: str,
        series: str,
        *,
        sop: str | None = None,
        payload: int | None = 2000,
        **attrs: Any,
    ) -> InstanceRecord:
        """One instance (with a real file unless ``payload`` is None), indexed."""
        sop = sop or new_uid()
        rec = replace(
            record(0),
            sop_instance_uid=sop,
            study_instance_uid=study,
            series_instance_uid=series,
            checksum=f"crc32c:{uuid.uuid4().hex[:8]}",
            **attrs,
        )
        if payload is not None:
            relative, size = write_part10(self.root, sop, rec, payload)
            rec = replace(rec, file_path=relative, size_bytes=size)
        outcome = await self.batcher.index(rec)
        assert outcome.kind == "stored"
        return rec

    async def add_many(self, records: Sequence[InstanceRecord]) -> None:
        outcomes = await asyncio.gather(*(self.batcher.index(r) for r in records))
        assert {o.kind for o in outcomes} == {"stored"}


@pytest.fixture
async def index(empty_db: str, tmp_path: Path) -> AsyncIterator[Index]:
    await migrated(empty_db)
    config = api_config(empty_db, tmp_path)
    pool = await asyncpg.create_pool(empty_db, min_size=1, max_size=4, init=init_connection)

    async def different(_a: str, _b: str, _n: int) -> bool:
        return False

    batcher = IndexBatcher(
        pool,
        batch_size=64,
        max_delay_s=0,
        duplicate_policy="keep-both",
        same_content=different,
        timeout_s=10,
    )
    batcher.start()
    yield Index(config, pool, batcher)
    await batcher.close()
    await pool.close()


def as_role(index: Index, role: str) -> Any:
    return logged_in(index.config, role, routes=ROUTES_WITH_STUDIES)


async def audit_rows(index: Index, action: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await index.pool.fetch(
        "SELECT actor, target, event_id, detail::text AS detail FROM audit_log "
        "WHERE action = $1 ORDER BY id",
        action,
    )
    return rows


# -- search -----------------------------------------------------------------------------


@dataclass
class Corpus:
    uids: dict[str, str]
    """Study letter -> Study Instance UID."""

    def letters(self, items: list[dict[str, Any]]) -> list[str]:
        by_uid = {uid: letter for letter, uid in self.uids.items()}
        return [by_uid[i["study_instance_uid"]] for i in items]


async def search_corpus(index: Index) -> Corpus:
    """Six studies, received A first and F last."""
    people = {
        "A": ("PAT-001", "DOE^JOHN", "ACC-A", dt.date(2024, 1, 10), ["CT"], ["CT_SCANNER"]),
        "B": ("PAT-002", "Smith^Anna", "ACC-B", dt.date(2024, 2, 20), ["MR"], ["MR_ONE"]),
        "C": ("PAT-0021", "DOE^SMITH", "ACC-C", dt.date(2024, 3, 5), ["CT", "SR"],
              ["CT_SCANNER", "WORKSTATION"]),
        "D": ("X_1%", "O'BRIEN^MARY ANN", "ACC-D", None, ["US"], ["US1"]),
        "E": ("XA1", None, None, dt.date(2024, 2, 1), ["CT"], ["CT2"]),
        "F": ("PAT-100", "JONES^ED=ジョーンズ^エド", "ACC-F", dt.date(2023, 12, 31), ["OT"],
              ["OT1"]),
    }  # fmt: skip
    uids = {}
    for day, (letter, (pid, name, acc, date, modalities, aes)) in enumerate(people.items()):
        uids[letter] = study = new_uid()
        for n, (modality, ae) in enumerate(zip(modalities, aes, strict=True)):
            await index.add(
                study, new_uid(), payload=None, patient_id=pid, patient_name=name,
                accession_number=acc, study_date=date, modality=modality, source_ae=ae,
                received_at=T0 + dt.timedelta(days=day, minutes=n),
            )  # fmt: skip
    return Corpus(uids)


async def search(api: Api, **params: str) -> list[dict[str, Any]]:
    result = await api.call("GET", "/studies", params=params)
    assert result.status_code == 200, result.text
    items: list[dict[str, Any]] = result.json["items"]
    return items


SEARCHES = [
    ({}, "FEDCBA"),
    ({"patient_id": "PAT-002"}, "B"),
    ({"patient_id": "PAT-002*"}, "CB"),
    ({"patient_id": "X_*"}, "D"),  # '_' and '%' are literal, not LIKE wildcards
    ({"patient_id": "pat-002"}, ""),  # IDs are exact
    ({"patient_name": "doe"}, "CA"),
    ({"patient_name": "DOE^J"}, "A"),
    ({"patient_name": "smi"}, "B"),
    ({"patient_name": "smi*"}, "B"),
    ({"patient_name": "smi", "fuzzy": "true"}, "CB"),
    ({"patient_name": "ann", "fuzzy": "true"}, "DB"),
    ({"patient_name": "o'b"}, "D"),
    ({"patient_name": "ジョ", "fuzzy": "true"}, "F"),
    ({"patient_name": "ed", "fuzzy": "true"}, "F"),
    ({"accession_number": "ACC-C"}, "C"),
    ({"study_date_from": "2024-02-01"}, "ECB"),
    ({"study_date_to": "2024-02-20"}, "FEBA"),
    ({"study_date_from": "2024-02-01", "study_date_to": "2024-02-20"}, "EB"),
    ({"modality": "CT"}, "ECA"),
    ({"modality": "sr"}, "C"),
    ({"source_ae": "WORKSTATION"}, "C"),
    ({"source_ae": "CT_SCANNER"}, "CA"),
    ({"received_from": "2025-01-03T10:00:00Z"}, "FEDC"),
    ({"received_from": "2025-01-03T10:00:30+00:00"}, "FEDC"),  # C's last instance at 10:01
    ({"received_from": "2025-01-03T11:01:30+01:00"}, "FED"),
    ({"received_to": "2025-01-02T10:00:00Z"}, "A"),  # exclusive
    ({"received_from": "2025-01-02T00:00:00", "received_to": "2025-01-04T00:00:00Z"}, "CB"),
    ({"modality": "CT", "patient_name": "doe", "study_date_from": "2024-03-01"}, "C"),
    ({"patient_id": "PAT*", "source_ae": "CT_SCANNER", "accession_number": "ACC-A"}, "A"),
    ({"patient_name": "doe", "modality": "MR"}, ""),
]


async def test_search_filters(index: Index) -> None:
    corpus = await search_corpus(index)
    async with as_role(index, "viewer") as api:
        for params, expected in SEARCHES:
            found = corpus.letters(await search(api, **params))
            assert "".join(found) == expected, params


async def test_search_items(index: Index) -> None:
    study = new_uid()
    first = await index.add(
        study, new_uid(), payload=None, patient_birth_date="19700101", study_time="101500",
        study_description="CHEST", modality="CT", received_at=T0.replace(hour=9),
        study_date=dt.date(2024, 5, 1),
    )  # fmt: skip
    await index.add(study, first.series_instance_uid, payload=None, received_at=T0.replace(hour=10))
    await index.add(study, new_uid(), payload=None, modality="SR", received_at=T0.replace(hour=11))
    async with as_role(index, "operator") as api:
        (item,) = await search(api)
    assert item == {
        "study_instance_uid": study,
        "patient_id": "P1",
        "patient_name": "DOE^JANE",
        "patient_birth_date": "19700101",
        "patient_sex": "F",
        "study_date": "2024-05-01",
        "study_time": "101500",
        "accession_number": "ACC1",
        "study_description": "CHEST",
        "modalities": ["CT", "SR"],
        "num_series": 2,
        "num_instances": 3,
        "size_bytes": 3000,
        "first_received_at": T0.replace(hour=9).isoformat(),
        "last_received_at": T0.replace(hour=11).isoformat(),
    }


INVALID = [
    ({"limit": "0"}, "limit"),
    ({"limit": "501"}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"cursor": "not-a-cursor"}, "cursor"),
    ({"cursor": "WzEsMl0="}, "cursor"),  # [1, 2]: a valid shape, but not a studies key
    ({"study_date_from": "2024-13-01"}, "study_date_from"),
    ({"study_date_from": "20240101"}, "study_date_from"),
    ({"study_date_from": "2024-02-02", "study_date_to": "2024-02-01"}, "study_date_to"),
    ({"received_from": "yesterday"}, "received_from"),
    ({"received_from": "2025-01-02T00:00Z", "received_to": "2025-01-01T00:00Z"}, "received_to"),
    ({"modality": "C;T"}, "modality"),
    ({"fuzzy": "maybe", "patient_name": "x"}, "fuzzy"),
    ({"fuzzy": "true"}, "fuzzy"),
    ({"patient_id": "P*1"}, "patient_id"),
    ({"patient_id": "*"}, "patient_id"),
    ({"patient_name": "x" * 65}, "patient_name"),
    ({"source_ae": "A" * 17}, "source_ae"),
    ({"patientid": "P1"}, "patientid"),
]


async def test_invalid_parameters_are_named(index: Index) -> None:
    async with as_role(index, "viewer") as api:
        for params, field in INVALID:
            result = await api.call("GET", "/studies", params=params)
            assert result.status_code == 422, params
            assert result.headers["content-type"] == "application/problem+json"
            assert result.json["field"] == field, params
        repeated = await api.call("GET", "/studies", query_string="modality=CT&modality=MR")
        assert repeated.status_code == 422
        assert repeated.json["field"] == "modality"
        # Empty parameters (as forms send them) are no filter.
        assert (await api.call("GET", "/studies", params={"patient_id": ""})).status_code == 200


async def test_keyset_pages_are_stable_while_studies_arrive(index: Index) -> None:
    """~500 studies, ~3000 instances, many sharing a last_received_at (the id breaks
    ties); new studies arrive between pages, some with timestamps older than the
    page boundary (a late commit): every study present at the start is seen once."""
    rng = random.Random(7)
    records = []
    for s in range(500):
        study = new_uid()
        at = T0 + dt.timedelta(seconds=rng.randrange(120))
        for _ in range(rng.randint(3, 9)):
            records.append(
                replace(record(s), study_instance_uid=study, series_instance_uid=f"{study}.1",
                        checksum=f"crc32c:{uuid.uuid4().hex[:8]}", received_at=at)
            )  # fmt: skip
    for start in range(0, len(records), 512):
        await index.add_many(records[start : start + 512])
    initial = {r.study_instance_uid for r in records}
    assert 2500 < len(records) < 3500
    seen: list[str] = []
    keys: list[str] = []
    async with as_role(index, "viewer") as api:
        cursor = None
        while True:
            params = {"limit": "37", **({"cursor": cursor} if cursor else {})}
            page = await api.call("GET", "/studies", params=params)
            assert page.status_code == 200
            seen += [i["study_instance_uid"] for i in page.json["items"]]
            keys += [i["last_received_at"] for i in page.json["items"]]
            cursor = page.json["next_cursor"]
            if cursor is None:
                break
            late = T0 + dt.timedelta(seconds=rng.randrange(-30, 150))
            await index.add_many(
                [replace(record(0), study_instance_uid=new_uid(), received_at=at)
                 for at in (dt.datetime.now(dt.UTC), late)]
            )  # fmt: skip
    assert len(seen) == len(set(seen))
    assert initial <= set(seen)
    assert keys == sorted(keys, reverse=True)


# -- one study, its instances -----------------------------------------------------------


async def test_study_with_series_and_paged_instances(index: Index) -> None:
    study, ct, sr = new_uid(), new_uid(), new_uid()
    sops = [new_uid() for _ in range(5)]
    for n, sop in zip([3, 1, None, 2, 2], sops, strict=True):
        await index.add(study, ct, sop=sop, payload=None, instance_number=n, series_number=2,
                        series_description="AXIAL", received_at=T0)  # fmt: skip
    # keep-both: the same SOP Instance UID again with other bytes is version 2
    await index.add(study, ct, sop=sops[1], payload=None, instance_number=1, series_number=2,
                    received_at=T0)  # fmt: skip
    await index.add(study, sr, payload=None, modality="SR", series_number=1, received_at=T0)
    async with as_role(index, "viewer") as api:
        one = await api.call("GET", f"/studies/{study}")
        assert one.status_code == 200
        assert one.json["study_instance_uid"] == study
        assert one.json["referring_physician_name"] is None
        assert [(s["series_instance_uid"], s["num_instances"]) for s in one.json["series"]] == [
            (sr, 1),
            (ct, 6),
        ]
        assert one.json["series"][1]["series_description"] == "AXIAL"
        listed: list[dict[str, Any]] = []
        cursor = None
        while True:
            params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
            page = await api.call("GET", f"/studies/{study}/series/{ct}/instances", params=params)
            assert page.status_code == 200
            listed += page.json["items"]
            cursor = page.json["next_cursor"]
            if cursor is None:
                break
        assert [(i["instance_number"], i["version"]) for i in listed] == [
            (1, 1), (1, 2), (2, 1), (2, 1), (3, 1), (None, 1),
        ]  # fmt: skip
        assert set(listed[0]) == {
            "sop_instance_uid", "sop_class_uid", "instance_number", "number_of_frames",
            "transfer_syntax_uid", "size_bytes", "checksum", "source_ae", "received_at",
            "version",
        }  # fmt: skip
        assert listed[0]["source_ae"] == "MODALITY"
        missing = await api.call("GET", f"/studies/{new_uid()}")
        assert missing.status_code == 404
        other_study = await api.call("GET", f"/studies/{new_uid()}/series/{ct}/instances")
        assert other_study.status_code == 404
        bad = await api.call("GET", f"/studies/{study}/series/{ct}/instances",
                             params={"cursor": studies._encode_cursor("x", 1)})  # fmt: skip
        assert bad.status_code == 422 and bad.json["field"] == "cursor"


# -- downloads --------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
async def test_download_is_the_stored_file(index: Index) -> None:
    study, series = new_uid(), new_uid()
    sop = '1.2.3 "evil";\r\nX-Injected: 1..'
    old = await index.add(study, series, sop=sop, payload=3000)
    new = await index.add(study, series, sop=sop, payload=int(2.5 * 1024 * 1024))
    path = f"/instances/{urllib.parse.quote(sop, safe='')}/file"
    async with as_role(index, "viewer") as api:
        newest = await api.call("GET", path)
        assert newest.status_code == 200
        assert newest.content == (index.root / new.file_path).read_bytes()
        assert newest.headers["content-type"] == "application/dicom"
        assert newest.headers["content-length"] == str(new.size_bytes)
        assert newest.headers["cache-control"] == "no-store"
        assert newest.headers["content-disposition"] == (
            'attachment; filename="1.2.3_evil_X-Injected_1.._v2.dcm"'
        )
        first = await api.call("GET", path, params={"version": "1"})
        assert first.content == (index.root / old.file_path).read_bytes()
        assert (await api.call("GET", path, params={"version": "3"})).status_code == 404
        bad = await api.call("GET", path, params={"version": "0"})
        assert bad.status_code == 422 and bad.json["field"] == "version"
        assert (await api.call("GET", f"/instances/{new_uid()}/file")).status_code == 404
        (index.root / new.file_path).unlink()
        gone = await api.call("GET", path)
        assert gone.status_code == 500
        assert gone.json["type"] == "urn:dicom-gw:problem:stored-file-missing"
    downloads = await audit_rows(index, "instance.download")
    assert [(r["target"], r["event_id"]) for r in downloads] == [(sop, "110103")] * 2


async def test_stored_file_is_read_in_chunks(index: Index) -> None:
    study = new_uid()
    rec = await index.add(study, new_uid(), payload=3 * 1024 * 1024 + 5)
    stored = await StoredFile.open(index.root, rec.file_path)
    try:
        chunks = [chunk async for chunk in stored]
    finally:
        await stored.close()
    assert max(map(len, chunks)) == 1024 * 1024
    assert b"".join(chunks) == (index.root / rec.file_path).read_bytes()


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
async def test_archive_members_are_the_stored_files(index: Index) -> None:
    study = new_uid()
    one, two_a, two_b, unnumbered = (new_uid() for _ in range(4))
    stored: dict[str, InstanceRecord] = {}

    async def add(series: str, number: int | None, instance: int | None, **kw: Any) -> str:
        rec = await index.add(study, series, series_number=number, instance_number=instance,
                              **kw)  # fmt: skip
        stored[rec.sop_instance_uid] = rec
        return rec.sop_instance_uid

    a = await add(one, 1, 2, payload=1_500_000)
    b = await add(one, 1, 1)
    await add(one, 1, 1, sop=b, payload=5000)  # version 2 replaces version 1 in the archive
    c = await add(two_a, 2, 1)
    d = await add(two_b, 2, None)
    e = await add(unnumbered, None, 7, sop="1.2.3/../../etc/passwd")
    async with as_role(index, "viewer") as api:
        result = await api.call("GET", f"/studies/{study}/archive")
    assert result.status_code == 200
    assert result.headers["content-type"] == "application/zip"
    assert result.headers["content-disposition"] == f'attachment; filename="{study}.zip"'
    archive = zipfile.ZipFile(io.BytesIO(result.content))
    assert archive.testzip() is None
    expected = {
        f"1/1_{b}.dcm": b,
        f"1/2_{a}.dcm": a,
        f"2_{two_a}/1_{c}.dcm": c,
        f"2_{two_b}/{d}.dcm": d,
        f"{unnumbered}/7_1.2.3_.._.._etc_passwd.dcm": e,
    }
    names = archive.namelist()
    # Viewing order: by series number, then instance number; unnumbered last.
    assert sorted(names) == sorted(expected)
    assert names[:2] == [f"1/1_{b}.dcm", f"1/2_{a}.dcm"] and names[-1].startswith(unnumbered)
    for name, sop in expected.items():
        assert archive.read(name) == (index.root / stored[sop].file_path).read_bytes()
        assert archive.getinfo(name).compress_type == zipfile.ZIP_STORED
    (view,) = await audit_rows(index, "study.download")
    assert (view["target"], view["event_id"]) == (study, "110103")


class Zeros:
    """A source of ``size`` zero bytes, without holding them."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._left = size
        self.closed = False

    def __aiter__(self) -> Zeros:
        return self

    async def __anext__(self) -> bytes:
        if not self._left:
            raise StopAsyncIteration
        n = min(self._left, 4 * 1024 * 1024)
        self._left -= n
        return bytes(n)

    async def close(self) -> None:
        self.closed = True


async def write_sparse(stream: zipstream.ZipStream, path: Path) -> None:
    """The archive into a file, its runs of zeros as holes (no disk space used)."""
    with path.open("wb") as f:
        async for chunk in stream:
            if chunk.count(0) == len(chunk) and len(chunk) > 4096:
                f.seek(len(chunk), os.SEEK_CUR)
            else:
                f.write(chunk)
        f.truncate()


def members(*sizes: int) -> tuple[list[zipstream.Member], list[Zeros]]:
    sources = [Zeros(size) for size in sizes]

    async def opener(source: Zeros) -> Zeros:
        return source

    return [
        zipstream.Member(f"m{n}.bin", T0, functools.partial(opener, s))
        for n, s in enumerate(sources)
    ], sources


async def test_zip64_where_sizes_offsets_or_counts_need_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Lowered limits exercise every ZIP64 field with small members.
    monkeypatch.setattr(zipstream, "ZIP64_LIMIT", 5000)
    monkeypatch.setattr(zipstream, "ZIP64_COUNT_LIMIT", 3)
    listed, sources = members(100, 6000, 100, 100)
    path = tmp_path / "small64.zip"
    await write_sparse(zipstream.ZipStream(listed), path)
    data = path.read_bytes()
    assert b"PK\x06\x06" in data and b"PK\x06\x07" in data
    archive = zipfile.ZipFile(path)
    assert archive.testzip() is None
    assert [i.file_size for i in archive.infolist()] == [100, 6000, 100, 100]
    assert [i.header_offset > 5000 for i in archive.infolist()] == [False, False, True, True]
    assert all(s.closed for s in sources)


@pytest.mark.slow
async def test_zip64_with_a_member_over_4_gib(tmp_path: Path) -> None:
    listed, _ = members(10, 2**32 + 12345, 10)
    path = tmp_path / "big.zip"
    await write_sparse(zipstream.ZipStream(listed), path)
    archive = zipfile.ZipFile(path)
    assert [i.file_size for i in archive.infolist()] == [10, 2**32 + 12345, 10]
    assert archive.testzip() is None


async def test_zip_stream_closes_the_open_member_when_the_client_goes(tmp_path: Path) -> None:
    listed, sources = members(10 * 1024 * 1024, 10)
    stream = zipstream.ZipStream(listed)
    await anext(stream)
    await anext(stream)
    await stream.close()
    assert sources[0].closed


# -- deletion ---------------------------------------------------------------------------


async def forward_job(index: Index, sop: str) -> None:
    await index.pool.execute(
        "INSERT INTO destinations (name, kind) VALUES ($1, 'dimse') ON CONFLICT DO NOTHING",
        "pacs",
    )
    await index.pool.execute(
        "INSERT INTO forward_jobs (instance_id, destination_id) "
        "SELECT i.id, d.id FROM instances i, destinations d WHERE i.sop_instance_uid = $1",
        sop,
    )


async def counts(index: Index, study: str) -> tuple[int, ...]:
    row = await index.pool.fetchrow(
        "SELECT (SELECT count(*) FROM studies WHERE study_instance_uid = $1) AS studies, "
        "(SELECT count(*) FROM series se JOIN studies s ON s.id = se.study_id "
        " WHERE s.study_instance_uid = $1) AS series, "
        "(SELECT count(*) FROM instances WHERE sop_instance_uid LIKE $1 || '.%') AS instances, "
        "(SELECT count(*) FROM forward_jobs j JOIN instances i ON i.id = j.instance_id "
        " WHERE i.sop_instance_uid LIKE $1 || '.%') AS jobs",
        study,
    )
    return tuple(row.values())


async def study_with_files(index: Index, n: int = 3) -> tuple[str, list[Path]]:
    """A study whose SOP Instance UIDs start with its UID (for counts()), with jobs."""
    study, series = new_uid(), new_uid()
    files = []
    for k in range(n):
        rec = await index.add(study, series, sop=f"{study}.{k}")
        await forward_job(index, rec.sop_instance_uid)
        files.append(index.root / rec.file_path)
    return study, files


async def test_delete_removes_rows_then_files(index: Index) -> None:
    study, files = await study_with_files(index)
    kept, kept_files = await study_with_files(index)
    assert await counts(index, study) == (1, 1, 3, 3)
    async with as_role(index, "admin") as api:
        result = await api.call("DELETE", f"/studies/{study}")
        assert result.status_code == 204
        assert (await api.call("DELETE", f"/studies/{study}")).status_code == 404
        assert (await api.call("GET", f"/studies/{study}")).status_code == 404
    assert await counts(index, study) == (0, 0, 0, 0)
    assert not any(f.exists() for f in files)
    assert await counts(index, kept) == (1, 1, 3, 3)
    assert all(f.exists() for f in kept_files)
    assert list((index.root / deletions.DIRECTORY).iterdir()) == []
    (deleted,) = await audit_rows(index, "study.delete")
    assert (deleted["target"], deleted["event_id"]) == (study, "110105")
    assert '"instances": 3' in deleted["detail"]


async def test_a_failed_commit_keeps_rows_and_files(index: Index) -> None:
    """COMMIT itself fails (a deferred trigger): nothing is lost, no manifest is left."""
    study, files = await study_with_files(index)
    await index.pool.execute(
        """
        CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN RAISE EXCEPTION 'refused at commit'; END $$;
        CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER DELETE ON studies
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse();
        """
    )
    async with as_role(index, "admin") as api:
        result = await api.call("DELETE", f"/studies/{study}")
    assert result.status_code == 500
    assert await counts(index, study) == (1, 1, 3, 3)
    assert all(f.exists() for f in files)
    assert list((index.root / deletions.DIRECTORY).iterdir()) == []


async def test_settling_after_a_crash_removes_only_unindexed_files(index: Index) -> None:
    """What start-up recovery does with a manifest left by a crash: the files whose
    rows are gone are removed, the others kept; a delete still in flight is waited
    for and decides."""
    committed, committed_files = await study_with_files(index)
    in_flight, in_flight_files = await study_with_files(index)

    async def still_indexed(files: list[str]) -> set[str]:
        rows = await index.pool.fetch(deletions.STILL_INDEXED, files)
        return {r["file_path"] for r in rows}

    def relative(paths: list[Path]) -> list[str]:
        return [str(p.relative_to(index.root)) for p in paths]

    # The crash came after COMMIT: rows gone, files and manifest still there.
    manifest = await deletions.write(index.root, relative(committed_files), fsync=True)
    await index.pool.execute("DELETE FROM studies WHERE study_instance_uid = $1", committed)
    await index.pool.execute(
        "DELETE FROM instances WHERE sop_instance_uid LIKE $1", committed + ".%"
    )
    assert await deletions.settle(index.root, manifest, still_indexed, fsync=True) == 3
    assert not any(f.exists() for f in committed_files)
    assert not manifest.path.exists()

    # A delete in flight: settling waits for its outcome (here: rolled back).
    async with index.pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        await conn.execute("DELETE FROM instances WHERE sop_instance_uid LIKE $1", in_flight + ".%")
        manifest = await deletions.write(index.root, relative(in_flight_files), fsync=True)
        settling = asyncio.create_task(
            deletions.settle(index.root, manifest, still_indexed, fsync=True)
        )
        await asyncio.sleep(0.5)
        assert not settling.done()
        await transaction.rollback()
    assert await settling == 0
    assert all(f.exists() for f in in_flight_files)
    assert not manifest.path.exists()


# -- roles, audit, spec -----------------------------------------------------------------


READS = ["/studies", "/studies/{study}", "/studies/{study}/series/{series}/instances",
         "/studies/{study}/archive", "/instances/{sop}/file"]  # fmt: skip


async def test_roles(index: Index) -> None:
    study, series = new_uid(), new_uid()
    rec = await index.add(study, series)
    paths = [p.format(study=study, series=series, sop=rec.sop_instance_uid) for p in READS]
    for role, read, delete in [
        ("viewer", 200, 403),
        ("operator", 200, 403),
        ("auditor", 403, 403),
    ]:
        async with as_role(index, role) as api:
            for path in paths:
                assert (await api.call("GET", path)).status_code == read, (role, path)
            assert (await api.call("DELETE", f"/studies/{study}")).status_code == delete
    async with as_role(index, "admin") as api:
        for path in paths:
            assert (await api.call("GET", path)).status_code == 200, path
            assert (await api.conductor.simulate_get(f"/api/v1{path}")).status_code == 401
        anonymous = await api.conductor.simulate_delete(f"/api/v1/studies/{study}")
        assert anonymous.status_code == 401
        assert (await api.call("DELETE", f"/studies/{study}")).status_code == 204


async def test_reads_are_audited(index: Index) -> None:
    study, series = new_uid(), new_uid()
    await index.add(study, series, patient_id="PAT-9")
    async with as_role(index, "viewer") as api:
        await search(api, patient_name="doe", modality="CT", limit="10")
        await api.call("GET", f"/studies/{study}")
        await api.call("GET", f"/studies/{study}/series/{series}/instances")
        user = api.username
    (query,) = await audit_rows(index, "study.search")
    assert (query["actor"], query["event_id"]) == (user, "110112")
    assert yaml.safe_load(query["detail"]) == {
        "filter": {"patient_name": "doe", "modality": "CT"},
        "returned": 1,
    }
    (view,) = await audit_rows(index, "study.view")
    assert (view["target"], view["event_id"]) == (study, "110103")
    assert "PAT-9" in view["detail"]
    (listing,) = await audit_rows(index, "series.view")
    assert (listing["target"], listing["event_id"]) == (series, "110103")
