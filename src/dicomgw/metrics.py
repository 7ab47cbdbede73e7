"""Prometheus metrics of every role, named ``dicomgw_*`` (docs/metrics.md).

``serve`` runs the receiver and the forwarder in one process and the API in
Granian worker processes (or each role runs alone: ``dicom-gw receiver`` ...),
so the process answering ``GET /metrics`` holds none of the receiver's
counters. prometheus_client's multiprocess mode joins them: each process points
PROMETHEUS_MULTIPROC_DIR at <state_dir>/metrics before prometheus_client is
first imported (serve.metrics_dir), every process writes
its samples to its own mmapped files there, and the API worker answering a
scrape reads them all (:class:`MultiProcessCollector`); the request histograms
of several API workers add up the same way. What PostgreSQL holds (queue depth,
circuit state) the API worker reads at scrape time.

The counters stay where the work is done: the receive streams count bytes in
C, the storage service, index writer and forward runners in plain attributes.
:meth:`ServeMetrics.update` copies them into the families once a second. What
only the event knows is recorded there: a C-STORE's latency and status (once per
C-STORE answered), a forward batch's latency (once per batch).

No label holds PHI or an identifier (no UID, patient, AE title or address):
labels are destination names, route templates, fixed reason, outcome and state
names and status codes, so their number is bounded by the configuration.

API workers import this module: it must not import the compiled core or the
receiver (those imports are for type checking only).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from dicomgw.certificates import CertificateError, info, read_certificates, watched
from dicomgw.config import Config
from dicomgw.dimse.commands import C_FIND_RQ, C_GET_RQ, C_MOVE_RQ, C_STORE_RQ
from dicomgw.ul import pdu

if TYPE_CHECKING:
    from dicomgw.forward.supervisor import DestinationRunner, Forwarder
    from dicomgw.receiver.server import Receiver

log = logging.getLogger(__name__)

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
UPDATE_INTERVAL_S = 1.0
QUEUE_STATES = ("pending", "leased", "dead")
"""The states of jobs still in the queue (done and cancelled ones are history)."""

STORE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
SEND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
INDEX_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
INDEX_DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)
API_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def _rejection_reasons() -> dict[tuple[int, int], str]:
    """A-ASSOCIATE-RJ (source, reason) -> label (PS3.8 9.3.4 Table 9-21)."""
    return {
        (pdu.SOURCE_SERVICE_USER, pdu.REASON_APPLICATION_CONTEXT_NOT_SUPPORTED): (
            "application-context"
        ),
        (pdu.SOURCE_SERVICE_USER, pdu.REASON_CALLING_AE_NOT_RECOGNIZED): "calling-ae-title",
        (pdu.SOURCE_SERVICE_USER, pdu.REASON_CALLED_AE_NOT_RECOGNIZED): "called-ae-title",
        (pdu.SOURCE_PRESENTATION, pdu.REASON_LOCAL_LIMIT_EXCEEDED): "association-limit",
    }


def _advance(seen: dict[str, float], key: str, counter: Counter, value: float) -> None:
    """Add to ``counter`` what ``value`` (a source's running total) grew by since
    the last call with ``key``."""
    grown = value - seen.get(key, 0)
    if grown > 0:
        counter.inc(grown)
    seen[key] = value


class ServeMetrics:
    """The receiver's and the forwarder's families, in the ``serve`` process.

    ``registry`` None registers them nowhere: in multiprocess mode the samples
    go to the files regardless, and a second instance (tests) does not clash.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        def counter(name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        def gauge(name: str, doc: str) -> Gauge:
            # NOTE: only this process sets them; "mostrecent" reports its value
            # without a pid label.
            return Gauge(name, doc, registry=registry, multiprocess_mode="mostrecent")

        self.associations_active = gauge(
            "dicomgw_associations_active", "DIMSE associations established now."
        )
        self.associations = counter("dicomgw_associations", "DIMSE associations accepted.")
        self.associations_rejected = counter(
            "dicomgw_associations_rejected", "A-ASSOCIATE-RJ sent, by reason.", ["reason"]
        )
        self.tls_failures = counter(
            "dicomgw_tls_handshake_failures",
            "DICOM TLS handshakes on dimse.tls_port that failed, by kind.",
            ["kind"],
        )
        self.received_bytes = counter(
            "dicomgw_received_bytes", "PDU bytes received on DIMSE associations."
        )
        self.received_dataset_bytes = counter(
            "dicomgw_received_dataset_bytes", "Data set bytes received in C-STORE requests."
        )
        self.instances_received = counter(
            "dicomgw_instances_received",
            "Instances acknowledged with Success: stored, or duplicate (identical bytes "
            "already stored).",
            ["outcome"],
        )
        self.store_failures = counter(
            "dicomgw_store_failures", "C-STOREs answered with a failure, by status.", ["status"]
        )
        self.store_duration = Histogram(
            "dicomgw_cstore_duration_seconds",
            "From a C-STORE data set's last byte to its response: fsync, rename, index commit.",
            ["outcome"],
            buckets=STORE_BUCKETS,
            registry=registry,
        )
        self.queries = counter(
            "dicomgw_dimse_queries",
            "C-FINDs answered, by final status (0x0000 success, 0xFE00 cancelled, "
            "0xA700 too many matches, 0xA900/0xC000 refused).",
            ["status"],
        )
        self.retrievals = counter(
            "dicomgw_dimse_retrievals",
            "C-GETs and C-MOVEs answered, by service and final status (0x0000 every "
            "sub-operation done, 0xB000 some failed, 0xA702 all failed, 0xFE00 cancelled, "
            "0xA801 unknown move destination, 0xA900/0xC000 refused).",
            ["service", "status"],
        )
        self.query_duration = Histogram(
            "dicomgw_cfind_duration_seconds",
            "From a C-FIND's identifier to its final response (every match sent).",
            buckets=STORE_BUCKETS,
            registry=registry,
        )
        self.index_batch_size = Histogram(
            "dicomgw_index_batch_size",
            "Instances per index transaction (count: transactions, sum: instances).",
            buckets=INDEX_SIZE_BUCKETS,
            registry=registry,
        )
        self.index_batch_duration = Histogram(
            "dicomgw_index_batch_duration_seconds",
            "How long index transactions took, from the first statement to the COMMIT.",
            buckets=INDEX_DURATION_BUCKETS,
            registry=registry,
        )
        self.disk_free = gauge(
            "dicomgw_disk_free_bytes", "Bytes available to dicom-gw under storage.root."
        )
        self.disk_used = gauge(
            "dicomgw_disk_used_ratio", "Used share (0-1) of the storage.root file system."
        )
        self.disk_refusing = gauge(
            "dicomgw_disk_refusing",
            "1 while new instances are refused: above the high watermark, until below the low.",
        )
        destination = ["destination"]
        self.forward_attempts = counter(
            "dicomgw_forward_attempts", "Instances the forwarder tried to deliver.", destination
        )
        self.forward_delivered = counter(
            "dicomgw_forward_delivered", "Instances delivered.", destination
        )
        self.forward_delivered_bytes = counter(
            "dicomgw_forward_delivered_bytes",
            "Data set bytes of the instances delivered.",
            destination,
        )
        self.forward_failures = counter(
            "dicomgw_forward_failures", "Delivery attempts that failed.", destination
        )
        self.forward_dead = counter(
            "dicomgw_forward_dead_letter", "Jobs moved to dead-letter.", destination
        )
        self.forward_duration = Histogram(
            "dicomgw_forward_send_duration_seconds",
            "How long one batch of jobs took to send (one association or request set).",
            destination,
            buckets=SEND_BUCKETS,
            registry=registry,
        )
        self._reasons = _rejection_reasons()
        self.database_restarts = counter(
            "dicomgw_embedded_postgres_restarts",
            "Times the embedded PostgreSQL died and this process started it again.",
        )
        self._seen: dict[str, float] = {}
        # Per runner: a destination's runner is replaced (with new counters) when
        # its settings change; the old one's totals are already counted.
        self._runners: weakref.WeakKeyDictionary[DestinationRunner, dict[str, float]] = (
            weakref.WeakKeyDictionary()
        )

    def observe_answered(self, command_field: int, seconds: float, status: int) -> None:
        """Once per DIMSE request answered; C-STOREs are timed and their failures
        counted (the refusals of malformed requests, which never reach ingest,
        too); C-FINDs are timed and counted by final status."""
        if command_field == C_FIND_RQ:
            self.queries.labels(f"0x{status:04X}").inc()
            self.query_duration.observe(seconds)
            return
        if command_field in (C_GET_RQ, C_MOVE_RQ):
            service = "get" if command_field == C_GET_RQ else "move"
            self.retrievals.labels(service, f"0x{status:04X}").inc()
            return
        if command_field != C_STORE_RQ:
            return
        if status == 0:
            self.store_duration.labels("success").observe(seconds)
            return
        self.store_duration.labels("failure").observe(seconds)
        self.store_failures.labels(f"0x{status:04X}").inc()

    def observe_index_batch(self, size: int, seconds: float) -> None:
        """Once per index transaction."""
        self.index_batch_size.observe(size)
        self.index_batch_duration.observe(seconds)

    def observe_database_restart(self) -> None:
        self.database_restarts.inc()

    def observe_send(self, destination: str, seconds: float) -> None:
        self.forward_duration.labels(destination).observe(seconds)

    def update(self, receiver: Receiver | None, forwarder: Forwarder | None) -> None:
        """Copy the counters of the receiver and the forwarder (those this
        process runs) into the families."""
        if receiver is not None:
            self._update_receiver(receiver)
        if forwarder is not None:
            for runner in list(forwarder.runners.values()):
                self._update_runner(runner)

    def _update_receiver(self, receiver: Receiver) -> None:
        seen, counters, service = self._seen, receiver.counters, receiver.ingest
        self.associations_active.set(receiver.limits.active)
        _advance(seen, "admitted", self.associations, counters.admitted)
        for (source, reason), n in list(counters.rejected.items()):
            label = self._reasons.get((source, reason), f"source-{source}-reason-{reason}")
            _advance(seen, f"rejected:{label}", self.associations_rejected.labels(label), n)
        for kind, n in list(counters.tls_failed.items()):
            _advance(seen, f"tls:{kind}", self.tls_failures.labels(kind), n)
        pdu_bytes, dataset_bytes = counters.received()
        _advance(seen, "bytes", self.received_bytes, pdu_bytes)
        _advance(seen, "dataset_bytes", self.received_dataset_bytes, dataset_bytes)
        stored = self.instances_received.labels("stored")
        _advance(seen, "stored", stored, service.stored)
        duplicate = self.instances_received.labels("duplicate")
        _advance(seen, "duplicates", duplicate, service.duplicates)
        disk = receiver.disk
        disk.accepting()  # measures again if its last look is stale
        self.disk_free.set(disk.free_bytes)
        self.disk_used.set(disk.used_percent / 100)
        self.disk_refusing.set(disk.refusing)

    def _update_runner(self, runner: DestinationRunner) -> None:
        seen = self._runners.setdefault(runner, {})
        name = runner.name
        attempts = runner.delivered + runner.failed
        _advance(seen, "attempts", self.forward_attempts.labels(name), attempts)
        # NOTE: the bytes before the count, so that a reader who sees the count sees its bytes.
        _advance(
            seen,
            "delivered_bytes",
            self.forward_delivered_bytes.labels(name),
            runner.delivered_bytes,
        )
        _advance(seen, "delivered", self.forward_delivered.labels(name), runner.delivered)
        _advance(seen, "failed", self.forward_failures.labels(name), runner.failed)
        _advance(seen, "dead", self.forward_dead.labels(name), runner.dead)

    async def keep_updated(
        self,
        receiver: Receiver | None,
        forwarder: Forwarder | None,
        interval_s: float = UPDATE_INTERVAL_S,
    ) -> None:
        failing = False
        while True:
            try:
                self.update(receiver, forwarder)
                failing = False
            except Exception:
                # NOTE: a metrics bug must cost the metrics, never the gateway;
                # logged once, not every second.
                if not failing:
                    log.exception("metrics: update failed")
                failing = True
            await asyncio.sleep(interval_s)


# -- the API side -----------------------------------------------------------------------

QUEUE_SQL = """
SELECT d.name, s.state, count(j.id) AS jobs,
       coalesce(extract(epoch FROM now() - min(j.created_at)), 0)::float8 AS oldest_s
FROM destinations d
CROSS JOIN unnest($1::text[]) AS s(state)
LEFT JOIN forward_jobs j ON j.destination_id = d.id AND j.state = s.state
GROUP BY d.name, s.state
ORDER BY d.name, s.state
"""

CIRCUIT_SQL = "SELECT name, circuit_state = 'open' AS open FROM destinations ORDER BY name"


async def database_families(conn: asyncpg.Connection) -> list[Metric]:
    """Queue depth and age per destination and state, and circuit state: what
    PostgreSQL holds, read at scrape time (one row per destination and state)."""
    jobs = GaugeMetricFamily(
        "dicomgw_queue_jobs",
        "Forward jobs waiting (pending), being sent (leased) or dead-lettered.",
        labels=["destination", "state"],
    )
    oldest = GaugeMetricFamily(
        "dicomgw_queue_oldest_age_seconds",
        "Age of the oldest job in that state (0: none).",
        labels=["destination", "state"],
    )
    for row in await conn.fetch(QUEUE_SQL, list(QUEUE_STATES)):
        jobs.add_metric([row["name"], row["state"]], row["jobs"])
        oldest.add_metric([row["name"], row["state"]], row["oldest_s"])
    circuit = GaugeMetricFamily(
        "dicomgw_forward_circuit_open",
        "1 while the destination's circuit breaker is open (it is probed, not sent to).",
        labels=["destination"],
    )
    for row in await conn.fetch(CIRCUIT_SQL):
        circuit.add_metric([row["name"]], float(row["open"]))
    return [jobs, oldest, circuit]


def database_up(up: bool) -> Metric:
    return GaugeMetricFamily(
        "dicomgw_database_up",
        "1 if this scrape could read the queue and circuit state from PostgreSQL.",
        value=float(up),
    )


def certificate_families(config: Config) -> list[Metric]:
    """The notAfter of each installed certificate (dicomgw.certificates.watched),
    read at scrape time: alert on ``... - time() < 30 * 86400``."""
    expiry = GaugeMetricFamily(
        "dicomgw_tls_certificate_expiry_timestamp_seconds",
        "When the certificate expires (Unix time); absent when none is installed.",
        labels=["certificate"],
    )
    for label, path in watched(config).items():
        try:
            cert = info(read_certificates(path, "certificate")[0])
        except CertificateError:
            continue  # none installed (or unreadable: the CLI and the log say why)
        expiry.add_metric([label], cert.not_after.timestamp())
    return [expiry]


LIVE_SAMPLES = {
    "dicomgw_associations_active": "associations_active",
    "dicomgw_instances_received_total": "received_instances",
    "dicomgw_received_dataset_bytes_total": "received_bytes",
    "dicomgw_forward_delivered_total": "forwarded_instances",
    "dicomgw_forward_delivered_bytes_total": "forwarded_bytes",
}
"""Sample -> key of live_totals (summed over labels: outcomes, destinations)."""


def live_totals() -> dict[str, object]:
    """The dashboard's live figures: running totals since the gateway started and
    the associations open now, from the multiprocess files the receiver and the
    forwarder write (the API does not hold their counters). A caller takes rates
    from two of these and their ``at_ms``. Without the directory (an API run on
    its own) every figure is 0 and ``source`` says "none"."""
    directory = os.environ.get(MULTIPROC_DIR_ENV)
    totals = dict.fromkeys(LIVE_SAMPLES.values(), 0.0)
    if directory:
        collector = MultiProcessCollector(None, directory)  # type: ignore[no-untyped-call]
        for family in collector.collect():  # type: ignore[no-untyped-call]
            for sample in family.samples:
                key = LIVE_SAMPLES.get(sample.name)
                if key is not None:
                    totals[key] += sample.value
    return {
        "source": "multiprocess" if directory else "none",
        "at_ms": time.time_ns() // 1_000_000,
        **{key: int(value) for key, value in totals.items()},
    }


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


class ApiMetrics:
    """An API worker's own families, and the exposition a scrape gets."""

    def __init__(self) -> None:
        # NOTE: registered nowhere global: create_app may run more than once in a process.
        self.request_duration = Histogram(
            "dicomgw_api_request_duration_seconds",
            "API requests by method, route template and status code.",
            ["method", "route", "status"],
            buckets=API_BUCKETS,
            registry=None,
        )

    def exposition(self, database: Iterable[Metric]) -> bytes:
        """Every process's families (multiprocess mode, under ``serve``), or only
        this one's (an API run on its own, tests), plus ``database``."""
        registry = CollectorRegistry()
        directory = os.environ.get(MULTIPROC_DIR_ENV)
        if directory:
            MultiProcessCollector(registry, directory)  # type: ignore[no-untyped-call]
        else:
            registry.register(self.request_duration)
        registry.register(_Families(database))
        return generate_latest(registry)
