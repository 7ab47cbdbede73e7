"""The receiver's DICOM TLS listener (PS3.15 Annex B, BCP 195) against DCMTK's
storescu +tls: a client certificate from the configured CA is admitted and its
instance stored; one from another CA, plain DICOM and TLS 1.1 fail in the
handshake and store nothing; the plain port keeps working beside it."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from tests.certs import Pki, make_pki
from tests.gateway import Gateway, free_port
from tests.integration.scu import make_dataset
from tests.interop.corpus import storescu
from tests.support.wait import wait_until


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def instance(directory: Path, name: str) -> Path:
    ds = make_dataset(sop_instance_uid=generate_uid(), patient_name=f"TLS^{name}")
    path = directory / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_tls_listener(
    gateway_factory: Callable[..., Gateway], dcmtk: Path, pki: Pki, tmp_path: Path
) -> None:
    tls_port = free_port()
    gateway = gateway_factory(
        "dimse:\n"
        f"  tls_port: {tls_port}\n"
        f"  tls_cert_file: {pki.server_cert}\n"
        f"  tls_key_file: {pki.server_key}\n"
        f"  tls_client_ca_file: {pki.ca}\n"
    )
    gateway.start()
    trusted = ("+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca))
    sent = storescu(dcmtk, [instance(tmp_path, "trusted")], tls_port, *trusted)
    assert sent.returncode == 0, sent.stderr + gateway.log()
    assert '"tls_peer":"CN=DICOMGW"' in gateway.log()
    assert len(gateway.objects()) == 1

    stranger = ("+tls", str(pki.stranger_key), str(pki.stranger_cert), "+cf", str(pki.ca))
    refused = storescu(dcmtk, [instance(tmp_path, "stranger")], tls_port, *stranger)
    assert refused.returncode != 0
    # NOTE: storescu may exit before the gateway has logged why it refused.
    assert wait_until(lambda: '"kind":"peer-certificate"' in gateway.log()), gateway.log()
    plain = storescu(dcmtk, [instance(tmp_path, "plain-to-tls")], tls_port)
    assert plain.returncode != 0
    assert len(gateway.objects()) == 1

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(pki.ca)
    context.load_cert_chain(pki.client_cert, pki.client_key)
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
    # NOTE: the local OpenSSL may refuse TLS 1.1 itself (security level); the
    # handshake fails either way, which is what BCP 195 asks of the listener.
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with (
        socket.create_connection(("127.0.0.1", tls_port), 5) as sock,
        pytest.raises(ssl.SSLError),
    ):
        context.wrap_socket(sock, server_hostname="localhost")

    def failures() -> list[str]:
        return [line for line in gateway.log().splitlines() if "TLS handshake failed" in line]

    deadline = time.monotonic() + 10
    while len(failures()) < 3 and time.monotonic() < deadline:  # logged as they end
        time.sleep(0.05)
    assert len(failures()) == 3, failures()  # the stranger, plain DICOM, TLS 1.1

    beside = storescu(dcmtk, [instance(tmp_path, "plain")], gateway.dimse_port)
    assert beside.returncode == 0, beside.stderr
    assert len(gateway.objects()) == 2
    log = gateway.log()
    assert gateway.stop() == 0
    assert "Traceback" not in log
