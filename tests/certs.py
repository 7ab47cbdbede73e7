"""A throwaway PKI for the TLS tests: a CA, a server certificate for 127.0.0.1 and
localhost, a client certificate, and a second CA that signed only a stranger's
client certificate.

Keys are RSA 2048: DCMTK's default profile (Non-downgrading BCP 195) offers only
ECDHE-RSA and DHE-RSA cipher suites under TLS 1.2, so an EC server key would work
with TLS 1.3 only.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pki:
    ca: Path
    """The CA certificate that signed server and client."""
    other_ca: Path
    """A CA certificate that signed neither."""
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    encrypted_client_key: Path
    """The client key under the passphrase 'secret'."""
    stranger_cert: Path
    """A client certificate signed by the other CA."""
    stranger_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _self_signed(
    common_name: str, *, days: float, started_days_ago: float
) -> tuple[rsa.RSAPrivateKey, x509.CertificateBuilder]:
    """A new key and a builder of a certificate that it signs for itself."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=started_days_ago))
        .not_valid_after(now + datetime.timedelta(days=days))
    )
    return key, builder


def _ca(common_name: str) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key, builder = _self_signed(common_name, days=2, started_days_ago=5 / 1440)
    cert = (
        builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    common_name: str,
    ca_key: rsa.RSAPrivateKey,
    ca_cert: x509.Certificate,
    usage: x509.ObjectIdentifier,
    names: list[x509.GeneralName],
) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(
    path: Path,
    key: rsa.RSAPrivateKey,
    encryption: serialization.KeySerializationEncryption | None = None,
) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            encryption or serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


def make_pki(directory: Path) -> Pki:
    """Everything in PEM files under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca("dicom-gw test CA")
    other_key, other_cert = _ca("some other CA")
    server_key, server_cert = _leaf(
        "STORESCP",
        ca_key,
        ca_cert,
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")],
    )
    client_key, client_cert = _leaf("DICOMGW", ca_key, ca_cert, ExtendedKeyUsageOID.CLIENT_AUTH, [])
    stranger_key, stranger_cert = _leaf(
        "STRANGER", other_key, other_cert, ExtendedKeyUsageOID.CLIENT_AUTH, []
    )
    return Pki(
        ca=_write_cert(directory / "ca.pem", ca_cert),
        other_ca=_write_cert(directory / "other-ca.pem", other_cert),
        server_cert=_write_cert(directory / "server.pem", server_cert),
        server_key=_write_key(directory / "server.key", server_key),
        client_cert=_write_cert(directory / "client.pem", client_cert),
        client_key=_write_key(directory / "client.key", client_key),
        encrypted_client_key=_write_key(
            directory / "client-encrypted.key",
            client_key,
            serialization.BestAvailableEncryption(b"secret"),
        ),
        stranger_cert=_write_cert(directory / "stranger.pem", stranger_cert),
        stranger_key=_write_key(directory / "stranger.key", stranger_key),
    )


def self_signed(
    directory: Path, common_name: str, *, days: float, started_days_ago: float = 0.01
) -> tuple[Path, Path]:
    """A self-signed server certificate for 127.0.0.1 valid for ``days`` (negative:
    expired that long ago), and its key: (certificate, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    key, builder = _self_signed(common_name, days=days, started_days_ago=started_days_ago)
    cert = builder.add_extension(
        x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
        critical=False,
    ).sign(key, hashes.SHA256())
    return (
        _write_cert(directory / f"{common_name}.pem", cert),
        _write_key(directory / f"{common_name}.key", key),
    )
