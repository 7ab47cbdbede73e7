"""The HTTPS (and, by default, DICOM TLS) certificate: validated, installed
atomically into ``<tls.dir>``, and watched for expiry (``dicom-gw tls``,
docs/tls.md).

What is checked before anything is replaced: the files are PEM; the key is the
certificate's (same public key); the chain links up (each certificate signed by
the next one); the certificate is valid now. A certificate that expires within
``tls.expiry_warning_days`` is installed with a warning: refusing it would only
leave the older one in place.
"""

from __future__ import annotations

import datetime
import itertools
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from dicomgw.config import Config
from dicomgw.errors import DicomGwError

log = logging.getLogger(__name__)

CERT_NAME = "https.crt"
KEY_NAME = "https.key"


class CertificateError(DicomGwError):
    """A certificate, key or chain that cannot be installed; says which and why."""

    def __init__(self, message: str, part: str | None = None) -> None:
        # part: "certificate", "key" or "chain", when one of validate_pem's inputs is wrong.
        super().__init__(message)
        self.part = part


@dataclass(frozen=True)
class CertificateInfo:
    subject: str
    names: tuple[str, ...]
    issuer: str
    not_before: datetime.datetime
    not_after: datetime.datetime

    def days_left(self, now: datetime.datetime | None = None) -> float:
        now = now or datetime.datetime.now(datetime.UTC)
        return (self.not_after - now).total_seconds() / 86_400


def https_paths(config: Config) -> tuple[Path, Path]:
    return config.tls_dir / CERT_NAME, config.tls_dir / KEY_NAME


def watched(config: Config) -> dict[str, Path]:
    """The certificates whose expiry is reported, by label."""
    found = {"https": https_paths(config)[0]}
    if config.dimse.tls_cert_file:
        found["dicom"] = Path(config.dimse.tls_cert_file)
    return found


def read_certificates(path: Path, what: str) -> list[x509.Certificate]:
    return parse_certificates(_read(path, what), f"{what} '{path}'")


def parse_certificates(data: bytes, what: str) -> list[x509.Certificate]:
    """The PEM certificates in ``data`` (``what`` names it in the error)."""
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise CertificateError(f"{what} holds no PEM certificate")
    return certs


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CertificateError(f"{what} '{path}' cannot be read: {exc.strerror}") from None


def info(cert: x509.Certificate) -> CertificateInfo:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(str(n.value) for n in sans)
    except x509.ExtensionNotFound:
        names = ()
    return CertificateInfo(
        subject=cert.subject.rfc4514_string(),
        names=names,
        issuer=cert.issuer.rfc4514_string(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )


def validate(cert_file: Path, key_file: Path, chain_file: Path | None) -> tuple[bytes, bytes]:
    """The (full chain, key) PEM bytes to install from files; raises CertificateError."""
    return validate_pem(
        _read(cert_file, "certificate"),
        _read(key_file, "key"),
        None if chain_file is None else _read(chain_file, "chain"),
        Parts(f"the certificate '{cert_file}'", f"key '{key_file}'", f"the chain '{chain_file}'"),
    )


@dataclass(frozen=True)
class Parts:
    """What the errors call the certificate, the key and the chain."""

    certificate: str = "the certificate"
    key: str = "the key"
    chain: str = "the chain"


def validate_pem(
    cert_pem: bytes, key_pem: bytes, chain_pem: bytes | None, parts: Parts = Parts()
) -> tuple[bytes, bytes]:
    """The (full chain, key) PEM bytes to install; raises CertificateError, whose
    ``part`` says which is wrong: "certificate", "key" or "chain"."""
    try:
        certs = parse_certificates(cert_pem, parts.certificate)
    except CertificateError as exc:
        raise CertificateError(str(exc), part="certificate") from None
    if chain_pem is not None:
        try:
            certs += parse_certificates(chain_pem, parts.chain)
        except CertificateError as exc:
            raise CertificateError(str(exc), part="chain") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise CertificateError(
            f"{parts.key} is encrypted with a passphrase; give an unencrypted key "
            "(it is stored readable only by root and the dicomgw group)",
            part="key",
        ) from None
    except ValueError:
        raise CertificateError(f"{parts.key} holds no PEM private key", part="key") from None
    leaf = certs[0]
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(
        serialization.Encoding.DER, public
    ) != leaf.public_key().public_bytes(serialization.Encoding.DER, public):
        raise CertificateError(
            f"{parts.key} is not the private key of {parts.certificate}",
            part="key",
        )
    for lower, upper in itertools.pairwise(certs):
        try:
            lower.verify_directly_issued_by(upper)
        except (ValueError, TypeError, InvalidSignature):
            raise CertificateError(
                f"the chain is broken: '{_cn(lower)}' is not issued by '{_cn(upper)}'; give the "
                "certificate first, then each intermediate in order",
                part="certificate" if chain_pem is None else "chain",
            ) from None
    leaf_info = info(leaf)
    now = datetime.datetime.now(datetime.UTC)
    if leaf_info.not_after <= now:
        raise CertificateError(
            f"the certificate expired on {leaf_info.not_after:%Y-%m-%d %H:%M} UTC",
            part="certificate",
        )
    if leaf_info.not_before > now:
        raise CertificateError(
            f"the certificate is valid only from {leaf_info.not_before:%Y-%m-%d %H:%M} UTC",
            part="certificate",
        )
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs), key_pem


def install(config: Config, chain_pem: bytes, key_pem: bytes) -> tuple[Path, Path]:
    """Write both files next to their final names, then rename each into place
    (the key first, so that a reader never pairs the new certificate with the
    old key for longer than between two renames)."""
    directory = config.tls_dir
    try:
        directory.mkdir(mode=0o750, parents=True, exist_ok=True)
    except OSError as exc:
        raise CertificateError(f"cannot create tls.dir '{directory}': {exc.strerror}") from None
    cert_path, key_path = https_paths(config)
    _replace(key_path, key_pem, 0o640)
    _replace(cert_path, chain_pem, 0o644)
    return cert_path, key_path


def _replace(path: Path, data: bytes, mode: int) -> None:
    try:
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            os.fchmod(fd, mode)
            # The group of the directory (dicomgw) may read the key; nobody else.
            os.fchown(fd, -1, path.parent.stat().st_gid)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except OSError as exc:
        raise CertificateError(f"cannot write '{path}': {exc.strerror}") from None
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def warn_if_expiring(config: Config) -> None:
    """Log a warning for each watched certificate that expires soon, or is gone."""
    for label, path in watched(config).items():
        if not path.exists():
            continue
        try:
            cert = info(read_certificates(path, "certificate")[0])
        except CertificateError as exc:
            log.warning(
                "TLS certificate unreadable", extra={"certificate": label, "error": str(exc)}
            )
            continue
        days = cert.days_left()
        if days < config.tls.expiry_warning_days:
            log.warning(
                "TLS certificate expires soon" if days > 0 else "TLS certificate has expired",
                extra={
                    "certificate": label,
                    "path": str(path),
                    "not_after": cert.not_after.isoformat(),
                    "days_left": round(days, 1),
                },
            )


def _cn(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()
