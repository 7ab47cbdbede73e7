"""DICOM TLS for DIMSE destinations: the config keys' validation, and the client
SSLContext (PS3.15 Annex B, BCP 195) with its errors for unusable files."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from dicomgw.association.errors import TLSConfigError
from dicomgw.association.tls import client_context, explain
from dicomgw.config import DimseDestination, load_config
from dicomgw.errors import ConfigError
from tests.certs import Pki, make_pki

DESTINATION = "destinations: [{name: pacs, type: dimse, ae_title: PACS, host: h, port: 104, %s}]"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def load(tmp_path: Path, options: str) -> DimseDestination:
    path = tmp_path / "dicom-gw.yaml"
    path.write_text(DESTINATION % options)
    (destination,) = load_config(str(path), {}).destinations
    assert isinstance(destination, DimseDestination)
    return destination


def test_tls_is_accepted(tmp_path: Path) -> None:
    destination = load(
        tmp_path,
        "tls: true, tls_ca_file: /etc/ca.pem, tls_cert_file: /etc/c.pem, tls_key_file: /etc/c.key",
    )
    assert destination.tls
    assert (destination.tls_ca_file, destination.tls_cert_file, destination.tls_key_file) == (
        "/etc/ca.pem",
        "/etc/c.pem",
        "/etc/c.key",
    )
    assert destination.tls_verify_hostname


def test_tls_defaults(tmp_path: Path) -> None:
    destination = load(tmp_path, "tls: true")
    assert destination.tls_ca_file is None
    assert destination.tls_cert_file is None
    assert destination.tls_verify_hostname


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        (
            "tls: true, tls_cert_file: /etc/c.pem",
            "tls_cert_file is set but tls_key_file is not: a client certificate needs both",
        ),
        (
            "tls: true, tls_key_file: /etc/c.key",
            "tls_key_file is set but tls_cert_file is not: a client certificate needs both",
        ),
        (
            "tls_ca_file: /etc/ca.pem",
            "tls_ca_file set but tls is false: set tls: true for DICOM TLS",
        ),
        (
            "tls: false, tls_cert_file: /etc/c.pem, tls_key_file: /etc/c.key",
            "tls_cert_file, tls_key_file set but tls is false",
        ),
        ("tls: true, tls_verify_hostname: 'no'", "expected bool"),
    ],
)
def test_tls_errors_name_the_key(tmp_path: Path, options: str, fragment: str) -> None:
    path = tmp_path / "dicom-gw.yaml"
    path.write_text(DESTINATION % options)
    with pytest.raises(ConfigError) as info:
        load_config(str(path), {})
    assert info.value.key.startswith("destinations[0]")
    assert fragment in str(info.value)


# -- the client context ------------------------------------------------------------------


def test_context_follows_bcp_195(pki: Pki) -> None:
    context = client_context("destination 'pacs'", ca_file=str(pki.ca))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.options & ssl.OP_NO_COMPRESSION
    assert context.options & ssl.OP_NO_RENEGOTIATION
    ciphers = context.get_ciphers()
    assert ciphers
    for cipher in ciphers:
        # Forward secrecy (ECDHE, DHE, or TLS 1.3), AEAD or SHA-2 MACs, 128 bits or more.
        assert cipher["kea"] in {"kx-ecdhe", "kx-dhe", "kx-any"}, cipher["name"]
        assert cipher["digest"] in {None, "sha256", "sha384"}, cipher["name"]
        assert cipher["symmetric"].startswith(("aes-128", "aes-256", "chacha20")), cipher["name"]


def test_context_without_hostname_check_still_verifies(pki: Pki) -> None:
    context = client_context("d", ca_file=str(pki.ca), verify_hostname=False)
    assert not context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED


def test_context_with_client_certificate(pki: Pki) -> None:
    context = client_context(
        "d", ca_file=str(pki.ca), cert_file=str(pki.client_cert), key_file=str(pki.client_key)
    )
    assert context.verify_mode == ssl.CERT_REQUIRED


def test_system_trust_store_when_no_ca_file() -> None:
    context = client_context("d", ca_file=None)
    assert context.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize(
    ("files", "key", "fragment"),
    [
        ({"ca_file": "missing"}, "tls_ca_file", "cannot be read: No such file or directory"),
        ({"ca_file": "client_key"}, "tls_ca_file", "holds no PEM CA certificate"),
        ({"cert_file": "missing"}, "tls_cert_file", "cannot be read: No such file or directory"),
        ({"cert_file": "client_key"}, "tls_cert_file", "holds no PEM certificate"),
        ({"key_file": "missing"}, "tls_key_file", "cannot be read: No such file or directory"),
        ({"key_file": "client_cert"}, "tls_key_file", "holds no PEM private key"),
        ({"key_file": "server_key"}, "tls_key_file", "is not the private key of the certificate"),
        ({"key_file": "encrypted_client_key"}, "tls_key_file", "is encrypted with a passphrase"),
    ],
)
def test_unusable_files_name_owner_key_and_path(
    tmp_path: Path, pki: Pki, files: dict[str, str], key: str, fragment: str
) -> None:
    """Nothing prompts for a passphrase; every error says whose file, which key, and why."""
    paths = {
        "ca_file": str(pki.ca),
        "cert_file": str(pki.client_cert),
        "key_file": str(pki.client_key),
    }
    for name, which in files.items():
        paths[name] = str(tmp_path / "nope.pem") if which == "missing" else str(getattr(pki, which))
    with pytest.raises(TLSConfigError) as info:
        client_context(
            "destination 'pacs'",
            ca_file=paths["ca_file"],
            cert_file=paths["cert_file"],
            key_file=paths["key_file"],
        )
    error = info.value
    assert (error.key, error.path) == (key, paths[key.removeprefix("tls_")])
    assert str(error).startswith(f"destination 'pacs': {key} '{error.path}' {fragment}"), error
    assert error.transient


# -- what a TLS failure means --------------------------------------------------------------


def ssl_error(reason: str) -> ssl.SSLError:
    exc = ssl.SSLError(1, f"[SSL: {reason}] ...")
    exc.reason = reason
    return exc


@pytest.mark.parametrize(
    ("reason", "kind", "said"),
    [
        ("TLSV13_ALERT_CERTIFICATE_REQUIRED", "certificate-required", "'certificate required'"),
        ("TLSV1_ALERT_UNKNOWN_CA", "certificate-refused", "'unknown ca'"),
        ("SSLV3_ALERT_BAD_CERTIFICATE", "certificate-refused", "'bad certificate'"),
        ("SSLV3_ALERT_HANDSHAKE_FAILURE", "refused", "'handshake failure'"),
        ("TLSV1_ALERT_PROTOCOL_VERSION", "version", "'protocol version'"),
        ("UNSUPPORTED_PROTOCOL", "version", "TLS 1.2 or later is required"),
        ("WRONG_VERSION_NUMBER", "not-tls", "not TLS (WRONG_VERSION_NUMBER)"),
        ("RECORD_LAYER_FAILURE", "not-tls", "not TLS (RECORD_LAYER_FAILURE)"),
    ],
)
def test_openssl_reasons_are_explained(reason: str, kind: str, said: str) -> None:
    assert explain(ssl_error(reason))[0] == kind
    assert said in explain(ssl_error(reason))[1]
