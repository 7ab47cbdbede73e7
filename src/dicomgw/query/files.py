"""The stored files of a study, a series or an instance (the newest version of
each instance), in a stable order: what retrieval (WADO-RS, and C-GET/C-MOVE
to come) sends."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

STORED = """
SELECT i.sop_instance_uid, i.sop_class_uid, i.transfer_syntax_uid, i.file_path, i.size_bytes,
       se.series_instance_uid
FROM instances i JOIN series se ON se.id = i.series_id JOIN studies st ON st.id = se.study_id
WHERE st.study_instance_uid = $1
  AND ($2::text IS NULL OR se.series_instance_uid = $2)
  AND ($3::text IS NULL OR i.sop_instance_uid = $3)
  AND NOT EXISTS (SELECT 1 FROM instances n
                  WHERE n.sop_instance_uid = i.sop_instance_uid AND n.version > i.version)
ORDER BY se.series_number NULLS LAST, se.id, i.instance_number NULLS LAST, i.id
"""


@dataclass(frozen=True, slots=True)
class StoredInstance:
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    file_path: str
    """Relative to storage.root."""
    size_bytes: int
    series_instance_uid: str


async def stored_files(
    conn: asyncpg.Connection,
    study: str,
    series: str | None = None,
    instance: str | None = None,
) -> list[StoredInstance]:
    rows = await conn.fetch(STORED, study, series, instance)
    return [StoredInstance(*row) for row in rows]
