"""The audit log: who did what, when, from where, with what outcome.

Rows are append-only (a trigger refuses UPDATE, DELETE and TRUNCATE) and
hash-chained by the database itself (migration 0003): each row's ``hash`` is
SHA-256 of the previous row's hash and its own content, so :func:`verify` finds
any row that was changed, removed or slipped in. Event ids are the DICOM Audit
Trail codes of PS3.15 A.5 / DCID 400 where one applies.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
import orjson

# DICOM PS3.15 A.5.3 / DCM event ids (DCID 400 "Audit Event ID").
USER_AUTHENTICATION = "110114"
SECURITY_ALERT = "110113"
STUDY_DELETED = "110105"
INSTANCES_ACCESSED = "110103"
INSTANCES_TRANSFERRED = "110104"
QUERY = "110112"
APPLICATION_ACTIVITY = "110100"
ASSOCIATION_REJECTED = SECURITY_ALERT

INSERT = """
INSERT INTO audit_log (actor, action, target, detail, source_ip, request_id, event_id, outcome)
VALUES ($1, $2, $3, $4::jsonb, $5::inet, $6, $7, $8)
"""


async def record(
    conn: asyncpg.Connection,
    *,
    actor: str,
    action: str,
    target: str | None = None,
    detail: dict[str, object] | None = None,
    source_ip: str | None = None,
    request_id: str | None = None,
    event_id: str | None = None,
    outcome: str = "success",
) -> None:
    await conn.execute(
        INSERT,
        actor,
        action,
        target,
        orjson.dumps(detail or {}).decode(),
        source_ip,
        request_id,
        event_id,
        outcome,
    )


@dataclass(frozen=True, slots=True)
class Verification:
    rows: int
    first_bad_id: int | None = None
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.first_bad_id is None


VERIFY = """
SELECT id, prev_hash, hash, sha256(prev_hash || audit_log_canonical(a)) AS expected
FROM audit_log a ORDER BY id
"""


async def verify(conn: asyncpg.Connection) -> Verification:
    """Walk the chain from the first row; report the first row that breaks it."""
    previous = b""
    rows = 0
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        async for row in conn.cursor(VERIFY, prefetch=1000):
            rows += 1
            if row["prev_hash"] is None or bytes(row["prev_hash"]) != previous:
                return Verification(
                    rows,
                    row["id"],
                    "it does not follow the row before it (a row was removed or inserted)",
                )
            if row["hash"] is None or bytes(row["hash"]) != bytes(row["expected"]):
                return Verification(rows, row["id"], "its content was changed")
            previous = bytes(row["hash"])
    return Verification(rows)
