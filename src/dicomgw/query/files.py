"""The stored files of a study, a series or an instance (the newest version of
each instance), in a stable order: what retrieval (WADO-RS, C-GET, C-MOVE) sends."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

_SELECT = """
SELECT i.sop_instance_uid, i.sop_class_uid, i.transfer_syntax_uid, i.file_path, i.size_bytes,
       se.series_instance_uid, i.dataset_size, i.id, i.checksum
FROM instances i JOIN series se ON se.id = i.series_id JOIN studies st ON st.id = se.study_id
WHERE {conditions}
  AND NOT EXISTS (SELECT 1 FROM instances n
                  WHERE n.sop_instance_uid = i.sop_instance_uid AND n.version > i.version)
ORDER BY st.id, se.series_number NULLS LAST, se.id, i.instance_number NULLS LAST, i.id
"""
_COLUMNS = {
    "studies": "st.study_instance_uid",
    "series": "se.series_instance_uid",
    "instances": "i.sop_instance_uid",
    "patients": "st.patient_id",
}


@dataclass(frozen=True, slots=True)
class StoredInstance:
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    file_path: str
    """Relative to storage.root."""
    size_bytes: int
    series_instance_uid: str
    dataset_size: int
    """The data set, exactly as received, is the file's last ``dataset_size`` bytes."""
    instance_id: int
    checksum: str
    """``crc32c:xxxxxxxx`` of the data set, recorded at ingest."""


async def stored_files(
    conn: asyncpg.Connection,
    study: str,
    series: str | None = None,
    instance: str | None = None,
) -> list[StoredInstance]:
    return await files_of(
        conn,
        studies=[study],
        series=None if series is None else [series],
        instances=None if instance is None else [instance],
    )


async def files_of(
    conn: asyncpg.Connection,
    *,
    studies: list[str] | None = None,
    series: list[str] | None = None,
    instances: list[str] | None = None,
    patients: list[str] | None = None,
) -> list[StoredInstance]:
    """The files matching every list given (None: any; at least one is needed),
    e.g. a C-GET's unique keys."""
    given = {"studies": studies, "series": series, "instances": instances, "patients": patients}
    # NOTE: only the conditions given, so each shape of query gets its own plan
    # (a generic "$1 IS NULL OR ..." plan would scan).
    keys = [(name, values) for name, values in given.items() if values is not None]
    if not keys:
        raise ValueError("files_of needs at least one list of keys")
    conditions = " AND ".join(
        f"{_COLUMNS[name]} = ANY(${n}::text[])" for n, (name, _) in enumerate(keys, 1)
    )
    rows = await conn.fetch(_SELECT.format(conditions=conditions), *(v for _, v in keys))
    return [StoredInstance(*row) for row in rows]
