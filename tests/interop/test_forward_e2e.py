"""The whole path: storescu -> dicom-gw (receiver, index, queue, forwarder) -> peers,
set up from the config file alone.

What must hold: every instance the gateway acknowledged reaches every destination
its routes name, with the data set bytes unchanged; a destination that is down
gets everything once it is back; a refusing one dead-letters after its budget; a
dead destination does not hold up a healthy one; a forwarder killed mid-send
loses nothing; forwarders sharing a database never send one job twice at once.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from tests.cli import CLI
from tests.gateway import Gateway, free_port
from tests.interop.conftest import Reference
from tests.interop.corpus import Item, Peer, send_with_pynetdicom, small_images, storescu
from tests.interop.orthanc import running_orthanc

pytestmark = pytest.mark.slow

# Fast retries so the tests see several attempts in seconds.
FAST = {
    "DICOMGW_FORWARDER__BACKOFF_INITIAL_S": "0.2",
    "DICOMGW_FORWARDER__BACKOFF_MAX_S": "1",
    "DICOMGW_FORWARDER__CIRCUIT_FAILURES": "2",
    "DICOMGW_FORWARDER__CIRCUIT_PROBE_S": "0.3",
}


def dimse(name: str, port: int, ae_title: str = "IOPSINK", **extra: object) -> str:
    lines = [
        f"  - name: {name}",
        "    type: dimse",
        f"    ae_title: {ae_title}",
        "    host: 127.0.0.1",
        f"    port: {port}",
        *(f"    {k}: {v}" for k, v in extra.items()),
    ]
    return "\n".join(lines) + "\n"


def everything_to(*names: str) -> str:
    return (
        f"routes:\n  - name: everything\n    match: {{}}\n    destinations: [{', '.join(names)}]\n"
    )


def jobs_by_state(dsn: str, destination: str | None = None) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT j.state, count(*) FROM forward_jobs j "
            "JOIN destinations d ON d.id = j.destination_id "
            "WHERE %s::text IS NULL OR d.name = %s GROUP BY j.state",
            (destination, destination),
        ).fetchall()
    return {state: n for state, n in rows}


def wait_for_jobs(
    gateway: Gateway, expected: dict[str, int], destination: str | None = None, timeout: float = 60
) -> dict[str, int]:
    assert gateway.dsn is not None
    deadline = time.monotonic() + timeout
    while True:
        states = jobs_by_state(gateway.dsn, destination)
        if states == expected or time.monotonic() > deadline:
            return states
        time.sleep(0.1)


def stored_datasets(gateway: Gateway) -> dict[str, bytes]:
    """SOP Instance UID -> the data set bytes as stored (the file's tail)."""
    assert gateway.dsn is not None
    with psycopg.connect(gateway.dsn) as conn:
        rows = conn.execute(
            "SELECT sop_instance_uid, file_path, dataset_size FROM instances"
        ).fetchall()
    return {uid: (gateway.storage / path).read_bytes()[-size:] for uid, path, size in rows}


def send(dcmtk: Path, gateway: Gateway, items: list[Item]) -> None:
    run = storescu(dcmtk, [i.path for i in items], gateway.dimse_port)
    assert run.returncode == 0, run.stderr


@pytest.fixture
def peer() -> Iterator[Peer]:
    running = Peer()
    running.start()
    yield running
    running.stop()


def test_forwarded_byte_exact_over_one_association(
    gateway_factory: Callable[..., Gateway], dcmtk: Path, peer: Peer, tmp_path: Path
) -> None:
    gateway = gateway_factory("destinations:\n" + dimse("pacs", peer.port) + everything_to("pacs"))
    gateway.start()
    items = small_images(tmp_path, 12) + small_images(tmp_path / "mr", 6, modality="MR")
    send(dcmtk, gateway, items)
    assert wait_for_jobs(gateway, {"done": 18}) == {"done": 18}, gateway.log()
    stored = stored_datasets(gateway)
    for item in items:
        uid = item.sop_instance_uid
        assert (
            hashlib.sha256(peer.received[uid].dataset).digest()
            == hashlib.sha256(stored[uid]).digest()
        )
    # storescu sent one by one; the forwarder batches what is queued, and keeps
    # its association between batches.
    assert peer.associations <= 4


def test_varied_corpus_arrives_as_it_was_received(
    gateway_factory: Callable[..., Gateway], peer: Peer, pynetdicom_reference: Reference
) -> None:
    """Every transfer syntax, private tags, odd lengths, undefined-length sequences:
    the data set the peer gets is the one pynetdicom put on the wire to dicom-gw."""
    gateway = gateway_factory("destinations:\n" + dimse("pacs", peer.port) + everything_to("pacs"))
    gateway.start()
    items = pynetdicom_reference.corpus.items
    outcomes = send_with_pynetdicom(items, gateway.dimse_port)
    assert {uid: o for uid, o in outcomes.items() if o != 0} == {}
    n = len(items)
    assert wait_for_jobs(gateway, {"done": n}, timeout=120) == {"done": n}, gateway.log()
    for item in items:
        uid = item.sop_instance_uid
        wire = pynetdicom_reference.wire[uid]
        assert peer.received[uid].sha256 == wire.sha256, item.name
        assert peer.received[uid].transfer_syntax == wire.transfer_syntax, item.name


def process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_idle_forwarder_waits_without_polling(
    gateway_factory: Callable[..., Gateway], dcmtk: Path, peer: Peer, tmp_path: Path
) -> None:
    """With work done and nothing due, the forwarder sleeps until a NOTIFY."""
    gateway = gateway_factory("destinations:\n" + dimse("pacs", peer.port) + everything_to("pacs"))
    gateway.start()
    send(dcmtk, gateway, small_images(tmp_path, 3))
    assert wait_for_jobs(gateway, {"done": 3}) == {"done": 3}
    assert gateway.proc is not None
    time.sleep(1)
    before = process_cpu_s(gateway.proc.pid)
    time.sleep(3)
    # A polling loop costs a good part of a core; an idle one, nothing measurable.
    assert process_cpu_s(gateway.proc.pid) - before < 0.15
    send(dcmtk, gateway, small_images(tmp_path / "more", 2))
    assert wait_for_jobs(gateway, {"done": 5}, timeout=10) == {"done": 5}


def test_rules_test_shows_the_routes(
    gateway_factory: Callable[..., Gateway], peer: Peer, tmp_path: Path
) -> None:
    config = (
        "destinations:\n"
        + dimse("pacs", peer.port)
        + dimse("ct-archive", peer.port)
        + everything_to("pacs")
        + "  - name: ct\n    match: {modality: CT, calling_ae: glob:CT_*}\n"
        "    destinations: [ct-archive]\n"
    )
    gateway = gateway_factory(config)
    gateway.start()
    [ct] = small_images(tmp_path, 1)
    env = gateway.env()
    out = subprocess.run(
        [*CLI, "rules", "test", "--calling-ae", "CT_ROOM1", str(ct.path)],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert "2 destination(s)" in out
    assert "rule 'everything' -> pacs" in out
    assert "rule 'ct' -> ct-archive" in out
    out = subprocess.run(
        [*CLI, "rules", "test", "--calling-ae", "MR_ROOM", str(ct.path)],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert "1 destination(s)" in out


def test_destination_down_then_back_gets_everything(
    gateway_factory: Callable[..., Gateway], dcmtk: Path, tmp_path: Path
) -> None:
    port = free_port()
    gateway = gateway_factory(
        "destinations:\n" + dimse("pacs", port) + everything_to("pacs"), **FAST
    )
    gateway.start()
    items = small_images(tmp_path, 8)
    send(dcmtk, gateway, items)
    assert gateway.dsn is not None
    # Several attempts fail (connection refused) and the circuit opens.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with psycopg.connect(gateway.dsn) as conn:
            attempts, circuit = conn.execute(
                "SELECT (SELECT count(*) FROM forward_attempts), "
                "(SELECT circuit_state FROM destinations WHERE name = 'pacs')"
            ).fetchone() or (0, "")
        if attempts >= 2 and circuit == "open":
            break
        time.sleep(0.1)
    assert circuit == "open", gateway.log()
    assert jobs_by_state(gateway.dsn) == {"pending": 8}
    with psycopg.connect(gateway.dsn) as conn:
        [error] = conn.execute("SELECT last_error FROM destinations").fetchone() or [""]
    assert "refused" in error.lower()

    back = Peer(port=port)
    back.start()
    try:
        assert wait_for_jobs(gateway, {"done": 8}) == {"done": 8}, gateway.log()
        assert set(back.received) == {i.sop_instance_uid for i in items}
    finally:
        back.stop()
    with psycopg.connect(gateway.dsn) as conn:
        [circuit] = conn.execute("SELECT circuit_state FROM destinations").fetchone() or [""]
    assert circuit == "closed"


def test_permanent_refusal_dead_letters_with_the_status(
    gateway_factory: Callable[..., Gateway], dcmtk: Path, tmp_path: Path
) -> None:
    items = small_images(tmp_path, 3)
    refused = items[0].sop_instance_uid
    peer = Peer(statuses={refused: 0xC000})
    peer.start()
    try:
        gateway = gateway_factory(
            "destinations:\n" + dimse("pacs", peer.port) + everything_to("pacs"),
            DICOMGW_FORWARDER__PERMANENT_ATTEMPTS="2",
            **FAST,
        )
        gateway.start()
        send(dcmtk, gateway, items)
        assert wait_for_jobs(gateway, {"done": 2, "dead": 1}) == {"done": 2, "dead": 1}
    finally:
        peer.stop()
    assert peer.counts[refused] == 2
    assert gateway.dsn is not None
    with psycopg.connect(gateway.dsn) as conn:
        status, error = conn.execute(
            "SELECT last_status, last_error FROM forward_jobs WHERE state = 'dead'"
        ).fetchone() or (0, "")
    assert status == 0xC000
    assert error


class Blackhole:
    """Accepts TCP connections and never answers: the worst kind of dead peer."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


class Slammer(Blackhole):
    """Accepts TCP connections and closes them at once, counting them."""

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            conn.close()


def circuit_state(gateway: Gateway) -> str:
    with psycopg.connect(gateway.dsn or "") as conn:
        row = conn.execute("SELECT circuit_state FROM destinations").fetchone()
    return str(row[0]) if row else ""


def test_open_circuit_probes_at_its_interval(
    gateway_factory: Callable[..., Gateway], dcmtk: Path, tmp_path: Path
) -> None:
    slammer = Slammer()
    try:
        gateway = gateway_factory(
            "destinations:\n" + dimse("pacs", slammer.port, max_parallel=1) + everything_to("pacs"),
            **FAST,
        )
        gateway.start()
        send(dcmtk, gateway, small_images(tmp_path, 3))
        deadline = time.monotonic() + 20
        while circuit_state(gateway) != "open" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert circuit_state(gateway) == "open", gateway.log()
        # More work arriving while it is open must not make it probe faster.
        send(dcmtk, gateway, small_images(tmp_path / "more", 3))
        before = len(slammer.conns)
        time.sleep(3)
        probes = len(slammer.conns) - before
        # circuit_probe_s is 0.3: about 10 in 3 s; a loop would make thousands.
        assert 3 <= probes <= 20, probes
        assert circuit_state(gateway) == "open"
    finally:
        slammer.close()


def test_dead_destination_does_not_hold_up_a_healthy_one(
    gateway_factory: Callable[..., Gateway], dcmtk: Path, peer: Peer, tmp_path: Path
) -> None:
    hole = Blackhole()
    try:
        timeout_s = 30
        config = (
            "destinations:\n"
            + dimse("hole", hole.port, network_timeout_s=timeout_s, connect_timeout_s=timeout_s)
            + dimse("pacs", peer.port)
            + everything_to("hole", "pacs")
        )
        gateway = gateway_factory(config)
        gateway.start()
        items = small_images(tmp_path, 20)
        started = time.monotonic()
        send(dcmtk, gateway, items)
        states = wait_for_jobs(gateway, {"done": 20}, destination="pacs", timeout=timeout_s)
        healthy_s = time.monotonic() - started
        assert states == {"done": 20}, gateway.log()
        # The hole's workers are still waiting for its answer meanwhile.
        assert healthy_s < timeout_s
        assert "done" not in jobs_by_state(gateway.dsn or "", "hole")
    finally:
        hole.close()


def test_forwarder_killed_mid_send_loses_nothing(
    gateway_factory: Callable[..., Gateway], dcmtk: Path, tmp_path: Path
) -> None:
    peer = Peer(delay_s=0.05)
    peer.start()
    try:
        gateway = gateway_factory(
            "destinations:\n" + dimse("pacs", peer.port, max_parallel=1) + everything_to("pacs")
        )
        gateway.start()
        items = small_images(tmp_path, 40)
        send(dcmtk, gateway, items)
        deadline = time.monotonic() + 30
        while len(peer.received) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert 5 <= len(peer.received) < 40, "the kill should land mid-send"
        gateway.kill()
        gateway.start()
        assert wait_for_jobs(gateway, {"done": 40}) == {"done": 40}, gateway.log()
        assert set(peer.received) == {i.sop_instance_uid for i in items}
    finally:
        peer.stop()


def test_forwarders_sharing_a_database_never_send_a_job_twice(
    gateway_factory: Callable[..., Gateway], dcmtk: Path, tmp_path: Path
) -> None:
    peer = Peer(delay_s=0.01)
    peer.start()
    extra: list[subprocess.Popen[str]] = []
    try:
        gateway = gateway_factory(
            "destinations:\n" + dimse("pacs", peer.port, max_parallel=3) + everything_to("pacs"),
            DICOMGW_FORWARDER__BATCH_SIZE="4",
        )
        gateway.start()
        for n in range(2):
            log = (gateway.state_dir / f"forwarder-{n}.log").open("w")
            extra.append(
                subprocess.Popen(
                    [*CLI, "forwarder"], env=gateway.env(), stdout=log, stderr=log, text=True
                )
            )
        time.sleep(2)  # the extra forwarders are listening before the work arrives
        items = small_images(tmp_path, 60)
        send(dcmtk, gateway, items)
        assert wait_for_jobs(gateway, {"done": 60}) == {"done": 60}, gateway.log()
        assert peer.overlaps == []
        assert set(peer.counts.values()) == {1}, "some instance was sent twice"
        assert len(peer.counts) == 60
        assert gateway.dsn is not None
        with psycopg.connect(gateway.dsn) as conn:
            workers = conn.execute(
                "SELECT count(DISTINCT split_part(worker, '/', 2)) FROM forward_attempts"
            ).fetchone()
        assert workers is not None and workers[0] >= 2, "the work was not shared"
    finally:
        for proc in extra:
            proc.send_signal(signal.SIGTERM)
        for proc in extra:
            try:
                assert proc.wait(30) == 0
            except subprocess.TimeoutExpired:
                proc.kill()
        peer.stop()


def test_a_batch_slower_than_its_lease_is_delivered(
    gateway_factory: Callable[..., Gateway], dcmtk: Path, tmp_path: Path
) -> None:
    """A peer that takes 2 s per C-STORE, leases of 5 s, two forwarders: the batch
    takes four leases to send, yet its leases are renewed and each outcome is
    recorded as it arrives, so every job is done, once."""
    peer = Peer(delay_s=2.0)
    peer.start()
    extra: subprocess.Popen[str] | None = None
    try:
        gateway = gateway_factory(
            "destinations:\n" + dimse("pacs", peer.port, max_parallel=1) + everything_to("pacs"),
            DICOMGW_FORWARDER__LEASE_S="5",
        )
        gateway.start()
        log = (gateway.state_dir / "forwarder-2.log").open("w")
        extra = subprocess.Popen(
            [*CLI, "forwarder"], env=gateway.env(), stdout=log, stderr=log, text=True
        )
        items = small_images(tmp_path, 10)
        send(dcmtk, gateway, items)
        assert wait_for_jobs(gateway, {"done": 10}, timeout=120) == {"done": 10}, gateway.log()
        assert len(peer.counts) == 10
        assert max(peer.counts.values()) <= 2, peer.counts
        assert gateway.dsn is not None
        with psycopg.connect(gateway.dsn) as conn:
            row = conn.execute("SELECT max(attempts) FROM forward_jobs").fetchone()
        assert row is not None and row[0] <= 2
    finally:
        if extra is not None:
            extra.send_signal(signal.SIGTERM)
            try:
                extra.wait(30)
            except subprocess.TimeoutExpired:
                extra.kill()
        peer.stop()


def test_stowrs_to_orthanc_unchanged(
    gateway_factory: Callable[..., Gateway], dcmtk: Path, tmp_path: Path
) -> None:
    (tmp_path / "orthanc").mkdir()
    with running_orthanc(tmp_path / "orthanc") as orthanc:
        config = (
            "destinations:\n  - name: cloud\n    type: stowrs\n"
            f"    url: {orthanc.dicomweb_url}\n    instances_per_request: 4\n"
            + everything_to("cloud")
        )
        gateway = gateway_factory(config)
        gateway.start()
        items = small_images(tmp_path / "in", 10)
        send(dcmtk, gateway, items)
        assert wait_for_jobs(gateway, {"done": 10}) == {"done": 10}, gateway.log()
        at_orthanc = orthanc.instances()
        assert gateway.dsn is not None
        with psycopg.connect(gateway.dsn) as conn:
            paths = dict(conn.execute("SELECT sop_instance_uid, file_path FROM instances"))
        for item in items:
            # STOW-RS sends the stored Part 10 file; Orthanc 1.10 keeps it as sent.
            sent = orthanc.file(at_orthanc[item.sop_instance_uid])
            assert sent == (gateway.storage / paths[item.sop_instance_uid]).read_bytes()


def test_dimse_to_orthanc(
    gateway_factory: Callable[..., Gateway], dcmtk: Path, tmp_path: Path
) -> None:
    (tmp_path / "orthanc").mkdir()
    with running_orthanc(tmp_path / "orthanc") as orthanc:
        gateway = gateway_factory(
            "destinations:\n"
            + dimse("orthanc", orthanc.dicom_port, ae_title=orthanc.ae_title)
            + everything_to("orthanc")
        )
        gateway.start()
        items = small_images(tmp_path / "in", 6) + small_images(tmp_path / "mr", 4, "MR")
        send(dcmtk, gateway, items)
        assert wait_for_jobs(gateway, {"done": 10}) == {"done": 10}, gateway.log()
        assert set(orthanc.instances()) >= {i.sop_instance_uid for i in items}
