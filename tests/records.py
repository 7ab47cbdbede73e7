"""Index records for tests that need instances in the index without sending them."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from dicomgw.config import Config, load_config
from dicomgw.index.batcher import IndexBatcher, init_connection
from dicomgw.index.records import InstanceRecord
from dicomgw.ingest.routing import RoutingTable


def record(
    n: int,
    *,
    modality: str = "CT",
    study: str = "1.2.3",
    series: str = "1.2.3.4",
    checksum: str = "crc32c:00000000",
) -> InstanceRecord:
    return InstanceRecord(
        sop_instance_uid=f"1.2.3.4.{n}.{uuid.uuid4().int % 10**12}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        file_path=f"objects/x/{uuid.uuid4().hex}.dcm",
        size_bytes=1000,
        dataset_size=800,
        checksum=checksum,
        source_ae="MODALITY",
        called_ae="DICOMGW",
        source_ip="127.0.0.1",
        association_id="a1",
        received_at=dt.datetime.now(dt.UTC),
        study_instance_uid=study,
        patient_id="P1",
        patient_name="DOE^JANE",
        patient_birth_date=None,
        patient_sex="F",
        study_date=None,
        study_time=None,
        accession_number="ACC1",
        study_description=None,
        referring_physician_name=None,
        series_instance_uid=series,
        modality=modality,
        series_number=1,
        series_description=None,
        instance_number=n,
        number_of_frames=None,
    )


# The documented example's destinations (docs/forwarding.md), for tests to add
# routes (and keys) to.
DESTINATIONS = """
destinations:
  - name: pacs1
    type: dimse
    ae_title: STORESCP
    host: 127.0.0.1
    port: 11113
  - name: cloud
    type: stowrs
    url: http://127.0.0.1:8042/dicom-web
"""
EVERYTHING_TO_PACS1 = """
  - name: everything-to-pacs1
    match: {}
    destinations: [pacs1]
"""


def declared_config(state_dir: Path, yaml_text: str) -> Config:
    """A config from ``yaml_text`` (destinations, routes) with its state in ``state_dir``."""
    path = state_dir / "config.yaml"
    path.write_text(yaml_text)
    return load_config(str(path), env={"DICOMGW_STATE_DIR": str(state_dir)})


async def _same_content(_stored: str, _new: str, _size: int) -> bool:
    return True


@dataclass
class Indexing:
    """The real index writer, routing with the rules in force (so ingest creates the
    forward jobs it would), on its own pool."""

    pool: asyncpg.Pool
    routing: RoutingTable
    batcher: IndexBatcher

    async def index(self, *records: InstanceRecord) -> None:
        await asyncio.gather(*(self.batcher.index(r) for r in records))


@contextlib.asynccontextmanager
async def indexing(dsn: str) -> AsyncIterator[Indexing]:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=6, init=init_connection)
    routing = RoutingTable(pool)
    await routing.start()
    batcher = IndexBatcher(
        pool,
        batch_size=64,
        max_delay_s=0,
        duplicate_policy="reject",
        same_content=_same_content,
        timeout_s=10,
        router=routing.route,
    )
    batcher.start()
    try:
        yield Indexing(pool, routing, batcher)
    finally:
        await batcher.close()
        await routing.close()
        await pool.close()
