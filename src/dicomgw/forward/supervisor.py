"""The forwarder: per destination, workers that claim jobs, send, and record outcomes.

Each destination has its own workers (``max_parallel``), its own sender per
worker (so an association carries many C-STOREs) and its own circuit breaker:
a destination that is down or slow only ever occupies its own workers, never
another destination's. Workers sleep until a NOTIFY on the jobs channel names
their destination or their next job falls due: an idle forwarder does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Protocol

import asyncpg

from dicomgw.config import Destination, DimseDestination, ForwarderConfig
from dicomgw.db import channels
from dicomgw.queue import jobs
from dicomgw.queue.jobs import ClaimedJob, RetryPolicy
from dicomgw.send.delivery import UNOBSERVED, Outcome, Progress, StoredInstance
from dicomgw.send.destinations import DestinationRow, load_destinations
from dicomgw.send.secrets import SecretBox

log = logging.getLogger(__name__)

PURGE_INTERVAL_S = 3600.0
PURGE_BATCH = 5000

_DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


class Sender(Protocol):
    async def send(
        self, items: Sequence[StoredInstance], progress: Progress = UNOBSERVED
    ) -> list[Outcome]: ...
    async def echo(self) -> float: ...
    async def close(self) -> None: ...


def make_sender(destination: Destination) -> Sender:
    if isinstance(destination, DimseDestination):
        from dicomgw.send.dimse import DimseSender

        return DimseSender(destination)
    from dicomgw.send.stowrs import StowSender

    return StowSender(destination)


SenderFactory = Callable[[Destination], Sender]
SendObserver = Callable[[str, float], None]
"""Told of each batch sent: (destination name, seconds the sender took)."""


def _unobserved(destination: str, seconds: float) -> None:
    pass


def worker_identity() -> str:
    """host/pid/nonce: who holds a lease, and whether that process still lives."""
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"


def _dead_owner(owner: str, host: str) -> bool:
    """A lease of a process on this host that no longer runs."""
    parts = owner.split("/")
    if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class LeasedBatch:
    """A worker's claimed jobs while they are sent (the sender's :class:`Progress`):
    the outcomes not yet recorded, the jobs not yet finished, and those whose
    lease was lost (they are withdrawn: another worker has them)."""

    def __init__(self, claimed: Sequence[ClaimedJob]) -> None:
        self.jobs = {job.job_id: job for job in claimed}
        self.unfinished = set(self.jobs)
        """Jobs whose outcome is not yet written: their leases are renewed."""
        self.lost: set[int] = set()
        self.unrecorded: list[tuple[ClaimedJob, Outcome]] = []
        self.sent = False
        """The sender has returned: every outcome is known."""
        self.changed = asyncio.Event()
        self._answered: set[int] = set()

    def wanted(self, item: StoredInstance) -> bool:
        return item.job_id not in self.lost

    def answered(self, item: StoredInstance, outcome: Outcome) -> None:
        # NOTE: once per job; the sender's returned list repeats what it reported.
        if outcome.kind == "withdrawn" or item.job_id in self._answered:
            return
        self._answered.add(item.job_id)
        self.unrecorded.append((self.jobs[item.job_id], outcome))
        self.changed.set()

    def done(self) -> None:
        self.sent = True
        self.changed.set()


class Circuit:
    """Consecutive transient failures open it; a successful probe closes it."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.failures = 0
        self.open = False

    def record(self, outcomes: Sequence[Outcome]) -> bool:
        """Count a batch; True when this batch opened the circuit."""
        if any(o.kind == "delivered" for o in outcomes):
            self.failures = 0
            return False
        # NOTE: only failures where the peer never answered count: a peer that
        # refuses one instance is up, and its other instances must still go.
        if outcomes and all(o.kind == "transient" and o.status is None for o in outcomes):
            self.failures += 1
            if not self.open and self.failures >= self.threshold:
                self.open = True
                return True
        return False


class DestinationRunner:
    def __init__(
        self,
        row: DestinationRow,
        pool: asyncpg.Pool,
        *,
        config: ForwarderConfig,
        storage_root: Path,
        owner: str,
        factory: SenderFactory,
        on_sent: SendObserver = _unobserved,
    ) -> None:
        self.row = row
        self._on_sent = on_sent
        self._pool = pool
        self._config = config
        self._root = storage_root
        self._owner = owner
        self._factory = factory
        self._policy = RetryPolicy(
            config.max_attempts,
            config.permanent_attempts,
            config.backoff_initial_s,
            config.backoff_max_s,
        )
        self.circuit = Circuit(config.circuit_failures)
        self._health_lock = asyncio.Lock()
        self.wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # Read by the metrics collector.
        self.delivered = 0
        self.delivered_bytes = 0
        self.failed = 0
        self.dead = 0

    @property
    def id(self) -> int:
        return self.row.id

    @property
    def name(self) -> str:
        return self.row.destination.name

    def start(self) -> None:
        for n in range(self.row.destination.max_parallel):
            self._tasks.append(asyncio.create_task(self._work(n), name=f"forward-{self.name}-{n}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    def set_paused(self, paused: bool) -> None:
        self.row = DestinationRow(self.row.id, self.row.destination, paused)
        self.wake.set()

    async def _idle(self, timeout: float | None) -> None:
        # NOTE: asyncio.timeout, not wait_for: 3.11's wait_for can swallow a
        # cancellation that races with the wake-up, and then stop() would hang.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.wake.wait()

    async def _work(self, n: int) -> None:
        owner = f"{self._owner}/{self.name}/{n}"
        sender = self._factory(self.row.destination)
        try:
            while True:
                if self.row.paused:
                    self.wake.clear()
                    await self._idle(None)
                    continue
                if self.circuit.open:
                    # One worker probes; the others wait for it to close the circuit.
                    if n == 0:
                        await self._probe(sender)
                    else:
                        self.wake.clear()
                        await self._idle(None)
                    continue
                # Cleared before claiming: a NOTIFY after this point is not lost.
                self.wake.clear()
                try:
                    async with self._pool.acquire() as conn:
                        claimed = await jobs.claim(
                            conn,
                            self.id,
                            owner,
                            self._config.batch_size,
                            self._config.lease_s,
                            max_bytes=self._config.batch_bytes,
                        )
                        due = None if claimed else await jobs.next_due(conn, self.id)
                except _DB_ERRORS as exc:
                    log.error("forward: cannot claim jobs", extra={"error": str(exc)})
                    await asyncio.sleep(1.0)
                    continue
                if not claimed:
                    await self._idle(due)
                    continue
                await self._deliver(sender, owner, claimed)
        finally:
            with contextlib.suppress(Exception):
                await sender.close()

    async def _deliver(self, sender: Sender, owner: str, claimed: list[ClaimedJob]) -> None:
        """Send a claimed batch: each outcome recorded as it arrives, the leases of
        the jobs not yet finished renewed while the batch is under way."""
        items = [
            StoredInstance(
                job_id=j.job_id,
                instance_id=j.instance_id,
                sop_class_uid=j.sop_class_uid,
                sop_instance_uid=j.sop_instance_uid,
                transfer_syntax_uid=j.transfer_syntax_uid,
                path=self._root / j.file_path,
                dataset_size=j.dataset_size,
                checksum=j.checksum,
            )
            for j in claimed
        ]
        batch = LeasedBatch(claimed)
        recorder = asyncio.create_task(self._record(owner, batch))
        heartbeat = asyncio.create_task(self._heartbeat(owner, batch))
        started = time.monotonic()
        try:
            outcomes = await sender.send(items, batch)
        except asyncio.CancelledError:
            recorder.cancel()
            raise
        except Exception as exc:
            # NOTE: a sender bug must not lose jobs: they come back, and say why.
            log.exception("forward: sender failed", extra={"destination": self.name})
            outcomes = [Outcome("transient", None, f"sender error: {exc}")] * len(items)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        self._on_sent(self.name, time.monotonic() - started)
        for item, outcome in zip(items, outcomes, strict=True):
            batch.answered(item, outcome)
            if outcome.kind not in ("delivered", "withdrawn"):
                log.warning(
                    "forward: not delivered",
                    extra={
                        "destination": self.name,
                        "job": item.job_id,
                        "outcome": outcome.kind,
                        "status": outcome.status,
                        "reason": outcome.message,
                    },
                )
        batch.done()
        states = await recorder
        if batch.lost:
            log.warning(
                "forward: leases lost, the jobs were left to another worker",
                extra={"destination": self.name, "jobs": len(batch.lost)},
            )
        sent = [(i, o) for i, o in zip(items, outcomes, strict=True) if o.kind != "withdrawn"]
        if not sent:
            return
        self.delivered += sum(o.kind == "delivered" for _, o in sent)
        self.delivered_bytes += sum(i.dataset_size for i, o in sent if o.kind == "delivered")
        self.failed += sum(o.kind != "delivered" for _, o in sent)
        self.dead += sum(s == "dead" for s in states.values())
        opened = self.circuit.record([o for _, o in sent])
        await self._record_health([o for _, o in sent], opened)

    async def _record(self, owner: str, batch: LeasedBatch) -> dict[int, str]:
        """Write outcomes as they arrive (those that came in during one write go in
        the next); {job id: new state} of the jobs this worker still held."""
        states: dict[int, str] = {}
        while True:
            await batch.changed.wait()
            batch.changed.clear()
            results, batch.unrecorded = batch.unrecorded, []
            if results:
                written = await self._finish(owner, results)
                states.update(written)
                ids = {job.job_id for job, _ in results}
                # NOTE: a renewal racing this write may have called a job lost that
                # this write finished; what FINISH returns is the truth.
                batch.lost = (batch.lost | ids) - written.keys()
                batch.unfinished -= ids
            if batch.sent and not batch.unrecorded:
                return states

    async def _heartbeat(self, owner: str, batch: LeasedBatch) -> None:
        """Every third of the lease: renew the leases of the jobs not yet finished;
        those no longer held are withdrawn from the send."""
        lease_s = self._config.lease_s
        while True:
            await asyncio.sleep(lease_s / 3)
            asked = batch.unfinished - batch.lost
            if not asked:
                continue
            try:
                async with self._pool.acquire() as conn:
                    held = await jobs.renew(conn, owner, list(asked), lease_s)
            except _DB_ERRORS as exc:
                log.error("forward: cannot renew leases", extra={"error": str(exc)})
                continue
            # NOTE: a job finished during the renewal is no longer leased either;
            # it is not lost, it is done.
            batch.lost |= (asked & batch.unfinished) - held

    async def _finish(
        self, owner: str, results: list[tuple[ClaimedJob, Outcome]]
    ) -> dict[int, str]:
        """Record outcomes; retried while the database is away, since the jobs stay
        leased (and are sent again after the lease) until this succeeds."""
        delay = 0.5
        while True:
            try:
                async with self._pool.acquire() as conn:
                    return await jobs.finish(conn, owner, results, self._policy)
            except _DB_ERRORS as exc:
                log.error("forward: cannot record outcomes", extra={"error": str(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _record_health(self, outcomes: Sequence[Outcome], opened: bool) -> None:
        ok = any(o.kind == "delivered" for o in outcomes)
        failed = [o for o in outcomes if o.kind != "delivered"]
        if opened:
            log.error(
                "forward: circuit opened, destination unreachable",
                extra={"destination": self.name, "failures": self.circuit.failures},
            )
        # Serialized, and the circuit read at write time: two workers' writes must
        # not land in the other order and leave the table saying "closed".
        async with self._health_lock:
            with contextlib.suppress(*_DB_ERRORS):
                await self._write_health(ok, failed[-1].message if failed else None)

    async def _write_health(self, ok: bool, error: str | None) -> None:
        async with self._pool.acquire() as conn:
            await conn.execute(
                """
                    UPDATE destinations SET
                        consecutive_failures = $2,
                        circuit_state = CASE WHEN $3 THEN 'open' ELSE 'closed' END,
                        last_success_at = CASE WHEN $4 THEN now() ELSE last_success_at END,
                        last_failure_at = CASE WHEN $5::text IS NOT NULL THEN now()
                                               ELSE last_failure_at END,
                        last_error = coalesce($5, last_error)
                    WHERE id = $1
                    """,
                self.id,
                self.circuit.failures,
                self.circuit.open,
                ok,
                error,
            )

    async def _probe(self, sender: Sender) -> None:
        """While the circuit is open: an echo every circuit_probe_s; success closes it.

        NOTE: a plain sleep, not the wake event: new jobs keep NOTIFYing while the
        destination is down, and each would otherwise trigger a probe at once.
        """
        await asyncio.sleep(self._config.circuit_probe_s)
        if not self.circuit.open or self.row.paused:
            return
        try:
            rtt = await sender.echo()
        except Exception as exc:
            log.info(
                "forward: probe failed, circuit stays open",
                extra={"destination": self.name, "error": str(exc)},
            )
            return
        log.info(
            "forward: probe succeeded, circuit closed",
            extra={"destination": self.name, "rtt_ms": round(rtt * 1000, 1)},
        )
        self.circuit.open = False
        self.circuit.failures = 0
        await self._record_health([], False)
        self.wake.set()


class Forwarder:
    """All destinations' runners, kept in step with the database."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        config: ForwarderConfig,
        box: SecretBox,
        storage_root: Path,
        *,
        factory: SenderFactory = make_sender,
        on_sent: SendObserver | None = None,
    ) -> None:
        self._pool = pool
        self._config = config
        self._box = box
        self._root = storage_root
        self._factory = factory
        self._on_sent = on_sent or _unobserved
        self.owner = worker_identity()
        self.runners: dict[int, DestinationRunner] = {}
        self._conn: asyncpg.Connection | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._sync_lock = asyncio.Lock()
        self._closed = False

    async def start(self) -> None:
        await self._listen()
        await self._reclaim_dead_owners()
        self._spawn(self._reap())
        self._spawn(self._purge_history())

    def _spawn(self, coro: Coroutine[None, None, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for runner in list(self.runners.values()):
            await runner.stop()
        self.runners.clear()
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await self._pool.release(conn, timeout=1)

    async def _listen(self) -> None:
        conn = await self._pool.acquire()
        await conn.add_listener(channels.JOBS, self._on_jobs)
        await conn.add_listener(channels.ROUTING, self._on_routing)
        conn.add_termination_listener(self._on_lost)
        self._conn = conn
        await self.sync()

    def _on_jobs(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        runner = self.runners.get(int(payload)) if payload.isdigit() else None
        if runner is not None:
            runner.wake.set()

    def _on_routing(self, *_: object) -> None:
        self._spawn(self.sync())

    def _on_lost(self, *_: object) -> None:
        self._conn = None
        if not self._closed:
            self._spawn(self._reconnect())

    async def _reconnect(self) -> None:
        delay = 0.5
        while not self._closed:
            try:
                await self._listen()
            except _DB_ERRORS as exc:
                log.warning("forwarder: reconnecting", extra={"error": str(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            # NOTIFYs sent while we were away are lost: look for work everywhere.
            for runner in self.runners.values():
                runner.wake.set()
            return

    async def sync(self) -> None:
        """Start, stop, restart or (un)pause runners to match the destinations table."""
        async with self._sync_lock:
            try:
                async with self._pool.acquire() as conn:
                    rows = {r.id: r for r in await load_destinations(conn, self._box)}
            except _DB_ERRORS as exc:
                log.error("forwarder: cannot load destinations", extra={"error": str(exc)})
                return
            for dest_id, runner in list(self.runners.items()):
                row = rows.get(dest_id)
                if (
                    row is None
                    or not row.destination.enabled
                    or row.destination != runner.row.destination
                ):
                    await runner.stop()
                    del self.runners[dest_id]
                elif row.paused != runner.row.paused:
                    runner.set_paused(row.paused)
            for dest_id, row in rows.items():
                if dest_id not in self.runners and row.destination.enabled:
                    runner = DestinationRunner(
                        row,
                        self._pool,
                        config=self._config,
                        storage_root=self._root,
                        owner=self.owner,
                        factory=self._factory,
                        on_sent=self._on_sent,
                    )
                    self.runners[dest_id] = runner
                    runner.start()
                    runner.wake.set()

    async def _reclaim_dead_owners(self) -> None:
        """Leases of forwarders on this host that died (kill -9) are returned now,
        not after the lease runs out."""
        host = socket.gethostname()
        async with self._pool.acquire() as conn:
            dead = [
                owner
                for owner in await jobs.lease_owners(conn)
                if _dead_owner(owner.rsplit("/", 2)[0], host)
            ]
            if dead and (released := await jobs.release_owners(conn, dead)):
                log.warning(
                    "forwarder: jobs of a stopped forwarder reclaimed", extra={"jobs": released}
                )

    async def _purge_history(self) -> None:
        """Hourly: jobs finished more than forwarder.history_days ago."""
        while True:
            purged = 0
            try:
                while True:
                    async with self._pool.acquire() as conn:
                        n = await jobs.purge_history(conn, self._config.history_days, PURGE_BATCH)
                    purged += n
                    if n < PURGE_BATCH:
                        break
                    await asyncio.sleep(0.1)  # let the senders' statements in
            except _DB_ERRORS as exc:
                log.error("forwarder: cannot purge job history", extra={"error": str(exc)})
            if purged:
                log.info("forwarder: job history purged", extra={"jobs": purged})
            await asyncio.sleep(PURGE_INTERVAL_S)

    async def _reap(self) -> None:
        interval = min(30.0, self._config.lease_s / 4)
        while True:
            await asyncio.sleep(interval)
            try:
                async with self._pool.acquire() as conn:
                    n = await jobs.reclaim_expired(conn)
            except _DB_ERRORS as exc:
                log.error("forwarder: cannot reclaim leases", extra={"error": str(exc)})
                continue
            if n:
                log.warning("forwarder: expired leases reclaimed", extra={"jobs": n})
