"""The dicomgw side of the forwarding benchmark; runs under the dicomgw Python.

``prepare``: the StoredInstance fields of every file of a set (data set offset
from the Part 10 header, CRC-32C of the data set), once, outside any timing.

``send``: dicomgw's DIMSE sender as a process of its own, so its CPU is
measured alone: N DimseSender (N associations) on one uvloop, each a
contiguous share of the items, ``--batch`` items per send(). Timed from the
harness's go (see senders.py).

``jobs``: after an end-to-end run, wait until every forward job of a running
``dicom-gw serve`` is done, then print the receive-to-delivered latencies
(instances.received_at to forward_jobs.finished_at) as one JSON line.

    python bench/forward_send.py prepare <set dir> <items.json>
    python bench/forward_send.py send --items items.json --port 11113 --ae SINK [--parallel 4]
    python bench/forward_send.py jobs --pg-dir <state>/pg --expect 1000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import senders


def cmd_prepare(args: argparse.Namespace) -> int:
    from dicomgw.send.delivery import dataset_checksum
    from dicomgw.storage.part10 import parse_file_meta

    items = []
    for path in sorted(p for p in args.set_dir.iterdir() if p.suffix == ".dcm"):
        with path.open("rb") as f:
            head = f.read(65536)
        meta = parse_file_meta(head)
        size = path.stat().st_size
        dataset_size = size - meta.dataset_offset
        items.append(
            {
                "path": str(path.resolve()),
                "size": size,
                "sop_class_uid": meta.media_storage_sop_class_uid,
                "sop_instance_uid": meta.media_storage_sop_instance_uid,
                "transfer_syntax_uid": meta.transfer_syntax_uid,
                "dataset_size": dataset_size,
                "checksum": dataset_checksum(path, dataset_size),
            }
        )
    args.out.write_text(json.dumps(items))
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    import uvloop

    from dicomgw.config import DimseDestination
    from dicomgw.send.delivery import StoredInstance
    from dicomgw.send.dimse import DimseSender

    rows = json.loads(args.items.read_text())
    items = [
        StoredInstance(
            job_id=n,
            instance_id=n,
            sop_class_uid=row["sop_class_uid"],
            sop_instance_uid=row["sop_instance_uid"],
            transfer_syntax_uid=row["transfer_syntax_uid"],
            path=Path(row["path"]),
            dataset_size=row["dataset_size"],
            checksum=row["checksum"],
        )
        for n, row in enumerate(rows, 1)
    ]
    parallel = min(args.parallel, len(items))
    shares = [
        items[i * len(items) // parallel : (i + 1) * len(items) // parallel]
        for i in range(parallel)
    ]
    destination = DimseDestination(
        name="sink",
        ae_title=args.ae,
        host=args.host,
        port=args.port,
        max_pdu=args.pdu,
        max_parallel=parallel,
    )

    async def send_share(share: list[StoredInstance]) -> tuple[int, int, str]:
        sender = DimseSender(destination)
        delivered, failed, first_error = 0, 0, ""
        try:
            for k in range(0, len(share), args.batch):
                for outcome in await sender.send(share[k : k + args.batch]):
                    if outcome.kind == "delivered":
                        delivered += 1
                    else:
                        failed += 1
                        first_error = first_error or (
                            f"{outcome.kind} (status {outcome.status}): {outcome.message}"
                        )
        finally:
            await sender.close()
        return delivered, failed, first_error

    async def send_all() -> list[tuple[int, int, str]]:
        return await asyncio.gather(*(send_share(share) for share in shares))

    cpu_at_go = senders.wait_for_go()
    results = uvloop.run(send_all())
    senders.report(
        cpu_at_go,
        delivered=sum(r[0] for r in results),
        failed=sum(r[1] for r in results),
        first_error=next((r[2] for r in results if r[2]), ""),
    )
    return 0


_PROGRESS = """
SELECT count(*) FILTER (WHERE state = 'done') AS done,
       count(*) FILTER (WHERE state IN ('dead', 'cancelled')) AS dead,
       count(*) AS total,
       (SELECT last_error FROM forward_jobs WHERE last_error IS NOT NULL LIMIT 1) AS error
FROM forward_jobs
"""

# NOTE: received_at is the receiver's clock when the data set was stored;
# finished_at is now() of the transaction that recorded the outcome.
_LATENCY = """
WITH d AS (
    SELECT extract(epoch FROM j.finished_at - i.received_at)::float8 AS latency_s,
           i.received_at, j.finished_at, j.attempts
    FROM forward_jobs j JOIN instances i ON i.id = j.instance_id
    WHERE j.state = 'done'
)
SELECT count(*) AS instances,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_s) AS p50_s,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_s) AS p99_s,
       max(latency_s) AS max_s,
       extract(epoch FROM max(finished_at) - min(received_at))::float8 AS span_s,
       extract(epoch FROM max(received_at) - min(received_at))::float8 AS receive_span_s,
       count(*) FILTER (WHERE attempts > 1) AS retried
FROM d
"""


def cmd_jobs(args: argparse.Namespace) -> int:
    import asyncpg

    from dicomgw.db.embedded import PORT, PostmasterInfo

    info = PostmasterInfo.read(args.pg_dir)
    if info is None:
        raise SystemExit(f"no running PostgreSQL in {args.pg_dir}")
    dsn = f"postgresql://postgres@/postgres?host={info.socket_dir}&port={PORT}"

    async def wait() -> dict[str, object]:
        conn = await asyncpg.connect(dsn)
        try:
            deadline = time.monotonic() + args.timeout
            while True:
                row = await conn.fetchrow(_PROGRESS)
                if row["dead"]:
                    return {"error": f"{row['dead']} jobs dead or cancelled: {row['error']}"}
                if row["done"] >= args.expect:
                    break
                if time.monotonic() > deadline:
                    return {
                        "error": f"{row['done']} of {args.expect} jobs done after "
                        f"{args.timeout:.0f} s ({row['total']} queued); last error: {row['error']}"
                    }
                await asyncio.sleep(args.poll)
            done_at = time.monotonic()
            stats = dict(await conn.fetchrow(_LATENCY))
            return stats | {"done_monotonic": done_at}
        finally:
            await conn.close()

    sys.stdout.write(json.dumps(asyncio.run(wait())) + "\n")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    prepare = sub.add_parser("prepare", help="item list of a set, with checksums")
    prepare.add_argument("set_dir", type=Path)
    prepare.add_argument("out", type=Path)
    prepare.set_defaults(handler=cmd_prepare)
    send = sub.add_parser("send", help="send the items with DimseSender")
    send.add_argument("--items", type=Path, required=True)
    send.add_argument("--host", default="127.0.0.1")
    send.add_argument("--port", type=int, required=True)
    send.add_argument("--ae", required=True, help="called AE title")
    send.add_argument("--pdu", type=int, default=131072, help="max receive PDU proposed")
    send.add_argument("--parallel", type=int, default=1, help="associations")
    send.add_argument("--batch", type=int, default=32, help="items per send()")
    send.set_defaults(handler=cmd_send)
    jobs = sub.add_parser("jobs", help="wait for the forward jobs, print latencies")
    jobs.add_argument("--pg-dir", type=Path, required=True)
    jobs.add_argument("--expect", type=int, required=True)
    jobs.add_argument("--timeout", type=float, default=600.0)
    jobs.add_argument("--poll", type=float, default=0.1)
    jobs.set_defaults(handler=cmd_jobs)
    args = p.parse_args()
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
