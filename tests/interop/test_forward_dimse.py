"""DimseSender against real peers: pynetdicom's byte-exact sink (with chosen statuses
and contexts), DCMTK's storescp, and dicom-gw's own receiver.

What must hold: the data set bytes a peer receives are the stored ones (SHA-256);
one association carries many C-STOREs; every status, refusal and failure maps to
the right outcome; nothing counts as delivered without a Success or warning
status; a corrupted stored file is never sent. Everything runs on uvloop."""

from __future__ import annotations

import asyncio
import hashlib
import io
import subprocess
from collections.abc import Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pydicom
import pytest
import uvloop
from pydicom.uid import JPEGBaseline8Bit

from dicomgw._core import crc32c
from dicomgw.config import DimseDestination
from dicomgw.send.convert import convert_dataset
from dicomgw.send.delivery import Outcome, StoredInstance
from dicomgw.send.dimse import DimseSender, EchoFailed
from dicomgw.storage.part10 import parse_file_meta
from tests.gateway import Gateway, free_port, wait_listening
from tests.interop.corpus import (
    CT_IMAGE,
    EXPLICIT_LE,
    IMPLICIT_LE,
    Peer,
    build_corpus,
    dcmtk_env,
    small_images,
    stored_files,
)
from tests.support.wait import wait_until

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """On uvloop, the loop the forwarder runs on."""
    return uvloop.run(coro)


def stored(path: Path, n: int = 0) -> StoredInstance:
    """A Part 10 file as the index would describe it: the data set is what follows
    the File Meta group; its checksum is CRC-32C."""
    data = path.read_bytes()
    meta = parse_file_meta(data[:65536])
    dataset = data[meta.dataset_offset :]
    return StoredInstance(
        job_id=n,
        instance_id=n,
        sop_class_uid=meta.media_storage_sop_class_uid,
        sop_instance_uid=meta.media_storage_sop_instance_uid,
        transfer_syntax_uid=meta.transfer_syntax_uid,
        path=path,
        dataset_size=len(dataset),
        checksum=f"crc32c:{crc32c(dataset):08x}",
    )


def dataset_sha256(item: StoredInstance) -> str:
    return hashlib.sha256(item.path.read_bytes()[-item.dataset_size :]).hexdigest()


def images(dest: Path, count: int, modality: str = "CT", rows: int = 32) -> list[StoredInstance]:
    return [stored(i.path, n) for n, i in enumerate(small_images(dest, count, modality, rows))]


def destination(port: int, **options: Any) -> DimseDestination:
    settings: dict[str, Any] = {
        "name": "peer",
        "ae_title": "IOPSINK",
        "host": "127.0.0.1",
        "port": port,
        "calling_ae_title": "FWDTEST",
        "connect_timeout_s": 5.0,
        "network_timeout_s": 10.0,
        **options,
    }
    return DimseDestination(**settings)


async def send_batches(
    target: DimseDestination, *batches: Sequence[StoredInstance], pause_s: float = 0
) -> list[Outcome]:
    sender = DimseSender(target)
    outcomes: list[Outcome] = []
    try:
        for batch in batches:
            outcomes += await sender.send(batch)
            await asyncio.sleep(pause_s)
    finally:
        await sender.close()
    return outcomes


@pytest.fixture
def peer() -> Iterator[Peer]:
    running = Peer()
    running.start()
    yield running
    running.stop()


# -- pynetdicom: bytes, reuse, statuses, refusals ----------------------------------------


def test_corpus_arrives_byte_exact(tmp_path: Path, peer: Peer) -> None:
    """Every corpus file (generated and pydicom's, many transfer syntaxes) whose SOP
    class the peer supports arrives byte for byte, in its stored transfer syntax."""
    corpus = build_corpus(tmp_path / "corpus")
    items = [stored(item.path, n) for n, item in enumerate(corpus.items)]
    batches = [items[k : k + 32] for k in range(0, len(items), 32)]
    outcomes = run(send_batches(destination(peer.port), *batches))
    delivered = 0
    for item, outcome in zip(items, outcomes, strict=True):
        if outcome.kind == "delivered":
            delivered += 1
            received = peer.received[item.sop_instance_uid]
            assert received.sha256 == dataset_sha256(item), item.path
            assert received.transfer_syntax == item.transfer_syntax_uid
            assert (outcome.status, outcome.converted_to) == (0, None)
        else:
            # pynetdicom's sink knows only the standard storage SOP classes.
            assert outcome.kind == "permanent", outcome
            assert "not accepted by the peer" in outcome.message, outcome
    generated = [i for i, c in zip(items, corpus.items, strict=True) if c.name.startswith("gen/")]
    assert all(i.sop_instance_uid in peer.received for i in generated)
    assert delivered >= len(items) * 3 // 4, corpus.summary()


def test_one_association_for_many_stores(tmp_path: Path, peer: Peer) -> None:
    items = images(tmp_path, 30)
    outcomes = run(send_batches(destination(peer.port), items[:10], items[10:20], items[20:]))
    assert [o.kind for o in outcomes] == ["delivered"] * 30
    assert all(peer.received[i.sop_instance_uid].sha256 == dataset_sha256(i) for i in items)
    wait_until(lambda: peer.releases == 1)
    assert (peer.associations, peer.releases) == (1, 1)


class Withdrawing:
    """A Progress that withdraws ``withdrawn`` and notes each answer as it comes."""

    def __init__(self, withdrawn: set[int], peer: Peer) -> None:
        self.withdrawn = withdrawn
        self.peer = peer
        self.answers: list[tuple[int, str, int]] = []

    def wanted(self, item: StoredInstance) -> bool:
        return item.job_id not in self.withdrawn

    def answered(self, item: StoredInstance, outcome: Outcome) -> None:
        # What the peer had stored when the answer was told: one more each time.
        self.answers.append((item.job_id, outcome.kind, len(self.peer.counts)))


def test_progress_is_told_each_answer_and_withdrawn_items_are_not_sent(
    tmp_path: Path, peer: Peer
) -> None:
    items = images(tmp_path, 5)
    progress = Withdrawing({1, 3}, peer)

    async def send() -> list[Outcome]:
        sender = DimseSender(destination(peer.port))
        try:
            return await sender.send(items, progress)
        finally:
            await sender.close()

    outcomes = run(send())
    assert [o.kind for o in outcomes] == ["delivered", "withdrawn"] * 2 + ["delivered"]
    assert set(peer.counts) == {items[n].sop_instance_uid for n in (0, 2, 4)}
    assert progress.answers == [(0, "delivered", 1), (2, "delivered", 2), (4, "delivered", 3)]


def test_reopens_only_for_new_contexts(tmp_path: Path, peer: Peer) -> None:
    """CT, then MR (not proposed before: a new association, proposing CT too), then
    CT again (the open association has it)."""
    ct, mr = images(tmp_path / "ct", 4), images(tmp_path / "mr", 4, "MR")
    outcomes = run(send_batches(destination(peer.port), ct[:2], mr, ct[2:]))
    assert {o.kind for o in outcomes} == {"delivered"}
    assert peer.associations == 2


def test_idle_association_is_released(tmp_path: Path, peer: Peer) -> None:
    items = images(tmp_path, 2)
    target = destination(peer.port, idle_release_s=0.2)
    outcomes = run(send_batches(target, items[:1], items[1:], pause_s=0.6))
    assert {o.kind for o in outcomes} == {"delivered"}
    wait_until(lambda: peer.releases == 2)
    assert (peer.associations, peer.releases) == (2, 2)


def test_peer_ended_association_is_reopened(tmp_path: Path, peer: Peer) -> None:
    """An association the peer aborted while idle is noticed before the next send."""
    items = images(tmp_path, 4)

    async def scenario() -> list[Outcome]:
        sender = DimseSender(destination(peer.port))
        try:
            first = await sender.send(items[:2])
            await asyncio.to_thread(peer.abort_all)
            await asyncio.sleep(0.3)
            return first + await sender.send(items[2:])
        finally:
            await sender.close()

    assert [o.kind for o in run(scenario())] == ["delivered"] * 4
    assert peer.associations == 2


@pytest.mark.parametrize(
    ("status", "kind", "warning"),
    [
        (0xA700, "transient", False),
        (0xA7FF, "transient", False),
        (0x0213, "transient", False),
        (0xA900, "permanent", False),
        (0xC000, "permanent", False),
        (0xC123, "permanent", False),
        (0x0122, "permanent", False),
        (0xB000, "delivered", True),
        (0xB006, "delivered", True),
        (0xB007, "delivered", True),
        (0x0111, "delivered", True),
    ],
)
def test_status_classification(tmp_path: Path, status: int, kind: str, warning: bool) -> None:
    items = images(tmp_path, 3)
    scp = Peer(statuses={items[1].sop_instance_uid: status})
    scp.start()
    try:
        outcomes = run(send_batches(destination(scp.port), items))
    finally:
        scp.stop()
    assert [o.kind for o in outcomes] == ["delivered", kind, "delivered"]
    assert (outcomes[1].status, outcomes[1].warning) == (status, warning)
    assert f"0x{status:04X}" in outcomes[1].message


def test_corrupted_file_is_not_sent(tmp_path: Path, peer: Peer) -> None:
    items = images(tmp_path, 3)
    data = bytearray(items[1].path.read_bytes())
    data[-10] ^= 0xFF
    items[1].path.write_bytes(bytes(data))
    outcomes = run(send_batches(destination(peer.port), items))
    assert [o.kind for o in outcomes] == ["delivered", "permanent", "delivered"]
    assert outcomes[1].status is None
    assert "is damaged: data set checksum crc32c:" in outcomes[1].message
    assert "aborted before its last PDU" in outcomes[1].message
    assert items[1].sop_instance_uid not in peer.received
    assert {items[0].sop_instance_uid, items[2].sop_instance_uid} <= set(peer.received)


def test_missing_file_is_permanent(tmp_path: Path, peer: Peer) -> None:
    items = images(tmp_path, 2)
    items[0].path.unlink()
    outcomes = run(send_batches(destination(peer.port), items))
    assert [o.kind for o in outcomes] == ["permanent", "delivered"]
    assert "checksum unreadable (No such file or directory)" in outcomes[0].message


def test_converted_when_stored_syntax_refused(tmp_path: Path) -> None:
    """The peer takes CT in Implicit VR only: the Explicit VR data set is converted."""
    item = images(tmp_path, 1)[0]
    scp = Peer(contexts=[(CT_IMAGE, [IMPLICIT_LE])])
    scp.start()
    try:
        (outcome,) = run(send_batches(destination(scp.port), [item]))
    finally:
        scp.stop()
    assert (outcome.kind, outcome.status, outcome.converted_to) == ("delivered", 0, IMPLICIT_LE)
    received = scp.received[item.sop_instance_uid]
    assert received.transfer_syntax == IMPLICIT_LE
    assert received.dataset == convert_dataset(
        item.path, item.dataset_size, EXPLICIT_LE, IMPLICIT_LE
    )
    ds = pydicom.filereader.read_dataset(io.BytesIO(received.dataset), True, True)
    assert ds.SOPInstanceUID == item.sop_instance_uid


def test_nothing_acceptable_is_permanent(tmp_path: Path) -> None:
    ct = images(tmp_path / "ct", 1)[0]
    mr = images(tmp_path / "mr", 1, "MR")[0]
    scp = Peer(contexts=[(CT_IMAGE, [str(JPEGBaseline8Bit)])])
    scp.start()
    try:
        outcomes = run(send_batches(destination(scp.port), [ct, mr]))
    finally:
        scp.stop()
    assert [(o.kind, o.status) for o in outcomes] == [("permanent", None)] * 2
    assert f"SOP class {CT_IMAGE} / transfer syntax {EXPLICIT_LE} not accepted" in (
        outcomes[0].message
    )
    assert "transfer-syntaxes-not-supported" in outcomes[0].message
    assert "abstract-syntax-not-supported" in outcomes[1].message
    assert not scp.received


def test_peer_down_is_transient(tmp_path: Path) -> None:
    items = images(tmp_path, 2)
    outcomes = run(send_batches(destination(free_port()), items))
    assert [(o.kind, o.status) for o in outcomes] == [("transient", None)] * 2
    assert "Connection refused" in outcomes[0].message


def test_rejected_association_is_transient_with_reason(tmp_path: Path, peer: Peer) -> None:
    items = images(tmp_path, 2)
    target = destination(peer.port, ae_title="NOTTHESINK")
    outcomes = run(send_batches(target, items))
    assert [o.kind for o in outcomes] == ["transient"] * 2
    assert "called-AE-title-not-recognized" in outcomes[0].message
    assert "permanent" in outcomes[0].message
    with pytest.raises(EchoFailed, match="called-AE-title-not-recognized"):
        run(DimseSender(target).echo())


def test_association_broken_mid_batch(tmp_path: Path) -> None:
    """The peer stops answering at the third instance: the first two are delivered,
    the rest transient (the third was sent, but no Success came back)."""
    items = images(tmp_path, 5)
    scp = Peer(delays={items[2].sop_instance_uid: 2.0})
    scp.start()
    try:
        outcomes = run(send_batches(destination(scp.port, network_timeout_s=0.5), items))
    finally:
        scp.stop()
    assert [o.kind for o in outcomes] == ["delivered"] * 2 + ["transient"] * 3
    assert all(o.status is None for o in outcomes[2:])
    assert "network_timeout_s" in outcomes[2].message


def test_echo(tmp_path: Path, peer: Peer) -> None:
    """On its own association when none is open, else on the open one."""
    items = images(tmp_path, 1)

    async def scenario() -> tuple[float, float]:
        sender = DimseSender(destination(peer.port))
        try:
            alone = await sender.echo()
            await sender.send(items)
            return alone, await sender.echo()
        finally:
            await sender.close()

    alone, shared = run(scenario())
    assert 0 < alone < 5 and 0 < shared < 5
    wait_until(lambda: peer.releases == 2)
    assert (peer.associations, peer.releases) == (2, 2)
    with pytest.raises(EchoFailed, match="Connection refused"):
        run(DimseSender(destination(free_port())).echo())


# -- DCMTK storescp ---------------------------------------------------------------------


def storescp(dcmtk: Path, out: Path, *options: str) -> tuple[subprocess.Popen[str], int]:
    """storescp on a free port (TCP_NODELAY=1), its output in out/../storescp.log."""
    port = free_port()
    with (out.parent / "storescp.log").open("a") as log:
        proc = subprocess.Popen(
            [dcmtk / "storescp", "-aet", "STORESCP", "-dhl", "-od", str(out), *options, str(port)],
            env=dcmtk_env(),
            stdout=log,
            stderr=log,
            text=True,
        )
    wait_listening(port, proc)
    return proc, port


@pytest.fixture
def bit_preserving_storescp(dcmtk: Path, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    out = tmp_path / "storescp"
    out.mkdir()
    proc, port = storescp(dcmtk, out, "+B")
    yield port, out
    proc.terminate()
    proc.wait(10)


def test_storescp_stores_byte_exact(
    tmp_path: Path, bit_preserving_storescp: tuple[int, Path]
) -> None:
    """storescp +B writes the data set exactly as received, after its own File Meta."""
    port, out = bit_preserving_storescp
    items = images(tmp_path / "ct", 8, rows=256)
    implicit = tmp_path / "implicit.dcm"
    ds = pydicom.dcmread(items[0].path)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.UID(IMPLICIT_LE)
    ds.save_as(implicit, enforce_file_format=True)
    items.append(stored(implicit, 99))
    target = destination(port, ae_title="STORESCP")
    outcomes = run(send_batches(target, items[:4], items[4:]))
    assert [o.kind for o in outcomes] == ["delivered"] * len(items)
    files = {path.name: path for path in out.iterdir()}
    for item in items:
        (name,) = [n for n in files if item.sop_instance_uid in n]
        data = files[name].read_bytes()
        dataset = data[parse_file_meta(data[:65536]).dataset_offset :]
        assert hashlib.sha256(dataset).hexdigest() == dataset_sha256(item), name


def test_storescp_ignore_and_echo(tmp_path: Path, dcmtk: Path) -> None:
    out = tmp_path / "storescp"
    out.mkdir()
    proc, port = storescp(dcmtk, out, "--ignore")
    try:
        items = images(tmp_path / "ct", 20, rows=128)
        target = destination(port, ae_title="STORESCP")

        async def scenario() -> tuple[float, list[Outcome]]:
            sender = DimseSender(target)
            try:
                rtt = await sender.echo()
                return rtt, await sender.send(items)
            finally:
                await sender.close()

        rtt, outcomes = run(scenario())
    finally:
        proc.terminate()
        proc.wait(10)
    assert rtt > 0
    assert [o.kind for o in outcomes] == ["delivered"] * 20
    assert not list(out.iterdir()), "storescp --ignore stored something"


# -- dicom-gw's own receiver ---------------------------------------------------------------


def test_own_receiver_stores_byte_exact(tmp_path: Path, session_gateway: Gateway) -> None:
    items = images(tmp_path, 6, rows=128)
    target = destination(session_gateway.dimse_port, ae_title=session_gateway.ae_title)
    outcomes = run(send_batches(target, items[:3], items[3:]))
    assert [(o.kind, o.status) for o in outcomes] == [("delivered", 0)] * 6
    files = stored_files(session_gateway.storage)
    for item in items:
        (path,) = files[item.sop_instance_uid]
        data = path.read_bytes()
        dataset = data[parse_file_meta(data[:65536]).dataset_offset :]
        assert hashlib.sha256(dataset).hexdigest() == dataset_sha256(item)


def test_own_receiver_rejects_wrong_called_ae(tmp_path: Path, session_gateway: Gateway) -> None:
    items = images(tmp_path, 1)
    target = destination(session_gateway.dimse_port, ae_title="NOTDICOMGW")
    (outcome,) = run(send_batches(target, items))
    assert outcome.kind == "transient"
    assert "called-AE-title-not-recognized" in outcome.message
