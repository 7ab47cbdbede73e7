"""C-FIND benchmark: dicom-gw beside Orthanc, answering the same study-level
queries from one pynetdicom SCU, in one run.

1. Both receive the same small set over DIMSE (``--studies`` studies of
   ``--per-study`` tiny instances, DCMTK ``storescu``), and answer the queries.
2. dicom-gw's index is then grown to ``--big-instances`` by SQL (synthetic rows
   of the same shape; no files, C-FIND reads only the index) and answers again.
   Orthanc is not grown: at ~300 instances/s its ingest of a million instances
   would take an hour; its figures are for the small set.

Each query runs ``--repeat`` times on one association; the table gives the time
to the first pending response and to the final one (p50/p95, ms).

    .venv/bin/python bench/query_bench.py                   # about 3 minutes
    .venv/bin/python bench/query_bench.py --big-instances 0 # small set only
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND
from receivers import DCMTK_ENV, HOST, DicomGw, Orthanc, Running, start, stop, wait_ready

from dicomgw.db.embedded import EmbeddedPostgres

CT = "1.2.840.10008.5.1.4.1.1.2"
SURNAMES = ["SMITH", "JONES", "MULLER", "GARCIA", "ROSSI", "DUBOIS", "NOVAK", "SATO"]
GIVEN = ["ANNA", "JAN", "LI", "OMAR", "EVA", "PAUL", "MARIA", "IVAN"]


class OrthancFind(Orthanc):
    """Orthanc answering C-FIND from any AE (its default: only from DicomModalities)."""

    def command(self, workdir: Path, port: int, pdu: int) -> tuple[list[str], dict[str, str]]:
        argv, env = super().command(workdir, port, pdu)
        path = Path(argv[1])
        config = json.loads(path.read_text())
        config["DicomAlwaysAllowFind"] = True
        config["LimitFindResults"] = 0
        path.write_text(json.dumps(config, indent=2))
        return argv, env


def small_set(dest: Path, studies: int, per_study: int) -> list[Path]:
    """Tiny CT instances (8x8 pixels), names and dates spread like a clinic's."""
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(studies):
        study, series = generate_uid(), generate_uid()
        for n in range(per_study):
            ds = Dataset()
            ds.SOPClassUID, ds.SOPInstanceUID = CT, generate_uid()
            ds.PatientName = f"{SURNAMES[s % 8]}{s:05d}^{GIVEN[(s // 8) % 8]}"
            ds.PatientID = f"PID{s % (studies // 2 or 1):06d}"
            ds.StudyDate = f"{2015 + s % 10}{1 + (s // 10) % 12:02d}{1 + s % 28:02d}"
            ds.StudyTime = "101500"
            ds.AccessionNumber = f"ACC{s:07d}"
            ds.Modality = "CT"
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.SeriesNumber, ds.InstanceNumber = 1, n + 1
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.Rows = ds.Columns = 8
            ds.BitsAllocated = ds.BitsStored = 16
            ds.HighBit, ds.PixelRepresentation = 15, 0
            ds.PixelData = bytes(128)
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta.MediaStorageSOPClassUID = CT
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            path = dest / f"{s:05d}-{n}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths


GROW = """
WITH s AS (
  INSERT INTO studies (study_instance_uid, patient_id, patient_name, patient_birth_date,
                       patient_sex, study_date, study_time, accession_number, modalities,
                       num_series, num_instances)
  SELECT '2.25.' || (10000000 + g), 'SYN' || lpad((g % ($1 / 2))::text, 7, '0'),
         upper(substr(md5(g::text), 1, 8)) || '^' || (ARRAY['ANNA','JAN','LI','OMAR'])[1 + g % 4],
         '19700101', 'O', date '2010-01-01' + (g % 5000), '101500',
         'SYN' || lpad(g::text, 8, '0'), ARRAY['CT'], 1, $2
  FROM generate_series(1, $1) g
  RETURNING id, study_instance_uid
), se AS (
  INSERT INTO series (study_id, series_instance_uid, modality, series_number, num_instances)
  SELECT id, study_instance_uid || '.1', 'CT', 1, $2 FROM s
  RETURNING id, series_instance_uid
)
INSERT INTO instances (series_id, sop_instance_uid, sop_class_uid, instance_number,
                       transfer_syntax_uid, file_path, size_bytes, dataset_size, checksum)
SELECT se.id, se.series_instance_uid || '.' || n, '1.2.840.10008.5.1.4.1.1.2', n,
       '1.2.840.10008.1.2.1', 'synthetic/' || se.id || '/' || n, 1000, 800, 'crc32c:00000000'
FROM se, generate_series(1, $2) n
"""


async def grow(dsn: str, instances: int, per_study: int) -> float:
    studies = instances // per_study
    conn = await asyncpg.connect(dsn)
    try:
        started = time.monotonic()
        await conn.execute(GROW, studies, per_study)
        await conn.execute("ANALYZE")
        return time.monotonic() - started
    finally:
        await conn.close()


QUERIES: dict[str, Callable[[], Dataset]] = {}


def query(name: str, **keys: str) -> None:
    def make() -> Dataset:
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.StudyInstanceUID = ""
        ds.PatientName = ""
        ds.StudyDate = ""
        ds.NumberOfStudyRelatedInstances = ""
        for keyword, value in keys.items():
            setattr(ds, keyword, value)
        return ds

    QUERIES[name] = make


query("PatientID exact", PatientID="PID000042")
query("AccessionNumber exact", AccessionNumber="ACC0000042")
query("StudyDate, one month", StudyDate="20160301-20160331")
query("PatientName=*MULLER0*", PatientName="*MULLER0*")
query("PatientName=*ab*", PatientName="*AB*")


def measure(
    port: int, ae_title: str, repeat: int
) -> dict[str, tuple[list[float], list[float], int]]:
    """Per query: times to the first pending response and to the final one (ms), matches."""
    ae = AE(ae_title="BENCH")
    ae.add_requested_context(FIND)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
    assoc = ae.associate(
        HOST, port, ae_title=ae_title, evt_handlers=[(evt.EVT_CONN_OPEN, _no_delay)]
    )
    if not assoc.is_established:
        raise SystemExit(f"{ae_title}: association not established")
    out = {}
    try:
        for name, make in QUERIES.items():
            first, total, matches = [], [], 0
            for _ in range(repeat):
                identifier = make()
                started = time.perf_counter()
                got = None
                matches = 0
                for status, _ in assoc.send_c_find(identifier, FIND):
                    if got is None:
                        got = time.perf_counter()
                    if status and status.Status in (0xFF00, 0xFF01):
                        matches += 1
                    elif status and status.Status != 0:
                        raise SystemExit(f"{ae_title} {name}: status 0x{status.Status:04X}")
                ended = time.perf_counter()
                first.append(((got or ended) - started) * 1000)
                total.append((ended - started) * 1000)
            out[name] = (first, total, matches)
    finally:
        assoc.release()
    return out


def _no_delay(event: Any) -> None:
    # NOTE: pynetdicom writes the C-FIND-RQ command and identifier as two PDUs: with
    # Nagle on, the second waits ~40 ms for the peer's delayed ACK.
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def table(rows: list[tuple[str, str, dict[str, tuple[list[float], list[float], int]]]]) -> str:
    lines = [
        "| server | index | query | matches | first p50 | first p95 | all p50 | all p95 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for server, index, results in rows:
        for name, (first, total, matches) in results.items():
            lines.append(
                f"| {server} | {index} | {name} | {matches} | {pct(first, 50):.1f} | "
                f"{pct(first, 95):.1f} | {pct(total, 50):.1f} | {pct(total, 95):.1f} |"
            )
    return "\n".join(lines)


def storescu(port: int, ae_title: str, files: Path) -> None:
    done = subprocess.run(
        ["storescu", "-aet", "BENCH", "-aec", ae_title, "+sd", "-xs", HOST, str(port), str(files)],
        env=DCMTK_ENV, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"storescu to {ae_title} failed: {done.stderr[-500:]}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--studies", type=int, default=1000)
    p.add_argument("--per-study", type=int, default=2)
    p.add_argument("--big-instances", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=50)
    p.add_argument(
        "--dicomgw-python", default=str(Path(__file__).resolve().parent.parent / ".venv/bin/python")
    )
    args = p.parse_args()
    if shutil.which("Orthanc") is None or shutil.which("storescu") is None:
        raise SystemExit("Orthanc and DCMTK are needed: sudo bench/setup.sh")
    work = Path(tempfile.mkdtemp(prefix="dicomgw-query-bench-"))
    work.chmod(0o755)
    files = work / "set"
    small_set(files, args.studies, args.per_study)
    small = f"{args.studies * args.per_study:,} instances"
    rows = []
    orthanc_dir, gw_dir = work / "orthanc", work / "dicomgw"
    for d in (orthanc_dir, gw_dir):
        d.mkdir(mode=0o755)
    gateway = DicomGw(args.dicomgw_python, env={"DICOMGW_DIMSE__QUERY_AE_TITLES": "[BENCH]"})
    runs: list[Running] = []
    try:
        for receiver, workdir in ((OrthancFind(), orthanc_dir), (gateway, gw_dir)):
            run = start(receiver, workdir, 131072)
            runs.append(run)
            wait_ready(run)
            storescu(run.port, receiver.ae, files)
        # Alternate the servers so that drift in the machine's speed hits both.
        for run in runs:
            print(f"measuring {run.receiver.name} ({small})", file=sys.stderr)
            rows.append((run.receiver.name, small, measure(run.port, run.receiver.ae, args.repeat)))
        if args.big_instances:
            dsn = EmbeddedPostgres(gw_dir / "pg", run_as="dicomgw").start(adopt=True)
            took = asyncio.run(grow(dsn, args.big_instances, 10))
            print(
                f"grew dicom-gw's index by {args.big_instances:,} in {took:.0f} s", file=sys.stderr
            )
            big = f"{args.big_instances + args.studies * args.per_study:,} instances"
            rows.append(("dicomgw", big, measure(runs[1].port, "DICOMGW", args.repeat)))
            rows.append(("orthanc", small, measure(runs[0].port, "ORTHANC", args.repeat)))
    finally:
        for run in runs:
            stop(run, run.receiver.groups(run))
    print(table(rows))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
