"""``dicom-gw tls``: a certificate is validated before it replaces anything,
installed with the right modes, reported with its expiry (CLI and /metrics),
and a running receiver's DICOM TLS listener takes a new one on SIGHUP."""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from tests.certs import Pki, make_pki, self_signed
from tests.cli import cli_env, run_cli
from tests.gateway import Gateway, free_port


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_env(state_dir: Path, **extra: str) -> dict[str, str]:
    return cli_env(state_dir, **{"DICOMGW_TLS__RELOAD_COMMAND": "", **extra})


def test_install_validates_then_installs(pki: Pki, state_dir: Path, tmp_path: Path) -> None:
    env = tls_env(state_dir, DICOMGW_TLS__RELOAD_COMMAND=f"touch {tmp_path / 'reloaded'}")
    wrong_key = run_cli("tls", "install", "--cert", str(pki.server_cert), "--key",
                        str(pki.client_key), env=env)  # fmt: skip
    assert wrong_key.returncode == 1
    assert "is not the private key of the certificate" in wrong_key.stderr
    broken = run_cli("tls", "install", "--cert", str(pki.server_cert), "--key",
                     str(pki.server_key), "--chain", str(pki.other_ca), env=env)  # fmt: skip
    assert broken.returncode == 1
    assert "the chain is broken: 'STORESCP' is not issued by 'some other CA'" in broken.stderr
    encrypted = run_cli("tls", "install", "--cert", str(pki.client_cert), "--key",
                        str(pki.encrypted_client_key), env=env)  # fmt: skip
    assert encrypted.returncode == 1 and "passphrase" in encrypted.stderr
    old_cert, old_key = self_signed(tmp_path, "old", days=-1, started_days_ago=30)
    expired = run_cli("tls", "install", "--cert", str(old_cert), "--key", str(old_key), env=env)
    assert expired.returncode == 1 and "the certificate expired on" in expired.stderr
    not_pem = run_cli("tls", "install", "--cert", str(pki.server_key), "--key",
                      str(pki.server_key), env=env)  # fmt: skip
    assert not_pem.returncode == 1 and "holds no PEM certificate" in not_pem.stderr
    assert not (state_dir / "tls").exists()
    assert not (tmp_path / "reloaded").exists()

    done = run_cli("tls", "install", "--cert", str(pki.server_cert), "--key",
                   str(pki.server_key), "--chain", str(pki.ca), env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "installed" in done.stdout and "CN=STORESCP" in done.stdout
    assert (tmp_path / "reloaded").exists()
    installed = state_dir / "tls" / "https.crt"
    chain = x509.load_pem_x509_certificates(installed.read_bytes())
    assert [c.subject.rfc4514_string() for c in chain] == ["CN=STORESCP", "CN=dicom-gw test CA"]
    assert (state_dir / "tls" / "https.key").read_bytes() == pki.server_key.read_bytes()
    assert oct(installed.stat().st_mode & 0o777) == "0o644"
    assert oct((state_dir / "tls" / "https.key").stat().st_mode & 0o777) == "0o640"
    assert oct((state_dir / "tls").stat().st_mode & 0o777) == "0o750"
    # The test CA's certificates live for a day: within the 30-day warning.
    status = run_cli("tls", "status", env=env)
    assert status.returncode == 1
    assert "https: expires soon: CN=STORESCP" in status.stdout


def test_failed_reload_command_is_reported(pki: Pki, state_dir: Path) -> None:
    env = tls_env(state_dir, DICOMGW_TLS__RELOAD_COMMAND="/bin/false")
    done = run_cli("tls", "install", "--cert", str(pki.server_cert), "--key",
                   str(pki.server_key), env=env)  # fmt: skip
    assert done.returncode == 1
    assert "installed, but tls.reload_command '/bin/false' failed" in done.stderr


def test_certbot_deploy_hook(state_dir: Path, tmp_path: Path) -> None:
    live = tmp_path / "live" / "gw.example.org"
    cert, key = self_signed(tmp_path, "gw.example.org", days=90)
    live.mkdir(parents=True)
    (live / "cert.pem").write_bytes(cert.read_bytes())
    (live / "chain.pem").write_bytes(b"")
    (live / "privkey.pem").write_bytes(key.read_bytes())
    no_lineage = run_cli("tls", "install-certbot", env=tls_env(state_dir))
    assert no_lineage.returncode == 1 and "RENEWED_LINEAGE is not set" in no_lineage.stderr
    # certbot's chain.pem of a self-signed test certificate is empty: a chain
    # file that holds nothing is refused, so give it the certificate's issuer.
    (live / "chain.pem").write_bytes(cert.read_bytes())
    env = tls_env(state_dir, RENEWED_LINEAGE=str(live))
    done = run_cli("tls", "install-certbot", env=env)
    assert done.returncode == 0, done.stderr
    status = run_cli("tls", "status", env=env)
    assert status.returncode == 0, status.stdout
    assert "https: ok: CN=gw.example.org (names: 127.0.0.1)" in status.stdout


def server_subject(port: int) -> str:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), 5) as sock,
        context.wrap_socket(sock) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).subject.rfc4514_string()


def test_running_receiver_reloads_on_install(
    state_dir: Path, empty_db: str, tmp_path: Path
) -> None:
    first = self_signed(tmp_path, "first", days=90)
    second = self_signed(tmp_path, "second", days=90)
    tls_port = free_port()
    extra = {
        "DICOMGW_DIMSE__TLS_PORT": str(tls_port),
        "DICOMGW_TLS__RELOAD_COMMAND": "",
        "DICOMGW_API__METRICS_NETWORKS": "[127.0.0.1]",
    }
    env = cli_env(state_dir, **extra)
    assert run_cli("tls", "install", "--cert", str(first[0]), "--key", str(first[1]),
                   env=env).returncode == 0  # fmt: skip
    gateway = Gateway(state_dir, empty_db, extra_env=extra)
    gateway.start()
    try:
        assert server_subject(tls_port) == "CN=first"
        metrics = httpx.get(f"http://127.0.0.1:{gateway.api_port}/metrics").text
        assert 'dicomgw_tls_certificate_expiry_timestamp_seconds{certificate="https"}' in metrics
        done = run_cli("tls", "install", "--cert", str(second[0]), "--key", str(second[1]),
                       env=env)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "asked the receiver" in done.stdout
        deadline = time.monotonic() + 10
        while server_subject(tls_port) != "CN=second":
            assert time.monotonic() < deadline, gateway.log()
            time.sleep(0.1)
    finally:
        assert gateway.stop() == 0
    assert "DICOM TLS certificate reloaded" in gateway.log()
