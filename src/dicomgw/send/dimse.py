"""The DIMSE sender: stored instances to one DICOM peer with C-STORE (PS3.4 B.2).

One association carries many C-STOREs, across :meth:`DimseSender.send` calls: it
is reopened only when an instance needs a presentation context it was not
proposed, when it broke, or after ``idle_release_s`` without work (then it is
released). For each SOP class the stored transfer syntaxes are proposed, plus
the fallbacks the data set can be converted to; the stored bytes go out as they
are whenever the peer accepts their transfer syntax.

With ``tls: true`` associations run over DICOM TLS (PS3.15 Annex B, BCP 195).
The TLS files are read when an association is opened, not when the sender is
made, and again whenever one of them changed: a file that cannot be used fails
each attempt (transient, naming the destination and the key) until it is fixed,
and a renewed certificate is used without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import ssl
import time
from collections.abc import Sequence

from dicomgw._core import ChecksumMismatch as DataSetChecksumMismatch
from dicomgw.association.requestor import (
    AssociationError,
    Requestor,
    TLSFailed,
)
from dicomgw.association.tls import client_context
from dicomgw.config import DimseDestination
from dicomgw.dimse.status import (
    DUPLICATE_SOP_INSTANCE,
    RESOURCE_LIMITATION,
    SUCCESS,
    status_category,
)
from dicomgw.errors import DicomGwError
from dicomgw.send.convert import ConversionError, conversion_targets, convert_dataset
from dicomgw.send.delivery import (
    UNOBSERVED,
    WITHDRAWN,
    ChecksumMismatch,
    Outcome,
    OutcomeKind,
    Progress,
    StoredInstance,
    expected_crc,
    verify_checksum,
)
from dicomgw.ul.pdu import MAX_CONTEXTS
from dicomgw.ul.uids import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    VERIFICATION_SOP_CLASS,
)

log = logging.getLogger(__name__)

DEFAULT_FALLBACKS = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)
VERIFICATION_PAIR = (VERIFICATION_SOP_CLASS, IMPLICIT_VR_LITTLE_ENDIAN)

Pair = tuple[str, str]
"""(abstract syntax, transfer syntax): one proposed presentation context."""

# PS3.4 Table B.2-1 and PS3.7 C: what each failure means for a retry.
_FAILURE_RANGES: tuple[tuple[int, int, OutcomeKind, str], ...] = (
    (0xA700, 0xA7FF, "transient", "out of resources"),
    (0xA900, 0xA9FF, "permanent", "data set does not match SOP class"),
    (0xC000, 0xCFFF, "permanent", "cannot understand"),
)


class EchoFailed(DicomGwError):
    """The C-ECHO probe of a destination did not succeed."""

    def __init__(self, destination: str, problem: str) -> None:
        self.destination = destination
        self.problem = problem
        super().__init__(f"C-ECHO to destination '{destination}' failed: {problem}")


def classify(status: int, error_comment: str | None, peer: str) -> Outcome:
    """The outcome of a C-STORE-RSP status (PS3.4 B.2.3, PS3.7 C).

    Success delivers; a warning (Bxxx, 0001, 0107, 0116) or 0111 (the peer
    already has the instance) delivers with ``warning``; A7xx (out of resources)
    and 0213 (resource limitation) are worth retrying; every other failure,
    and any status a C-STORE-RSP cannot carry, is permanent.
    """
    said = f"status 0x{status:04X}" + (f" ({error_comment})" if error_comment else "")
    if status == SUCCESS:
        return Outcome("delivered", status)
    if status == DUPLICATE_SOP_INSTANCE:
        return Outcome("delivered", status, f"{peer} already has this instance: {said}", True)
    category = status_category(status)
    if category == "warning":
        return Outcome("delivered", status, f"{peer} stored it with a warning: {said}", True)
    if category != "failure":
        return Outcome("permanent", status, f"{peer} answered a {category} status: {said}")
    if status == RESOURCE_LIMITATION:
        return Outcome("transient", status, f"{peer} is short of resources: {said}; will retry")
    for low, high, kind, meaning in _FAILURE_RANGES:
        if low <= status <= high:
            retry = "; will retry" if kind == "transient" else ""
            return Outcome(kind, status, f"{peer} refused it, {meaning}: {said}{retry}")
    return Outcome("permanent", status, f"{peer} refused it: {said}")


class DimseSender:
    """Delivers stored instances to one :class:`DimseDestination` with C-STORE.

    One association at a time, kept open between :meth:`send` calls. Calls are
    serialized; the forwarder runs ``max_parallel`` senders for parallelism.
    """

    def __init__(
        self, destination: DimseDestination, *, move_originator: tuple[str, int] | None = None
    ) -> None:
        """``move_originator``: (AE title, message ID) of the C-MOVE these
        C-STOREs are the sub-operations of (PS3.7 9.3.1.1)."""
        self._destination = destination
        self._move_originator = move_originator
        self._name = destination.name
        self._peer = f"{destination.ae_title}@{destination.host}:{destination.port}"
        self._fallbacks = destination.preferred_transfer_syntaxes or DEFAULT_FALLBACKS
        self._lock = asyncio.Lock()
        self._requestor: Requestor | None = None
        self._proposed: frozenset[Pair] = frozenset()
        self._idle_release: asyncio.Task[None] | None = None
        self._tls: ssl.SSLContext | None = None
        self._tls_files: tuple[tuple[int, int] | None, ...] = ()

    async def send(
        self, items: Sequence[StoredInstance], progress: Progress = UNOBSERVED
    ) -> list[Outcome]:
        """Deliver ``items``; one :class:`Outcome` per item, in their order, each also
        told to ``progress`` as its response arrives.

        An item whose stored data set fails its checksum is never delivered
        (permanent): sent as stored, it is checked as it goes and its last PDU held
        back (the association is aborted); converted, it is checked first. When
        the association cannot be opened or breaks, the items not yet answered
        are transient: nothing counts as delivered without a Success or warning
        status.
        """
        outcomes: dict[int, Outcome] = {}
        pending = list(enumerate(items))
        async with self._lock:
            if self._idle_release is not None:
                self._idle_release.cancel()
                self._idle_release = None
            try:
                await self._deliver(pending, outcomes, progress)
            finally:
                if self._requestor is not None:
                    self._idle_release = asyncio.get_running_loop().create_task(
                        self._release_when_idle()
                    )
        return [outcomes[n] for n in range(len(items))]

    async def echo(self) -> float:
        """Seconds for a C-ECHO round trip (PS3.7 9.3.5); raises :class:`EchoFailed`.

        The open association is used when it can be; otherwise one is opened for
        the echo and released after it.
        """
        async with self._lock:
            requestor = self._requestor
            if (
                requestor is None
                or VERIFICATION_PAIR not in requestor.negotiated.contexts
                or not requestor.check_open()
            ):
                requestor = None
            temporary = requestor is None
            try:
                if requestor is None:
                    requestor = await self._open([VERIFICATION_PAIR])
                start = time.perf_counter()
                status = await requestor.c_echo()
                elapsed = time.perf_counter() - start
            except (AssociationError, ValueError) as exc:
                # NOTE: a kept association that failed is closed; send() reopens it.
                raise EchoFailed(self._name, f"{self._peer}: {exc}") from exc
            finally:
                if temporary and requestor is not None:
                    with contextlib.suppress(AssociationError):
                        await requestor.release()
        if status != SUCCESS:
            raise EchoFailed(self._name, f"{self._peer} answered status 0x{status:04X}")
        return elapsed

    async def close(self) -> None:
        """Release the association, if one is open."""
        if self._idle_release is not None:
            self._idle_release.cancel()
            self._idle_release = None
        async with self._lock:
            await self._drop()

    # -- internals -----------------------------------------------------------------------

    async def _deliver(
        self,
        pending: list[tuple[int, StoredInstance]],
        outcomes: dict[int, Outcome],
        progress: Progress,
    ) -> None:
        items = [item for _, item in pending]
        for position, (n, item) in enumerate(pending):
            if not progress.wanted(item):
                outcomes[n] = WITHDRAWN
                continue
            try:
                requestor = await self._association_for(items, position)
                outcomes[n] = await self._store(requestor, item)
            except AssociationError as exc:
                await self._drop()
                log.warning(
                    "forward: association failed",
                    extra={"destination": self._name, "error": str(exc)},
                )
                for m, rest in pending[position:]:
                    outcomes[m] = Outcome("transient", None, f"{exc}; will retry")
                    progress.answered(rest, outcomes[m])
                return
            progress.answered(item, outcomes[n])

    async def _association_for(self, items: list[StoredInstance], position: int) -> Requestor:
        """An association proposing what ``items[position]`` needs: the open one when
        it does and is still alive, else a new one for as much of the rest as fits."""
        needed = self._pairs(items[position])
        requestor, previous = self._requestor, self._proposed
        if requestor is not None:
            if needed <= previous and requestor.check_open():
                return requestor
            await self._drop()
        proposed = [VERIFICATION_PAIR]
        seen = {VERIFICATION_PAIR}
        # NOTE: after the batch's own needs, what the last association carried,
        # so that alternating batches (CT, then MR, then CT) keep one association.
        wanted = [pair for item in items[position:] for pair in sorted(self._pairs(item))]
        for pair in [*wanted, *sorted(previous)]:
            if pair in seen:
                continue
            if len(proposed) == MAX_CONTEXTS:
                break
            proposed.append(pair)
            seen.add(pair)
        # NOTE: the first item's pairs always fit: its stored syntax and at most the
        # three syntaxes conversion produces.
        self._requestor = await self._open(proposed)
        self._proposed = frozenset(proposed)
        return self._requestor

    def _pairs(self, item: StoredInstance) -> set[Pair]:
        sop_class = item.sop_class_uid
        return {(sop_class, ts) for ts in (item.transfer_syntax_uid, *self._targets(item))}

    def _targets(self, item: StoredInstance) -> list[str]:
        """The fallbacks, in preference order, that the stored data set converts to."""
        possible = conversion_targets(item.transfer_syntax_uid)
        return [ts for ts in self._fallbacks if ts in possible]

    async def _open(self, pairs: list[Pair]) -> Requestor:
        destination = self._destination
        try:
            return await Requestor.open(
                destination.host,
                destination.port,
                called_ae=destination.ae_title,
                calling_ae=destination.calling_ae_title,
                contexts=[(abstract, [ts]) for abstract, ts in pairs],
                max_pdu=destination.max_pdu,
                connect_timeout_s=destination.connect_timeout_s,
                network_timeout_s=destination.network_timeout_s,
                tls=await self._tls_context() if destination.tls else None,
            )
        except TLSFailed as exc:
            hint = self._tls_hint(exc.kind)
            if hint is None:
                raise
            raise TLSFailed(exc.peer, f"{exc.problem}; {hint}", exc.kind) from None

    async def _tls_context(self) -> ssl.SSLContext:
        """Made at the first association, and again when a TLS file changed (a renewed
        certificate is used without a restart); raises TLSConfigError until it can be."""
        destination = self._destination
        files = tuple(
            _stamp(path)
            for path in (
                destination.tls_ca_file,
                destination.tls_cert_file,
                destination.tls_key_file,
            )
        )
        if self._tls is None or files != self._tls_files:
            # NOTE: a file replaced by an unusable one fails from now on, rather than
            # the old certificate going on unnoticed.
            self._tls = None
            # NOTE: loading a trust store parses hundreds of certificates; not on the loop.
            self._tls = await asyncio.to_thread(
                client_context,
                f"destination '{self._name}'",
                ca_file=destination.tls_ca_file,
                cert_file=destination.tls_cert_file,
                key_file=destination.tls_key_file,
                verify_hostname=destination.tls_verify_hostname,
            )
            self._tls_files = files
        return self._tls

    def _tls_hint(self, kind: str) -> str | None:
        """What in the destination's config to look at, for a TLSFailed of this kind."""
        destination = self._destination
        has_certificate = destination.tls_cert_file is not None
        if kind == "peer-certificate":
            if destination.tls_ca_file is None:
                return "the system trust store holds no CA that issued it: set tls_ca_file"
            return f"tls_ca_file '{destination.tls_ca_file}' must hold the CA that issued it"
        if kind == "peer-name":
            return (
                f"the certificate must name host '{destination.host}' (a DNS or IP address "
                "subject alternative name), or set tls_verify_hostname: false"
            )
        if kind == "certificate-required" and not has_certificate:
            return "it requires a client certificate: set tls_cert_file and tls_key_file"
        if kind == "refused" and not has_certificate:
            # NOTE: under TLS 1.2 a missing client certificate is a plain handshake failure.
            return "if it requires a client certificate, set tls_cert_file and tls_key_file"
        if kind == "certificate-refused" and has_certificate:
            return (
                "it does not accept the certificate in tls_cert_file "
                f"'{destination.tls_cert_file}': it must trust the CA that issued it"
            )
        if kind == "version":
            return "dicom-gw speaks TLS 1.2 and 1.3 only (BCP 195)"
        return None

    async def _store(self, requestor: Requestor, item: StoredInstance) -> Outcome:
        """One C-STORE: the stored bytes if their syntax was accepted, else converted."""
        negotiated = requestor.negotiated
        sop_class, stored_ts = item.sop_class_uid, item.transfer_syntax_uid
        context_id = negotiated.context_id(sop_class, stored_ts)
        if context_id is not None:
            try:
                fd = os.open(item.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                # As a failed checksum: the stored file is what was acknowledged.
                return _damaged(
                    ChecksumMismatch(item.path, item.checksum, f"unreadable ({exc.strerror})")
                )
            try:
                offset = os.fstat(fd).st_size - item.dataset_size
                if offset < 0:
                    return _damaged(ChecksumMismatch(item.path, item.checksum, "file too short"))
                crc = expected_crc(item)
                if crc is None and (damaged := await asyncio.to_thread(_verified, item)):
                    return damaged
                status, comment = await requestor.c_store_file(
                    context_id,
                    sop_class,
                    item.sop_instance_uid,
                    fd=fd,
                    offset=offset,
                    length=item.dataset_size,
                    expected_crc=crc,
                    move_originator=self._move_originator,
                )
            except DataSetChecksumMismatch as exc:
                return _damaged(
                    ChecksumMismatch(item.path, item.checksum, f"crc32c:{exc.actual:08x}"),
                    "the association was aborted before its last PDU",
                )
            finally:
                os.close(fd)
            return classify(status, comment, self._peer)
        problems = []
        for target in self._targets(item):
            context_id = negotiated.context_id(sop_class, target)
            if context_id is None:
                continue
            if damaged := await asyncio.to_thread(_verified, item):
                return damaged
            try:
                data = await asyncio.to_thread(
                    convert_dataset, item.path, item.dataset_size, stored_ts, target
                )
            except ConversionError as exc:
                problems.append(exc.reason)
                continue
            status, comment = await requestor.c_store_bytes(
                context_id,
                sop_class,
                item.sop_instance_uid,
                data,
                move_originator=self._move_originator,
            )
            return dataclasses.replace(classify(status, comment, self._peer), converted_to=target)
        if problems:
            return Outcome(
                "permanent",
                None,
                f"{self._peer} does not accept transfer syntax {stored_ts} for SOP class "
                f"{sop_class}, and the data set cannot be converted: {'; '.join(problems)}",
            )
        fallbacks = self._targets(item)
        also = f" nor the fallbacks {', '.join(fallbacks)}" if fallbacks else ""
        return Outcome(
            "permanent",
            None,
            f"SOP class {sop_class} / transfer syntax {stored_ts} not accepted by the peer "
            f"{self._peer} ({negotiated.why_not(sop_class, stored_ts)}){also}; "
            f"check the peer's configuration for this SOP class",
        )

    async def _release_when_idle(self) -> None:
        await asyncio.sleep(self._destination.idle_release_s)
        async with self._lock:
            self._idle_release = None
            await self._drop()

    async def _drop(self) -> None:
        """Release the association (an abort if that fails); then there is none."""
        requestor, self._requestor = self._requestor, None
        self._proposed = frozenset()
        if requestor is not None:
            try:
                await requestor.release()
            except AssociationError as exc:
                log.info(
                    "forward: association release failed",
                    extra={"destination": self._name, "error": str(exc)},
                )


def _stamp(path: str | None) -> tuple[int, int] | None:
    """(modification time, size) of a file, to notice that it was replaced."""
    if path is None:
        return None
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_mtime_ns, status.st_size


def _verified(item: StoredInstance) -> Outcome | None:
    """None if the stored data set is intact, else its outcome (reads the file:
    run it in a thread)."""
    try:
        verify_checksum(item)
    except ChecksumMismatch as exc:
        return _damaged(exc)
    return None


def _damaged(exc: ChecksumMismatch, how: str = "not sent") -> Outcome:
    return Outcome("permanent", None, f"{exc}; {how}")
