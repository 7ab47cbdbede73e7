"""DimseSender over DICOM TLS (PS3.15 Annex B, BCP 195) against DCMTK's storescp +tls.

What must hold: the data set bytes arrive exactly as stored (storescp +B writes
them as received); echo works over TLS; a missing client certificate, a CA that
did not sign the peer's certificate, a certificate that does not name the host
and a peer that does not speak TLS each fail as transient outcomes with a message
that says what to fix, within the timeouts. Everything runs on uvloop.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dicomgw.association.tls import client_context
from dicomgw.send import dimse
from dicomgw.send.dimse import DimseSender, EchoFailed
from dicomgw.storage.part10 import parse_file_meta
from tests.certs import Pki, make_pki
from tests.gateway import free_port
from tests.interop.test_forward_dimse import (
    dataset_sha256,
    destination,
    images,
    run,
    send_batches,
    storescp,
)

StartPeer = Callable[..., tuple[int, Path]]
"""Starts storescp with these options; its (port, output directory)."""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def start_storescp(dcmtk: Path, tmp_path: Path) -> Iterator[StartPeer]:
    running: list[subprocess.Popen[str]] = []

    def start(*options: str) -> tuple[int, Path]:
        out = tmp_path / f"storescp-{len(running)}"
        out.mkdir()
        proc, port = storescp(dcmtk, out, *options)
        running.append(proc)
        return port, out

    yield start
    for proc in running:
        proc.terminate()
        proc.wait(10)


def tls_options(pki: Pki, *more: str) -> tuple[str, ...]:
    """storescp +tls with the server certificate, trusting the test CA for clients.

    --require-peer-cert is storescp's default: mutual TLS unless -ic or -vc.
    """
    return ("+tls", str(pki.server_key), str(pki.server_cert), "+cf", str(pki.ca), *more)


def tls_destination(port: int, pki: Pki, client_cert: bool = True, **options: Any) -> Any:
    settings: dict[str, Any] = {"tls": True, "tls_ca_file": str(pki.ca), **options}
    if client_cert:
        settings |= {"tls_cert_file": str(pki.client_cert), "tls_key_file": str(pki.client_key)}
    return destination(port, ae_title="STORESCP", **settings)


def written_sha256(out: Path, sop_instance_uid: str) -> str:
    """SHA-256 of the data set storescp wrote (+B: as received, after its File Meta)."""
    (path,) = [p for p in out.iterdir() if sop_instance_uid in p.name]
    data = path.read_bytes()
    return hashlib.sha256(data[parse_file_meta(data[:65536]).dataset_offset :]).hexdigest()


@pytest.fixture
def tls_1_2_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sender offers TLS 1.2 only: there the server's verdict on the client
    certificate comes within the handshake, under TLS 1.3 with the first read."""

    def capped(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        context = client_context(*args, **kwargs)
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        return context

    monkeypatch.setattr(dimse, "client_context", capped)


@pytest.mark.parametrize("max_pdu", ["4096", "16384", "131072"])
def test_mutual_tls_arrives_byte_exact(
    tmp_path: Path, pki: Pki, start_storescp: StartPeer, max_pdu: str
) -> None:
    """PDUs of every size the peer may ask for, cut across the sender's buffer-fulls."""
    port, out = start_storescp(*tls_options(pki), "+B", "-pdu", max_pdu)
    items = images(tmp_path / "ct", 6, rows=300) + images(tmp_path / "small", 3, rows=8)
    outcomes = run(send_batches(tls_destination(port, pki), items[:4], items[4:]))
    assert [(o.kind, o.status) for o in outcomes] == [("delivered", 0)] * len(items)
    for item in items:
        assert written_sha256(out, item.sop_instance_uid) == dataset_sha256(item)


def test_tls_1_2_arrives_byte_exact(
    tmp_path: Path, pki: Pki, start_storescp: StartPeer, tls_1_2_only: None
) -> None:
    port, out = start_storescp(*tls_options(pki), "+B")
    items = images(tmp_path, 4, rows=256)
    outcomes = run(send_batches(tls_destination(port, pki), items))
    assert [o.kind for o in outcomes] == ["delivered"] * 4
    assert all(written_sha256(out, i.sop_instance_uid) == dataset_sha256(i) for i in items)


def test_damaged_file_is_not_delivered_over_tls(
    tmp_path: Path, pki: Pki, start_storescp: StartPeer
) -> None:
    port, out = start_storescp(*tls_options(pki), "+B")
    items = images(tmp_path, 3, rows=64)
    data = bytearray(items[1].path.read_bytes())
    data[-10] ^= 0xFF
    items[1].path.write_bytes(bytes(data))
    outcomes = run(send_batches(tls_destination(port, pki), items))
    assert [o.kind for o in outcomes] == ["delivered", "permanent", "delivered"]
    assert "is damaged: data set checksum crc32c:" in outcomes[1].message
    for item in (items[0], items[2]):
        assert written_sha256(out, item.sop_instance_uid) == dataset_sha256(item)
    assert not list(out.rglob(f"*{items[1].sop_instance_uid}*"))


def test_echo_over_tls_without_client_certificate(
    tmp_path: Path, pki: Pki, start_storescp: StartPeer
) -> None:
    """A peer that does not ask for a client certificate (-ic); echo alone, then on
    the association a send opened."""
    port, _ = start_storescp(*tls_options(pki, "-ic"), "--ignore")
    target = tls_destination(port, pki, client_cert=False)
    items = images(tmp_path, 3)

    async def scenario() -> tuple[float, list[Any], float]:
        sender = DimseSender(target)
        try:
            alone = await sender.echo()
            outcomes = await sender.send(items)
            return alone, outcomes, await sender.echo()
        finally:
            await sender.close()

    alone, outcomes, shared = run(scenario())
    assert 0 < alone < 5 and 0 < shared < 5
    assert [o.kind for o in outcomes] == ["delivered"] * 3


@pytest.mark.parametrize("version", ["TLS 1.3", "TLS 1.2"])
def test_missing_client_certificate_is_transient_and_says_so(
    tmp_path: Path, pki: Pki, start_storescp: StartPeer, version: str, request: Any
) -> None:
    if version == "TLS 1.2":
        request.getfixturevalue("tls_1_2_only")
    port, out = start_storescp(*tls_options(pki))
    items = images(tmp_path, 2)
    target = tls_destination(port, pki, client_cert=False)
    outcomes = run(send_batches(target, items))
    assert [(o.kind, o.status) for o in outcomes] == [("transient", None)] * 2
    message = outcomes[0].message
    assert message.startswith(f"TLS with STORESCP@127.0.0.1:{port} failed"), message
    assert "tls_cert_file and tls_key_file" in message, message
    expected = "certificate required" if version == "TLS 1.3" else "handshake failure"
    assert expected in message, message
    assert not list(out.iterdir())
    with pytest.raises(EchoFailed, match="tls_cert_file and tls_key_file"):
        run(DimseSender(target).echo())


def test_peer_certificate_from_another_ca_is_refused(
    tmp_path: Path, pki: Pki, start_storescp: StartPeer
) -> None:
    port, out = start_storescp(*tls_options(pki, "-ic"))
    items = images(tmp_path, 1)
    target = tls_destination(port, pki, client_cert=False, tls_ca_file=str(pki.other_ca))
    (outcome,) = run(send_batches(target, items))
    assert (outcome.kind, outcome.status) == ("transient", None)
    assert "the peer's certificate was not accepted" in outcome.message
    assert "self-signed certificate in certificate chain" in outcome.message
    assert f"tls_ca_file '{pki.other_ca}' must hold the CA that issued it" in outcome.message
    assert not list(out.iterdir())


def test_client_certificate_the_peer_does_not_trust(
    tmp_path: Path, pki: Pki, start_storescp: StartPeer
) -> None:
    port, _ = start_storescp(
        "+tls", str(pki.server_key), str(pki.server_cert), "+cf", str(pki.other_ca)
    )
    (outcome,) = run(send_batches(tls_destination(port, pki), images(tmp_path, 1)))
    assert outcome.kind == "transient"
    assert "unknown ca" in outcome.message
    assert f"tls_cert_file '{pki.client_cert}'" in outcome.message


def test_host_name_is_verified(tmp_path: Path, pki: Pki, start_storescp: StartPeer) -> None:
    """The certificate names 127.0.0.1 and localhost: 127.0.0.2 (the same loopback
    interface) is refused unless tls_verify_hostname is false; localhost is fine."""
    port, out = start_storescp(*tls_options(pki))
    items = images(tmp_path, 3)
    (refused,) = run(send_batches(tls_destination(port, pki, host="127.0.0.2"), items[:1]))
    assert refused.kind == "transient"
    assert "IP address mismatch" in refused.message, refused.message
    assert "tls_verify_hostname: false" in refused.message
    relaxed = tls_destination(port, pki, host="127.0.0.2", tls_verify_hostname=False)
    by_name = tls_destination(port, pki, host="localhost")
    assert run(send_batches(relaxed, items[1:2]))[0].kind == "delivered"
    assert run(send_batches(by_name, items[2:]))[0].kind == "delivered"
    assert len(list(out.iterdir())) == 2


def test_tls_to_a_plain_peer_fails_within_the_timeout(
    tmp_path: Path, pki: Pki, start_storescp: StartPeer
) -> None:
    """storescp without TLS takes the ClientHello for a PDU of type 16H and drops the
    connection: a clean transient failure, at once."""
    port, _ = start_storescp()
    target = tls_destination(port, pki, connect_timeout_s=3.0)
    start = time.monotonic()
    (outcome,) = run(send_batches(target, images(tmp_path, 1)))
    assert time.monotonic() - start < 3.0
    assert outcome.kind == "transient"
    assert outcome.message.startswith(f"TLS with STORESCP@127.0.0.1:{port} failed: "), outcome
    assert "is that port a DICOM TLS port?" in outcome.message, outcome.message


def test_silent_peer_fails_at_connect_timeout(tmp_path: Path, pki: Pki) -> None:
    """A listener that never answers the ClientHello: the handshake is bounded by
    connect_timeout_s (the event loop is not blocked meanwhile)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        target = tls_destination(port, pki, connect_timeout_s=0.5)
        start = time.monotonic()
        (outcome,) = run(send_batches(target, images(tmp_path, 1)))
        elapsed = time.monotonic() - start
    assert 0.5 <= elapsed < 2.0, elapsed
    assert outcome.kind == "transient"
    assert "no TLS handshake within connect_timeout_s (0.5 s)" in outcome.message, outcome


def test_unusable_tls_file_fails_each_attempt_clearly(tmp_path: Path, pki: Pki) -> None:
    """Read at the first association, not when the sender is made (a forwarder
    worker makes its sender before anything can report an error)."""
    missing = tmp_path / "nope.pem"
    target = tls_destination(free_port(), pki, tls_ca_file=str(missing))
    sender = DimseSender(target)
    (outcome,) = run(send_batches(target, images(tmp_path, 1)))
    assert (outcome.kind, outcome.status) == ("transient", None)
    assert outcome.message.startswith(
        f"destination 'peer': tls_ca_file '{missing}' cannot be read: No such file or directory"
    ), outcome.message
    with pytest.raises(EchoFailed, match="tls_ca_file"):
        run(sender.echo())


def test_changed_tls_file_is_read_again(
    tmp_path: Path, pki: Pki, start_storescp: StartPeer
) -> None:
    """A wrong CA file fixed while the sender lives: the next association uses it."""
    port, out = start_storescp(*tls_options(pki))
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(pki.other_ca.read_bytes())
    target = tls_destination(port, pki, tls_ca_file=str(ca_file))
    items = images(tmp_path / "ct", 2)

    async def scenario() -> list[Any]:
        sender = DimseSender(target)
        try:
            refused = await sender.send(items[:1])
            ca_file.write_bytes(pki.ca.read_bytes())
            return refused + await sender.send(items[1:])
        finally:
            await sender.close()

    refused, delivered = run(scenario())
    assert refused.kind == "transient" and "not accepted" in refused.message
    assert delivered.kind == "delivered"
    assert written_sha256(out, items[1].sop_instance_uid) == dataset_sha256(items[1])


def test_peer_answering_in_plain_dicom(tmp_path: Path, pki: Pki) -> None:
    """A peer that answers the ClientHello with a DICOM PDU (an A-ABORT): OpenSSL
    sees no TLS record; a clean transient failure, at once."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        def answer() -> None:
            conn, _ = listener.accept()
            # NOTE: the sender may reset the connection it gave up on.
            with conn, contextlib.suppress(OSError):
                conn.recv(4096)
                conn.sendall(bytes.fromhex("07 00 00000004 00 00 02 00"))
                conn.recv(4096)

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        start = time.monotonic()
        (outcome,) = run(send_batches(tls_destination(port, pki), images(tmp_path, 1)))
        assert time.monotonic() - start < 2.0
        thread.join(5)
    assert outcome.kind == "transient"
    assert "what the peer sent is not TLS" in outcome.message, outcome.message
    assert "is that port a DICOM TLS port?" in outcome.message
