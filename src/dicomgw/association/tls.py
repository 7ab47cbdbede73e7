"""DICOM TLS for the requestor and the receiver's TLS listener: PS3.15 Annex B's
BCP 195 TLS Secure Transport Connection Profiles (B.9 and the Non-downgrading
B.10; B.12 in current editions).

What the profile asks of a client, and where it is done:

- TLS 1.2 or later, never less (no downgrade), TLS 1.3 offered first:
  ``minimum_version`` in :func:`client_context`;
- no TLS compression (CRIME), no renegotiation (``OP_NO_COMPRESSION``,
  ``OP_NO_RENEGOTIATION``);
- strong cipher suites: Python's defaults (3.10+) are fine: ECDHE/DHE key
  exchange only, AES-GCM and ChaCha20 first (BCP 195's recommended suites), then
  AES-CBC with SHA-256/384; no RSA key transport, SHA-1, 3DES, RC4 or NULL;
  OpenSSL security level 2;
- the server's certificate verified against trusted CAs, and its name against
  the host connected to (an IP address is matched with the IP address SAN);
- a client certificate when the peer requires one (mutual TLS).

The zero-copy :class:`~dicomgw._core.DataSetSender` writes plaintext to the file
descriptor, which TLS cannot take; :class:`TLSTransport` copies each buffer-full
of PDUs once (:class:`~dicomgw.association.codec.DataSetPacker`) and gives it to
the SSL object, which encrypts and writes it. The handshake and every read and
write run on the non-blocking socket, waiting in the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl

from dicomgw._core import ChecksumMismatch, crc32c
from dicomgw.association.codec import DataSetPacker
from dicomgw.association.errors import TLSConfigError, TLSFailed
from dicomgw.association.transport import DRAIN_CHUNK, wait_ready

# PERF: one SSL write per buffer-full of PDUs, which OpenSSL cuts into 16 KiB
# records. 100 CT images (52 MB) to storescp --ignore over loopback, 2 vCPUs, 16 KiB
# PDUs: buffers of 16 KiB to 1 MiB all gave 0.52-0.58 GB/s (plain: 0.91); the copy
# into the buffer took 8% of the send time, the cipher and the writes the rest, and
# storescp's decryption bounds the rate.
TLS_BATCH_BYTES = 262_144

# OpenSSL X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH.
_NAME_MISMATCH = frozenset({62, 64})
# TLS alerts (RFC 8446 6.2) that say the peer did not accept our certificate.
_CERTIFICATE_ALERTS = frozenset(
    {
        "BAD_CERTIFICATE",
        "UNSUPPORTED_CERTIFICATE",
        "CERTIFICATE_REVOKED",
        "CERTIFICATE_EXPIRED",
        "CERTIFICATE_UNKNOWN",
        "UNKNOWN_CA",
        "ACCESS_DENIED",
    }
)
# What OpenSSL says when the bytes that came back are not TLS at all.
_NOT_TLS = frozenset(
    {
        "WRONG_VERSION_NUMBER",
        "UNKNOWN_PROTOCOL",
        "PACKET_LENGTH_TOO_LONG",
        "RECORD_LAYER_FAILURE",
        "HTTP_REQUEST",
        "UNEXPECTED_EOF_WHILE_READING",
    }
)


class _EncryptedKey(Exception):
    """Raised by the password callback: a daemon has no one to type a passphrase."""


def _no_passphrase() -> bytes:
    # NOTE: without a callback OpenSSL would prompt on the terminal, and block.
    raise _EncryptedKey


def client_context(
    owner: str,
    *,
    ca_file: str | None,
    cert_file: str | None = None,
    key_file: str | None = None,
    verify_hostname: bool = True,
) -> ssl.SSLContext:
    """A client SSLContext for DICOM TLS (BCP 195); reads the files.

    ``ca_file``: PEM CA certificates the peer's certificate must chain to; None:
    the system trust store. ``cert_file`` and ``key_file`` (an unencrypted PEM
    key): the certificate presented when the peer asks for one. Raises
    :class:`TLSConfigError` naming ``owner`` (e.g. "destination 'pacs'") and the
    key of the file that cannot be read or used.
    """
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    except OSError as exc:
        problem = _unreadable(exc)
        if isinstance(exc, ssl.SSLError):
            problem = f"holds no PEM CA certificate OpenSSL can use ({exc.reason or exc})"
        raise TLSConfigError(owner, "tls_ca_file", str(ca_file), problem) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = verify_hostname
    if cert_file is not None and key_file is not None:
        _load_certificate(context, owner, cert_file, key_file)
    return context


def server_context(
    owner: str, *, cert_file: str, key_file: str, client_ca_file: str | None
) -> ssl.SSLContext:
    """The receiver's SSLContext for DICOM TLS (BCP 195, as :func:`client_context`):
    TLS 1.2 or later, no compression or renegotiation, and with ``client_ca_file``
    a client certificate issued by those CAs is required (mutual TLS)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    _load_certificate(context, owner, cert_file, key_file)
    if client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=client_ca_file)
        except OSError as exc:
            problem = _unreadable(exc)
            if isinstance(exc, ssl.SSLError):
                problem = f"holds no PEM CA certificate OpenSSL can use ({exc.reason or exc})"
            raise TLSConfigError(owner, "tls_client_ca_file", client_ca_file, problem) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _load_certificate(context: ssl.SSLContext, owner: str, cert_file: str, key_file: str) -> None:
    # NOTE: load_cert_chain says "PEM lib" for a bad certificate and a bad key
    # alike; reading the certificate on its own first tells which file is wrong.
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert_file)
    except OSError as exc:
        problem = _unreadable(exc)
        if isinstance(exc, ssl.SSLError):
            problem = f"holds no PEM certificate ({exc.reason or exc})"
        raise TLSConfigError(owner, "tls_cert_file", cert_file, problem) from None
    try:
        context.load_cert_chain(cert_file, key_file, password=_no_passphrase)
    except _EncryptedKey:
        problem = (
            "is encrypted with a passphrase; give an unencrypted key, readable only by "
            "the user dicom-gw runs as"
        )
        raise TLSConfigError(owner, "tls_key_file", key_file, problem) from None
    except OSError as exc:
        problem = _unreadable(exc)
        if isinstance(exc, ssl.SSLError):
            if exc.reason == "KEY_VALUES_MISMATCH":
                problem = (
                    f"is not the private key of the certificate in tls_cert_file '{cert_file}'"
                )
            else:
                problem = "holds no PEM private key OpenSSL can use"
        raise TLSConfigError(owner, "tls_key_file", key_file, problem) from None


def _unreadable(exc: OSError) -> str:
    return f"cannot be read: {exc.strerror or exc}"


class TLSTransport:
    """TLS over a connected non-blocking socket; create it with :meth:`handshake`.

    ssl.SSLSocket is used rather than a memory BIO: OpenSSL then reads and writes
    the socket itself, without another copy of every byte through Python.
    """

    def __init__(self, sock: ssl.SSLSocket, peer: str, timeout_s: float) -> None:
        self._sock = sock
        self._fd = sock.fileno()
        self._loop = asyncio.get_running_loop()
        self._peer = peer
        self._timeout_s = timeout_s
        self._held = b""
        """Bytes sent with ``more``: they go out with the next write."""
        self._batch = memoryview(bytearray(TLS_BATCH_BYTES))

    @classmethod
    async def handshake(
        cls, sock: socket.socket, context: ssl.SSLContext, *, host: str, peer: str, timeout_s: float
    ) -> TLSTransport:
        """Wraps the connected ``sock`` and completes the TLS handshake, waiting in
        the event loop for as long as the caller allows (a timeout around this call);
        on any failure ``sock`` is closed. Raises :class:`TLSFailed`."""
        loop = asyncio.get_running_loop()
        try:
            tls = context.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
        except BaseException:
            sock.close()
            raise
        fd = tls.fileno()
        try:
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    await wait_ready(loop, fd, False, None)
                except ssl.SSLWantWriteError:
                    await wait_ready(loop, fd, True, None)
        except ssl.SSLError as exc:
            tls.close()
            kind, problem = explain(exc)
            if kind == "not-tls":
                problem += ": is that port a DICOM TLS port?"
            raise TLSFailed(peer, problem, kind) from None
        except OSError as exc:
            tls.close()
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            raise TLSFailed(
                peer,
                f"the connection failed during the handshake ({why}): is that port a "
                "DICOM TLS port?",
                "not-tls",
            ) from None
        except BaseException:
            tls.close()
            raise
        return cls(tls, peer, timeout_s)

    @property
    def version(self) -> str | None:
        """The negotiated protocol, e.g. "TLSv1.3"."""
        return self._sock.version()

    async def send(self, data: bytes, more: bool = False) -> None:
        if more:
            self._held += data
            return
        if self._held:
            data, self._held = self._held + data, b""
        await self._write(memoryview(data))

    async def send_dataset(
        self,
        data: bytes | memoryview,
        max_pdu_length: int,
        context_id: int,
        expected_crc: int | None = None,
    ) -> int:
        if expected_crc is not None:
            # NOTE: checked whole before the first byte (the copy into the TLS
            # buffer and the cipher cost far more); in a thread, it reads the file.
            actual = await asyncio.to_thread(crc32c, data)
            if actual != expected_crc:
                raise ChecksumMismatch(expected_crc, actual)
        packer = DataSetPacker(data, max_pdu_length, context_id)
        batch = self._batch
        try:
            # The held command PDU goes first in the first buffer-full, unless it
            # would crowd the data set out (a tiny peer maximum PDU cuts it up).
            start = len(self._held)
            if start > len(batch) // 2:
                await self._write(memoryview(self._held))
                start = 0
            batch[:start] = self._held
            self._held = b""
            while True:
                end = packer.fill(batch, start)
                if end:
                    await self._write(batch[:end])
                if packer.done:
                    return packer.pos
                start = 0
        finally:
            # NOTE: the packer holds data's buffer; an mmap cannot close until it is gone.
            del packer

    async def _write(self, view: memoryview) -> None:
        while view:
            try:
                sent = self._sock.send(view)
            # NOTE: OpenSSL wants the same bytes again after WANT_WRITE; they are.
            except ssl.SSLWantWriteError:
                await wait_ready(self._loop, self._fd, True, self._timeout_s)
                continue
            except ssl.SSLWantReadError:
                await wait_ready(self._loop, self._fd, False, self._timeout_s)
                continue
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
                # NOTE: the peer closed: an OSError like EPIPE, after which the
                # requestor reads what the peer said last (A-ABORT, or a TLS alert).
                raise
            except ssl.SSLError as exc:
                raise self._failed(exc) from None
            view = view[sent:]

    async def recv_into(self, buffer: bytearray) -> int:
        # NOTE: read first, wait only when OpenSSL asks: a record already read may
        # hold more than one PDU, and the socket would then never become readable.
        # A TLS 1.3 server checks the client certificate after our handshake is
        # done; its refusal is an alert met here, at the first read.
        while True:
            try:
                return self._sock.recv_into(buffer)
            except ssl.SSLWantReadError:
                await wait_ready(self._loop, self._fd, False, self._timeout_s)
            except ssl.SSLWantWriteError:
                await wait_ready(self._loop, self._fd, True, self._timeout_s)
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
                return 0
            except ssl.SSLError as exc:
                raise self._failed(exc) from None

    def recv_now(self, buffer: bytearray) -> int | None:
        try:
            return self._sock.recv_into(buffer)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return None
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            return 0
        except ssl.SSLError as exc:
            raise self._failed(exc) from None

    def send_now(self, data: bytes) -> None:
        # NOTE: what was held for a data set is moot once the association ends.
        self._held = b""
        self._sock.send(data)

    def close(self) -> None:
        if self._sock.fileno() < 0:
            return
        # NOTE: unread input makes close() send RST, which can destroy what was just
        # written; then close_notify (RFC 8446 6.1), without waiting for the peer's.
        with contextlib.suppress(OSError, ValueError):
            while self._sock.recv(DRAIN_CHUNK):
                pass
        with contextlib.suppress(OSError, ValueError):
            self._sock.unwrap()
        self._sock.close()

    def _failed(self, exc: ssl.SSLError) -> TLSFailed:
        kind, problem = explain(exc)
        # After the handshake, bytes that are not TLS mean a broken stream.
        return TLSFailed(self._peer, problem, "broken" if kind == "not-tls" else kind)


def explain(exc: ssl.SSLError) -> tuple[str, str]:
    """(kind, problem) for :class:`TLSFailed`, from OpenSSL's reason code."""
    reason = exc.reason or ""
    if isinstance(exc, ssl.SSLCertVerificationError):
        kind = "peer-name" if exc.verify_code in _NAME_MISMATCH else "peer-certificate"
        why = exc.verify_message.rstrip(".")
        return kind, f"the peer's certificate was not accepted: {why}"
    alert = reason.partition("_ALERT_")[2]
    if alert:
        said = f"the peer refused the connection (TLS alert '{alert.lower().replace('_', ' ')}')"
        if alert == "CERTIFICATE_REQUIRED":
            return "certificate-required", said
        if alert in _CERTIFICATE_ALERTS:
            return "certificate-refused", said
        if alert == "PROTOCOL_VERSION":
            return "version", said
        return "refused", said
    if reason in ("UNSUPPORTED_PROTOCOL", "NO_PROTOCOLS_AVAILABLE"):
        return "version", "no TLS version in common (TLS 1.2 or later is required)"
    if reason in _NOT_TLS or isinstance(exc, ssl.SSLEOFError):
        return "not-tls", f"what the peer sent is not TLS ({reason or exc})"
    return "refused", reason or str(exc)
