"""Index rows for the API load test: synthetic studies, series and instances, written
with COPY straight into the index tables (no DICOM files), plus the dashboard's
``metrics_rollup`` and a viewer account for the load test's users.

    python loadtest/seed.py --dsn postgresql://... [--instances 200000] [--patients N]

The rows are what the index writer (src/dicomgw/index/batcher.py) would have made
for such studies: study and series counters and sizes, sorted modality arrays,
first/last received times, one 'stored' ingest event per instance. Nothing is
written under the storage root, so searching and opening studies work while
instance downloads and ZIP archives of these studies answer 500 (file missing);
the load test does not ask for them. UIDs are random (2.25 + UUID), so seeding
twice adds more studies.

The spread: patients with one or more studies over the last year (dates in
working hours); CT and MR studies of 1-4 series of 20-300 instances, US of 1-2
series of 20-60, CR and DX of 1-2 series of 1-3 images; each modality from its
own source AE and address. The dashboard's hour and day buckets come from these
rows through the gateway's own rollup (dicomgw.stats), for the last 90 days.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import math
import random
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import asyncpg

from dicomgw import stats
from dicomgw.accounts import add_user
from dicomgw.storage.spool import OBJECT_SUFFIX

LOADTEST_USER = "loadtest"
LOADTEST_ROLE = "viewer"
CALLED_AE = "DICOMGW"
CHECKSUM_PREFIX = "crc32c:"  # as the receiver writes it (receiver/store.py)
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
STUDY_SPAN = dt.timedelta(days=365)
ROLLUP_DAYS = 90
PART10_HEADER_BYTES = 332
"""Preamble, prefix and a typical File Meta group: size_bytes - dataset_size."""

SURNAMES = (
    "ADAMS", "ALLEN", "BAKER", "BROWN", "CAMPBELL", "CARTER", "CLARK", "COLLINS", "COOK",
    "DAVIS", "EDWARDS", "EVANS", "FISCHER", "GARCIA", "GREEN", "HALL", "HARRIS", "HILL",
    "JACKSON", "JOHNSON", "JONES", "KELLER", "KING", "LEE", "LEWIS", "LOPEZ", "MARTIN",
    "MARTINEZ", "MILLER", "MITCHELL", "MOORE", "MORGAN", "MUELLER", "MURPHY", "NELSON",
    "NGUYEN", "PARKER", "PEREZ", "PHILLIPS", "ROBERTS", "ROBINSON", "RODRIGUEZ", "ROSSI",
    "SANCHEZ", "SCHMIDT", "SCOTT", "SMITH", "STEWART", "TAYLOR", "THOMAS", "THOMPSON",
    "TURNER", "WAGNER", "WALKER", "WATSON", "WEBER", "WHITE", "WILLIAMS", "WILSON", "WRIGHT",
    "YOUNG", "ZIMMERMANN",
)  # fmt: skip
GIVEN_NAMES = (
    "ALICE", "ANNA", "BEN", "CARLOS", "CLARA", "DANIEL", "DAVID", "ELENA", "EMMA", "FELIX",
    "GRACE", "HANS", "HELEN", "IVAN", "JAMES", "JANE", "JOHN", "JULIA", "KARL", "LAURA",
    "LUCAS", "MARIA", "MARK", "MIA", "NOAH", "OLIVIA", "PAUL", "PETER", "RUTH", "SARAH",
    "SOFIA", "THOMAS", "VICTOR", "ZOE",
)  # fmt: skip
PHYSICIANS = ("HOUSE^GREGORY", "GREY^MEREDITH", "ROSS^DOUG", "CARTER^JOHN", "YANG^CRISTINA")


@dataclass(frozen=True)
class Profile:
    """How studies of one modality look."""

    weight: float
    """Share of studies."""
    series: tuple[int, int]
    instances: tuple[int, int]
    """Instances per series, log-uniform between the two."""
    sop_class_uid: str
    size_bytes: tuple[int, int]
    """Part 10 file size of one instance."""
    transfer_syntax_uid: str
    source_ae: str
    source_ip: str
    studies: tuple[str, ...]
    series_descriptions: tuple[str, ...]


PROFILES = {
    "CT": Profile(
        0.18, (1, 4), (20, 300), "1.2.840.10008.5.1.4.1.1.2", (520_000, 530_000),
        EXPLICIT_VR_LE, "CT_SCANNER1", "10.20.1.11",
        ("CT CHEST W/O CONTRAST", "CT HEAD W/O CONTRAST", "CT ABDOMEN PELVIS W CONTRAST"),
        ("SCOUT", "AXIAL 5MM", "AXIAL 1.25MM", "CORONAL MPR", "SAGITTAL MPR"),
    ),
    "MR": Profile(
        0.12, (1, 4), (20, 300), "1.2.840.10008.5.1.4.1.1.4", (130_000, 140_000),
        EXPLICIT_VR_LE, "MR_3T", "10.20.1.21",
        ("MR BRAIN W/O CONTRAST", "MR KNEE LEFT", "MR LUMBAR SPINE"),
        ("LOCALIZER", "T1 SAG", "T2 AX", "FLAIR AX", "DWI", "T1 POST AX"),
    ),
    "US": Profile(
        0.15, (1, 2), (20, 60), "1.2.840.10008.5.1.4.1.1.6.1", (600_000, 1_500_000),
        JPEG_LOSSLESS_SV1, "US_ROOM1", "10.20.2.31",
        ("US ABDOMEN COMPLETE", "US THYROID", "US OBSTETRIC"),
        ("B-MODE", "DOPPLER"),
    ),
    "CR": Profile(
        0.30, (1, 2), (1, 3), "1.2.840.10008.5.1.4.1.1.1", (8_000_000, 12_000_000),
        EXPLICIT_VR_LE, "CR_ROOM2", "10.20.2.41",
        ("CHEST PA AND LATERAL", "KNEE 2 VIEWS", "PELVIS AP"),
        ("PA", "LATERAL", "AP"),
    ),
    "DX": Profile(
        0.25, (1, 2), (1, 3), "1.2.840.10008.5.1.4.1.1.1.1", (5_000_000, 10_000_000),
        EXPLICIT_VR_LE, "DX_ROOM3", "10.20.2.51",
        ("HAND 3 VIEWS", "FOOT 3 VIEWS", "CHEST PA"),
        ("PA", "OBLIQUE", "LATERAL"),
    ),
}  # fmt: skip
MODALITIES = tuple(PROFILES)

STUDY_COLUMNS = (
    "study_instance_uid", "patient_id", "patient_name", "patient_birth_date", "patient_sex",
    "study_date", "study_time", "accession_number", "study_description",
    "referring_physician_name", "modalities", "num_series", "num_instances", "size_bytes",
    "first_received_at", "last_received_at",
)  # fmt: skip
SERIES_COLUMNS = (
    "study_id", "series_instance_uid", "modality", "series_number", "series_description",
    "num_instances", "first_received_at", "last_received_at",
)  # fmt: skip
INSTANCE_COLUMNS = (
    "series_id", "sop_instance_uid", "version", "sop_class_uid", "instance_number",
    "number_of_frames", "transfer_syntax_uid", "file_path", "size_bytes", "dataset_size",
    "checksum", "source_ae", "called_ae", "source_ip", "received_at",
)  # fmt: skip

# One 'stored' event per instance, as the index writer makes them, from the rows.
INGEST_EVENTS = """
INSERT INTO ingest_events (event, instance_id, sop_instance_uid, dimse_status, source_ae,
                           called_ae, source_ip, association_id, size_bytes, at)
SELECT 'stored', i.id, i.sop_instance_uid, 0, i.source_ae, i.called_ae, i.source_ip,
       a.association_id, i.size_bytes, i.received_at
FROM instances i JOIN unnest($1::bigint[], $2::text[]) AS a(series_id, association_id)
    USING (series_id)
"""


def uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


@dataclass
class Patient:
    patient_id: str
    name: str
    birth_date: str
    sex: str


@dataclass
class Series:
    uid: str
    modality: str
    number: int
    description: str
    instances: list[tuple[object, ...]]
    """Instance rows without their series id (INSTANCE_COLUMNS[1:])."""
    size_bytes: int
    first: dt.datetime
    last: dt.datetime


@dataclass
class Study:
    uid: str
    patient: Patient
    date: dt.datetime
    accession: str
    description: str
    physician: str
    association_id: str
    series: list[Series] = field(default_factory=list)

    def row(self) -> tuple[object, ...]:
        p = self.patient
        return (
            self.uid, p.patient_id, p.name, p.birth_date, p.sex, self.date.date(),
            self.date.strftime("%H%M%S"), self.accession, self.description, self.physician,
            sorted({s.modality for s in self.series}), len(self.series),
            sum(len(s.instances) for s in self.series), sum(s.size_bytes for s in self.series),
            min(s.first for s in self.series), max(s.last for s in self.series),
        )  # fmt: skip


def _log_uniform(rng: random.Random, low: int, high: int) -> int:
    return round(math.exp(rng.uniform(math.log(low), math.log(high))))


def _patients(rng: random.Random, count: int) -> list[Patient]:
    return [
        Patient(
            f"P{n:07d}",
            f"{rng.choice(SURNAMES)}^{rng.choice(GIVEN_NAMES)}",
            f"{rng.randint(1930, 2020)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}",
            rng.choice("MMMFFFO"),
        )
        for n in range(1, count + 1)
    ]


def _study(rng: random.Random, patient: Patient, now: dt.datetime, number: int) -> Study:
    modality = rng.choices(MODALITIES, [p.weight for p in PROFILES.values()])[0]
    profile = PROFILES[modality]
    day = now - dt.timedelta(days=rng.uniform(0, STUDY_SPAN.days))
    # Working hours, UTC; received while the scanner is still busy with the study.
    start = day.replace(hour=rng.randint(7, 18), minute=rng.randint(0, 59), second=0)
    start = min(start, now - dt.timedelta(minutes=30))
    study = Study(
        uid(), patient, start, f"A{number:08d}", rng.choice(profile.studies),
        rng.choice(PHYSICIANS), f"a{number}",
    )  # fmt: skip
    at = start + dt.timedelta(minutes=rng.uniform(1, 10))
    for series_number in range(1, rng.randint(*profile.series) + 1):
        count = _log_uniform(rng, *profile.instances)
        rows: list[tuple[object, ...]] = []
        size_bytes = 0
        for instance_number in range(1, count + 1):
            at += dt.timedelta(milliseconds=rng.uniform(20, 400))
            if instance_number == 1:
                first = at
            size = rng.randint(*profile.size_bytes)
            size_bytes += size
            key = uuid.uuid4().hex
            path = f"objects/{at:%Y/%m/%d}/{key[:2]}/{key}{OBJECT_SUFFIX}"
            rows.append(
                (
                    uid(), 1, profile.sop_class_uid, instance_number, None,
                    profile.transfer_syntax_uid,
                    path, size, size - PART10_HEADER_BYTES,
                    f"{CHECKSUM_PREFIX}{rng.getrandbits(32):08x}", profile.source_ae, CALLED_AE,
                    profile.source_ip, at,
                )
            )  # fmt: skip
        description = profile.series_descriptions[
            (series_number - 1) % len(profile.series_descriptions)
        ]
        study.series.append(
            Series(uid(), modality, series_number, description, rows, size_bytes, first, at)
        )
        at += dt.timedelta(seconds=rng.uniform(5, 60))
    return study


def generate(
    rng: random.Random, instances: int, patients: int, now: dt.datetime
) -> Iterator[Study]:
    """Studies until ``instances`` are reached: one for each patient first, then
    more for patients already seen (follow-ups)."""
    people = _patients(rng, patients)
    total = 0
    number = 0
    while total < instances:
        number += 1
        patient = people[number - 1] if number <= len(people) else rng.choice(people)
        study = _study(rng, patient, now, number)
        total += sum(len(s.instances) for s in study.series)
        yield study


@dataclass(frozen=True)
class Summary:
    patients: int
    studies: int
    series: int
    instances: int
    size_bytes: int
    seconds: float


async def _ids(conn: asyncpg.Connection, table: str, column: str, uids: list[str]) -> list[int]:
    rows = await conn.fetch(f"SELECT id, {column} FROM {table} WHERE {column} = ANY($1)", uids)
    ids = {r[column]: r["id"] for r in rows}
    return [ids[u] for u in uids]


async def write(conn: asyncpg.Connection, studies: list[Study]) -> None:
    """The studies' index rows and ingest events, in the caller's transaction."""
    await conn.copy_records_to_table(
        "studies", records=[s.row() for s in studies], columns=STUDY_COLUMNS
    )
    study_ids = await _ids(conn, "studies", "study_instance_uid", [s.uid for s in studies])
    series = [
        (study_id, st, s)
        for study_id, st in zip(study_ids, studies, strict=True)
        for s in st.series
    ]
    await conn.copy_records_to_table(
        "series",
        records=[
            (study_id, s.uid, s.modality, s.number, s.description, len(s.instances), s.first,
             s.last)
            for study_id, _, s in series
        ],
        columns=SERIES_COLUMNS,
    )  # fmt: skip
    series_ids = await _ids(conn, "series", "series_instance_uid", [s.uid for _, _, s in series])
    await conn.copy_records_to_table(
        "instances",
        records=(
            (series_id, *row)
            for series_id, (_, _, s) in zip(series_ids, series, strict=True)
            for row in s.instances
        ),
        columns=INSTANCE_COLUMNS,
    )
    await conn.execute(INGEST_EVENTS, series_ids, [st.association_id for _, st, _ in series])


async def seed(
    dsn: str,
    *,
    instances: int,
    patients: int | None = None,
    seed: int = 1,
    password: str | None = None,
) -> Summary:
    """Seed the database at ``dsn`` (schema already migrated) and refresh the
    dashboard's rollup; with ``password``, also create the viewer account
    ``loadtest`` unless it exists."""
    started = time.perf_counter()
    rng = random.Random(seed)
    patients = patients or max(1, instances // 100)
    now = dt.datetime.now(dt.UTC)
    studies = list(generate(rng, instances, patients, now))
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await write(conn, studies)
        await conn.execute("ANALYZE studies, series, instances, ingest_events")
        await stats.rollup(conn, hours=ROLLUP_DAYS * 24)
        if password is not None and not await conn.fetchval(
            "SELECT EXISTS (SELECT FROM users WHERE lower(username) = $1)", LOADTEST_USER
        ):
            await add_user(conn, LOADTEST_USER, LOADTEST_ROLE, password, actor="loadtest")
    finally:
        await conn.close()
    series = [s for st in studies for s in st.series]
    return Summary(
        patients=len({st.patient.patient_id for st in studies}),
        studies=len(studies),
        series=len(series),
        instances=sum(len(s.instances) for s in series),
        size_bytes=sum(s.size_bytes for s in series),
        seconds=time.perf_counter() - started,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", required=True, help="the gateway's database (migrated)")
    parser.add_argument("--instances", type=int, default=200_000)
    parser.add_argument("--patients", type=int, help="default: instances / 100")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the spread")
    parser.add_argument("--password", help="create the viewer 'loadtest' with this password")
    args = parser.parse_args()
    summary = asyncio.run(
        seed(
            args.dsn,
            instances=args.instances,
            patients=args.patients,
            seed=args.seed,
            password=args.password,
        )
    )
    sys.stdout.write(
        f"{summary.instances} instances, {summary.series} series, {summary.studies} studies, "
        f"{summary.patients} patients, {summary.size_bytes / 1e9:.1f} GB (not on disk) "
        f"in {summary.seconds:.1f} s\n"
    )


if __name__ == "__main__":
    main()
