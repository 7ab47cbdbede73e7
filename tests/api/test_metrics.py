"""GET /metrics: who may read it, what it shows, and (end to end) that one scrape of
a running gateway covers the receiver, the forwarder and the API without PHI.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import asyncpg
import falcon.testing
import httpx
import psycopg
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from dicomgw.api.app import ROUTES, create_app
from dicomgw.api.resources import metrics as metrics_resource
from dicomgw.association.acceptor import ListenerCounters
from dicomgw.config import Config
from dicomgw.dimse.commands import C_ECHO_RQ, C_STORE_RQ
from dicomgw.metrics import ServeMetrics
from dicomgw.ul.pdu import REASON_CALLED_AE_NOT_RECOGNIZED, SOURCE_SERVICE_USER
from tests.api.inprocess import api_config, logged_in, migrated
from tests.gateway import ADMIN_PASSWORD, Gateway
from tests.integration.scu import encode_dataset, make_dataset, raw_association, store_status
from tests.interop.corpus import Peer, send_with_pynetdicom, small_images
from tests.support.pdus import (
    MCH_DATASET_LAST,
    RJ_CALLED_AE,
    associate_rq,
    c_store_command,
    p_data,
    pdv,
)
from tests.support.peer import exchange

TOKEN = "metrics-token-for-tests"
SESSION_ROUTE = "/api/v1/me/sessions/{session_id:id}"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
# Until app.ROUTES lists it; once it does, adding it again would time requests twice.
ROUTES_WITH_METRICS = (
    ROUTES if metrics_resource.add_routes in ROUTES else (*ROUTES, metrics_resource.add_routes)
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample, by (name, labels); the exposition must parse."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def label_values(samples: Samples, name: str, label: str) -> set[str]:
    return {dict(labels)[label] for (n, labels) in samples if n == name and label in dict(labels)}


# -- in-process: access, route labels, queue state --------------------------------------


@contextlib.asynccontextmanager
async def conductor(config: Config) -> AsyncIterator[falcon.testing.ASGIConductor]:
    async with falcon.testing.ASGIConductor(
        create_app(config, routes=ROUTES_WITH_METRICS)
    ) as client:
        yield client


async def test_no_token_and_no_networks_answers_nobody(empty_db: str, tmp_path: Path) -> None:
    await migrated(empty_db)
    async with conductor(api_config(empty_db, tmp_path)) as client:
        for remote in ("127.0.0.1", "10.1.2.3"):
            result = await client.simulate_get("/metrics", remote_addr=remote, headers=BEARER)
            assert result.status_code == 403
            assert result.json["type"] == "urn:dicom-gw:problem:forbidden"


async def test_the_token_opens_it(empty_db: str, tmp_path: Path) -> None:
    await migrated(empty_db)
    config = api_config(empty_db, tmp_path, DICOMGW_API__METRICS_TOKEN=TOKEN)
    async with conductor(config) as client:
        missing = await client.simulate_get("/metrics", remote_addr="10.1.2.3")
        assert missing.status_code == 401
        assert missing.headers["WWW-Authenticate"].startswith("Bearer")
        for wrong in (f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN, "Bearer "):
            result = await client.simulate_get("/metrics", headers={"Authorization": wrong})
            assert result.status_code == 401, wrong
        ok = await client.simulate_get("/metrics", remote_addr="10.1.2.3", headers=BEARER)
        assert ok.status_code == 200
        assert ok.headers["Content-Type"].startswith("text/plain")
        assert ok.headers["Cache-Control"] == "no-store"
        assert value(parse(ok.text), "dicomgw_database_up") == 1


async def test_networks_open_it_to_direct_clients_only(empty_db: str, tmp_path: Path) -> None:
    await migrated(empty_db)
    config = api_config(
        empty_db, tmp_path, DICOMGW_API__METRICS_NETWORKS="[10.0.5.0/24, 'fd00::/8']"
    )
    async with conductor(config) as client:

        async def status(remote: str | None, **headers: str) -> int:
            result = await client.simulate_get("/metrics", remote_addr=remote, headers=headers)
            return result.status_code

        assert await status("10.0.5.7") == 200
        assert await status("::ffff:10.0.5.7") == 200
        assert await status("fd00::1") == 200
        assert await status("10.0.6.7") == 403
        assert await status(None) == 403  # no peer address: unknown
        # A request naming other addresses came through a proxy (or says so):
        # its origin is unknown, whatever it claims.
        assert await status("10.0.5.7", **{"X-Forwarded-For": "10.0.5.8"}) == 403
        assert await status("203.0.113.9", **{"X-Forwarded-For": "203.0.113.9, 10.0.5.7"}) == 403


async def test_requests_are_labelled_by_route_template(empty_db: str, tmp_path: Path) -> None:
    await migrated(empty_db)
    config = api_config(empty_db, tmp_path, DICOMGW_API__METRICS_TOKEN=TOKEN)
    async with logged_in(config, "admin", routes=ROUTES_WITH_METRICS) as api:
        assert (await api.call("DELETE", "/me/sessions/424242")).status_code == 404
        unmatched = await api.conductor.simulate_get("/api/v1/nothing/1.2.840.99999.1.2.3")
        assert unmatched.status_code == 404
        await api.conductor.simulate_request("BREW", "/api/v1/me")
        result = await api.conductor.simulate_get("/metrics", headers=BEARER)
    samples = parse(result.text)
    name = "dicomgw_api_request_duration_seconds_count"
    routes = label_values(samples, name, "route")
    assert {"/api/v1/auth/login", SESSION_ROUTE, "unmatched"} <= routes
    assert not any("424242" in r or "1.2.840" in r for r in routes), routes
    assert value(samples, name, method="POST", route="/api/v1/auth/login", status="200") == 1
    assert value(samples, name, method="DELETE", route=SESSION_ROUTE, status="404") == 1
    assert label_values(samples, name, "method") <= {"GET", "POST", "DELETE", "other"}
    assert "other" in label_values(samples, name, "method")


async def test_queue_and_circuit_state_come_from_the_database(
    empty_db: str, tmp_path: Path
) -> None:
    await migrated(empty_db)
    conn = await asyncpg.connect(empty_db)
    try:
        await conn.execute(
            "INSERT INTO destinations (name, kind, circuit_state) "
            "VALUES ('pacs', 'dimse', 'closed'), ('archive', 'stowrs', 'open')"
        )
    finally:
        await conn.close()
    config = api_config(empty_db, tmp_path, DICOMGW_API__METRICS_TOKEN=TOKEN)
    async with conductor(config) as client:
        samples = parse((await client.simulate_get("/metrics", headers=BEARER)).text)
    for destination in ("pacs", "archive"):
        for state in ("pending", "leased", "dead"):
            labels = {"destination": destination, "state": state}
            assert value(samples, "dicomgw_queue_jobs", **labels) == 0
            assert value(samples, "dicomgw_queue_oldest_age_seconds", **labels) == 0
    assert value(samples, "dicomgw_forward_circuit_open", destination="pacs") == 0
    assert value(samples, "dicomgw_forward_circuit_open", destination="archive") == 1


# -- the serve side's updater, on stand-ins ------------------------------------------------


@dataclass(eq=False)
class FakeRunner:
    name: str
    delivered: int = 0
    delivered_bytes: int = 0
    failed: int = 0
    dead: int = 0


@dataclass
class FakeDisk:
    free_bytes: int = 0
    used_percent: float = 0.0
    refusing: bool = False
    measured: int = 0

    def accepting(self) -> bool:
        self.measured += 1
        return not self.refusing


@dataclass
class FakeReceiver:
    counters: ListenerCounters = field(default_factory=ListenerCounters)
    limits: Any = field(default_factory=lambda: SimpleNamespace(active=0))
    ingest: Any = field(default_factory=lambda: SimpleNamespace(stored=0, duplicates=0))
    disk: FakeDisk = field(default_factory=FakeDisk)


@dataclass
class FakeForwarder:
    runners: dict[int, FakeRunner] = field(default_factory=dict)


def test_update_copies_running_totals_once() -> None:
    registry = CollectorRegistry()
    metrics = ServeMetrics(registry)
    receiver, forwarder = FakeReceiver(), FakeForwarder()

    def update() -> None:
        metrics.update(cast(Any, receiver), cast(Any, forwarder))

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    receiver.limits.active = 3
    receiver.counters.admitted = 5
    receiver.counters.rejected[SOURCE_SERVICE_USER, REASON_CALLED_AE_NOT_RECOGNIZED] = 2
    receiver.counters.rejected[9, 9] = 1
    receiver.counters.closed_bytes_in, receiver.counters.closed_dataset_bytes_in = 1000, 800
    receiver.ingest.stored, receiver.ingest.duplicates = 4, 1
    receiver.disk.free_bytes, receiver.disk.used_percent = 12345, 42.0
    first = FakeRunner("pacs", delivered=4, delivered_bytes=4000, failed=2, dead=1)
    forwarder.runners[1] = first
    update()
    update()  # nothing grew: nothing added
    assert sample("dicomgw_associations_active") == 3
    assert sample("dicomgw_associations_total") == 5
    assert sample("dicomgw_associations_rejected_total", reason="called-ae-title") == 2
    assert sample("dicomgw_associations_rejected_total", reason="source-9-reason-9") == 1
    assert sample("dicomgw_received_bytes_total") == 1000
    assert sample("dicomgw_received_dataset_bytes_total") == 800
    assert sample("dicomgw_instances_received_total", outcome="stored") == 4
    assert sample("dicomgw_instances_received_total", outcome="duplicate") == 1
    assert sample("dicomgw_disk_free_bytes") == 12345
    assert sample("dicomgw_disk_used_ratio") == 0.42
    assert sample("dicomgw_disk_refusing") == 0
    assert receiver.disk.measured == 2
    assert sample("dicomgw_forward_attempts_total", destination="pacs") == 6
    assert sample("dicomgw_forward_delivered_total", destination="pacs") == 4
    assert sample("dicomgw_forward_delivered_bytes_total", destination="pacs") == 4000
    assert sample("dicomgw_forward_failures_total", destination="pacs") == 2
    assert sample("dicomgw_forward_dead_letter_total", destination="pacs") == 1

    receiver.ingest.stored = 10
    receiver.disk.refusing = True
    first.delivered = 5
    update()
    assert sample("dicomgw_instances_received_total", outcome="stored") == 10
    assert sample("dicomgw_disk_refusing") == 1
    assert sample("dicomgw_forward_delivered_total", destination="pacs") == 5
    # The destination's settings changed: a new runner counts from 0 again.
    forwarder.runners[1] = FakeRunner("pacs", delivered=2)
    update()
    assert sample("dicomgw_forward_delivered_total", destination="pacs") == 7


def test_latencies_are_observed_at_the_event() -> None:
    registry = CollectorRegistry()
    metrics = ServeMetrics(registry)
    metrics.observe_answered(C_STORE_RQ, 0.003, 0)
    metrics.observe_answered(C_STORE_RQ, 0.2, 0xA700)
    metrics.observe_answered(C_STORE_RQ, 0.1, 0xA700)
    metrics.observe_answered(C_ECHO_RQ, 0.001, 0)  # not a C-STORE: not in its histogram
    metrics.observe_send("pacs", 0.05)
    store = "dicomgw_cstore_duration_seconds_count"
    assert registry.get_sample_value(store, {"outcome": "success"}) == 1
    assert registry.get_sample_value(store, {"outcome": "failure"}) == 2
    failures = "dicomgw_store_failures_total"
    assert registry.get_sample_value(failures, {"status": "0xA700"}) == 2
    send = "dicomgw_forward_send_duration_seconds_count"
    assert registry.get_sample_value(send, {"destination": "pacs"}) == 1


# -- end to end: one scrape of a running gateway ------------------------------------------

FAST = {
    "DICOMGW_FORWARDER__BACKOFF_INITIAL_S": "0.2",
    "DICOMGW_FORWARDER__BACKOFF_MAX_S": "1",
    "DICOMGW_FORWARDER__CIRCUIT_FAILURES": "2",
    "DICOMGW_FORWARDER__CIRCUIT_PROBE_S": "0.3",
}


def destinations_yaml(pacs_port: int, down_port: int) -> str:
    """'pacs' up, 'down' refusing connections; every instance goes to both.

    NOTE: 'down' waits for its series to be complete, so that its circuit opens
    after the instances are in: an open circuit's probe loop can starve the
    sending pynetdicom of CPU. It has one worker: with two, their circuit_state
    updates race and the database may say closed while the circuit is open.
    """
    dimse = "type: dimse, ae_title: IOPSINK, host: 127.0.0.1"
    return (
        "destinations:\n"
        f"  - {{name: pacs, {dimse}, port: {pacs_port}}}\n"
        f"  - {{name: down, {dimse}, port: {down_port}, max_parallel: 1}}\n"
        "routes:\n"
        "  - {name: to-pacs, match: {}, destinations: [pacs]}\n"
        "  - {name: to-down, match: {}, destinations: [down], granularity: series,\n"
        "     quiet_period_s: 1}\n"
    )


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A port that refuses connections: bound, so that nothing else takes it, but
    not listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def scrape(gateway: Gateway) -> tuple[str, Samples]:
    resp = httpx.get(f"http://127.0.0.1:{gateway.api_port}/metrics", headers=BEARER, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.text, parse(resp.text)


def scrape_until(
    gateway: Gateway, done: Callable[[Samples], bool], timeout: float = 60
) -> tuple[str, Samples]:
    deadline = time.monotonic() + timeout
    while True:
        text, samples = scrape(gateway)
        if done(samples) or time.monotonic() > deadline:
            return text, samples
        time.sleep(0.25)


def rejected_association(gateway: Gateway) -> None:
    assert exchange(gateway.dimse_port, associate_rq(called="NOT-THE-GATEWAY")) == RJ_CALLED_AE


def refused_store(gateway: Gateway) -> tuple[set[str], int]:
    """A C-STORE whose data set is not the one its command announced (0xA900): the
    UIDs involved, and the data set's size."""
    announced, sent = make_dataset(), make_dataset()
    data = encode_dataset(sent)
    with raw_association(gateway.dimse_port) as raw:
        raw.send(c_store_command(announced.SOPInstanceUID))
        raw.send(p_data(pdv(1, MCH_DATASET_LAST, data)))
        assert store_status(raw.read_pdu()) == 0xA900
    uids = {announced.SOPInstanceUID, sent.SOPInstanceUID, sent.StudyInstanceUID}
    return uids | {sent.SeriesInstanceUID}, len(data)


STUDY_QUERY = Dataset()
STUDY_QUERY.QueryRetrieveLevel, STUDY_QUERY.StudyInstanceUID = "STUDY", ""


def query_studies(gateway: Gateway) -> list[int]:
    """A study-level C-FIND for everything: the statuses answered."""
    ae = AE(ae_title="IOPQR")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", gateway.dimse_port, ae_title="DICOMGW")
    assert assoc.is_established
    try:
        return [
            int(status.Status)
            for status, _ in assoc.send_c_find(
                STUDY_QUERY, StudyRootQueryRetrieveInformationModelFind
            )
        ]
    finally:
        assoc.release()


def api_traffic(gateway: Gateway) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{gateway.api_port}/api/v1") as client:
        login = client.post("/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
        assert login.status_code == 200
        csrf = {"X-CSRF-Token": login.json()["csrf_token"]}
        assert client.delete("/me/sessions/987654", headers=csrf).status_code == 404


def phi_and_identifiers(items: Iterable[Any]) -> set[str]:
    values = {"Müller", "Jörg", "IOP-0001", "ACC-IOP-1", "IOPSCU", "IOPSINK", "127.0.0.1"}
    for item in items:
        values |= {item.sop_instance_uid, item.study_instance_uid, item.series_instance_uid}
    return values


@pytest.fixture
def peer() -> Iterator[Peer]:
    """Requested before the gateway, so it outlives it: a forwarder stopping finds
    its association to the peer still answering."""
    running = Peer()
    running.start()
    yield running
    running.stop()


def test_one_scrape_shows_every_role(
    peer: Peer, gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    with refusing_port() as down_port:
        gateway = gateway_factory(
            destinations_yaml(peer.port, down_port),
            DICOMGW_API__METRICS_TOKEN=TOKEN,
            DICOMGW_API__WORKERS="2",
            DICOMGW_DIMSE__QUERY_AE_TITLES="[IOPQR]",
            **FAST,
        )
        gateway.start()
        items = small_images(tmp_path, 5)
        outcomes = send_with_pynetdicom(items, gateway.dimse_port)
        assert set(outcomes.values()) == {0}, outcomes
        assert query_studies(gateway) == [0xFF00, 0x0000]
        rejected_association(gateway)
        refused_uids, refused_size = refused_store(gateway)
        api_traffic(gateway)
        n = len(items)

        def settled(s: Samples) -> bool:
            return (
                value(s, "dicomgw_forward_delivered_total", destination="pacs") == n
                and value(s, "dicomgw_associations_active") == 0
                and value(s, "dicomgw_forward_circuit_open", destination="down") == 1
                # (the counters reach the files up to a second after the event)
                and (value(s, "dicomgw_forward_failures_total", destination="down") or 0) >= 2
                and value(s, "dicomgw_associations_rejected_total", reason="called-ae-title") == 1
            )

        text, samples = scrape_until(gateway, settled)
        assert settled(samples), text

    # The receiver.
    assert value(samples, "dicomgw_instances_received_total", outcome="stored") == n
    assert value(samples, "dicomgw_associations_total") == 3  # stores, the refused one, C-FIND
    assert value(samples, "dicomgw_associations_active") == 0
    assert gateway.dsn is not None
    with psycopg.connect(gateway.dsn) as conn:
        row = conn.execute("SELECT sum(dataset_size) FROM instances").fetchone()
    sizes = float(row[0]) if row else 0.0
    identifier = encode(STUDY_QUERY, True, True)  # a C-FIND's data set is received too
    assert identifier is not None
    assert value(samples, "dicomgw_received_dataset_bytes_total") == (
        sizes + refused_size + len(identifier)
    )
    assert cast(float, value(samples, "dicomgw_received_bytes_total")) > sizes
    assert value(samples, "dicomgw_cstore_duration_seconds_count", outcome="success") == n
    assert value(samples, "dicomgw_cstore_duration_seconds_count", outcome="failure") == 1
    assert value(samples, "dicomgw_store_failures_total", status="0xA900") == 1
    assert value(samples, "dicomgw_dimse_queries_total", status="0x0000") == 1
    assert value(samples, "dicomgw_cfind_duration_seconds_count") == 1
    assert value(samples, "dicomgw_index_batch_size_sum") == n
    assert cast(float, value(samples, "dicomgw_index_batch_size_count")) >= 1
    assert cast(float, value(samples, "dicomgw_index_batch_duration_seconds_count")) >= 1
    assert cast(float, value(samples, "dicomgw_disk_free_bytes")) > 0
    assert value(samples, "dicomgw_disk_refusing") == 0
    # The forwarder: everything delivered to one destination, the other down.
    assert value(samples, "dicomgw_forward_attempts_total", destination="pacs") == n
    assert value(samples, "dicomgw_forward_failures_total", destination="pacs") == 0
    assert value(samples, "dicomgw_forward_delivered_bytes_total", destination="pacs") == sizes
    assert value(samples, "dicomgw_forward_circuit_open", destination="pacs") == 0
    assert cast(float, value(samples, "dicomgw_forward_failures_total", destination="down")) >= 2
    sends = "dicomgw_forward_send_duration_seconds_count"
    assert cast(float, value(samples, sends, destination="pacs")) >= 1
    waiting = sum(
        cast(float, value(samples, "dicomgw_queue_jobs", destination="down", state=state))
        for state in ("pending", "leased")
    )
    assert waiting == n
    assert value(samples, "dicomgw_queue_jobs", destination="pacs", state="pending") == 0
    oldest = value(samples, "dicomgw_queue_oldest_age_seconds", destination="down", state="pending")
    assert cast(float, oldest) > 0
    assert value(samples, "dicomgw_database_up") == 1
    # The API: requests summed over its two workers, by route template.
    requests = "dicomgw_api_request_duration_seconds_count"
    login = value(samples, requests, method="POST", route="/api/v1/auth/login", status="200")
    assert login == 1
    assert value(samples, requests, method="DELETE", route=SESSION_ROUTE, status="404") == 1
    # Gauges written by serve are reported once, not once per process.
    assert not any(label == "pid" for (_, pairs) in samples for label, _ in pairs)
    # No PHI, no identifiers, in any label.
    labels = {v for (_, pairs) in samples for _, v in pairs}
    identifiers = phi_and_identifiers(items) | refused_uids | {"RAWSCU", "TEST^RECEIVER"}
    leaked = {s for s in identifiers for v in labels if s in v}
    assert leaked == set()
    assert not any("987654" in v for v in labels)
