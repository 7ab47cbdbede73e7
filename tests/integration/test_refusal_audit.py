"""Refused peers reach the audit log: the first refusal of a kind from a peer
at once, its repeats counted into the next row after the window."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import asyncpg
from pynetdicom import AE

from dicomgw.db import migrate
from dicomgw.receiver.refusals import RefusalAuditor
from tests.gateway import Gateway

VERIFICATION = "1.2.840.10008.1.1"
ROWS = (
    "SELECT actor, action, target, detail, host(source_ip) AS ip, event_id, outcome "
    "FROM audit_log WHERE action LIKE 'dimse.%' ORDER BY id"
)


async def test_repeats_are_counted_not_written(empty_db: str) -> None:
    await asyncio.to_thread(migrate.upgrade, empty_db)
    pool = await asyncpg.create_pool(empty_db, min_size=1, max_size=2)
    try:
        auditor = RefusalAuditor(pool, window_s=0.3)
        wrong = {"calling_ae": "CT1", "called_ae": "NOTME", "reason": "called AE title"}
        for _ in range(5):
            auditor("association", "10.1.2.3", wrong)
        auditor("association", "10.1.2.4", wrong)  # another peer: its own row
        await asyncio.sleep(0.35)
        auditor("association", "10.1.2.3", wrong)
        auditor("tls", "10.1.2.3", {"kind": "peer-certificate", "problem": "unknown CA"})
        await auditor.close()
        rows = await pool.fetch(ROWS)
    finally:
        await pool.close()
    # (written concurrently: in any order)
    details = sorted(
        (r["ip"], r["action"], json.loads(r["detail"]).get("repeats_before") or "") for r in rows
    )
    assert details == sorted(
        [
            ("10.1.2.3", "dimse.association.refused", ""),
            ("10.1.2.4", "dimse.association.refused", ""),
            ("10.1.2.3", "dimse.association.refused", "4"),
            ("10.1.2.3", "dimse.tls.refused", ""),
        ]
    )
    first = rows[0]
    assert (first["actor"], first["target"], first["event_id"], first["outcome"]) == (
        "CT1",
        "NOTME",
        "110113",
        "failure",
    )


def test_rejected_association_is_audited(gateway_factory: Callable[..., Gateway]) -> None:
    gateway = gateway_factory()
    gateway.start()
    ae = AE(ae_title="WRONGSCU")
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", gateway.dimse_port, ae_title="NOTDICOMGW")
    assert not assoc.is_established
    assert gateway.stop() == 0  # the row is written before the receiver stops

    async def rows() -> list[asyncpg.Record]:
        assert gateway.dsn is not None
        conn = await asyncpg.connect(gateway.dsn)
        try:
            return await conn.fetch(ROWS)
        finally:
            await conn.close()

    (row,) = asyncio.run(rows())
    assert (row["actor"], row["action"], row["target"], row["ip"]) == (
        "WRONGSCU",
        "dimse.association.refused",
        "NOTDICOMGW",
        "127.0.0.1",
    )
    assert "called AE title" in json.loads(row["detail"])["reason"]
