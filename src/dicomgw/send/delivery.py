"""What a sender is given (stored instances) and what it reports back (outcomes).

Senders (DIMSE, STOW-RS) know nothing of the queue: the forwarder hands them
:class:`StoredInstance` items and records the :class:`Outcome` of each.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from dicomgw.storage.part10 import dataset_crc32c

OutcomeKind = Literal["delivered", "transient", "permanent", "withdrawn"]


@dataclass(frozen=True, slots=True)
class StoredInstance:
    """One instance to deliver: its stored file and what the index knows of it."""

    job_id: int
    instance_id: int
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    path: Path
    """The Part 10 file (absolute)."""
    dataset_size: int
    """The data set, exactly as received, is the file's last ``dataset_size`` bytes."""
    checksum: str
    """``crc32c:xxxxxxxx`` of the data set, recorded at ingest."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of delivering one instance.

    ``delivered`` (a warning status still counts, with ``warning`` set), ``transient``
    (retry later: peer down, out of resources, HTTP 5xx/429), ``permanent``
    (the peer refused this instance; retrying will not help) or ``withdrawn``
    (not sent: :meth:`Progress.wanted` said no; nothing was tried).
    """

    kind: OutcomeKind
    status: int | None
    """The DIMSE status, or the HTTP status for STOW-RS; None when nothing answered."""
    message: str = ""
    warning: bool = False
    converted_to: str | None = None
    """The transfer syntax the data set was converted to, when it was."""


WITHDRAWN = Outcome("withdrawn", None, "not sent: withdrawn by the forwarder")


class Progress(Protocol):
    """What a sender tells its caller while a batch is under way.

    The forwarder records each outcome as it arrives, and withdraws items whose
    jobs it no longer holds, so that a long batch neither outlives its lease nor
    sends what another worker has taken over.
    """

    def wanted(self, item: StoredInstance) -> bool:
        """Asked just before ``item`` is sent; False: do not send it (``withdrawn``)."""
        ...

    def answered(self, item: StoredInstance, outcome: Outcome) -> None:
        """Told of each item's outcome as soon as it is known."""
        ...


class Unobserved:
    """The :class:`Progress` of a caller that only wants the returned outcomes."""

    def wanted(self, item: StoredInstance) -> bool:
        return True

    def answered(self, item: StoredInstance, outcome: Outcome) -> None:
        pass


UNOBSERVED = Unobserved()


class ChecksumMismatch(Exception):
    """The stored data set no longer has the checksum recorded at ingest."""

    def __init__(self, path: Path, expected: str, actual: str) -> None:
        self.path = path
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"stored file {path} is damaged: data set checksum {actual}, "
            f"recorded at ingest {expected}"
        )


def dataset_checksum(path: Path, dataset_size: int) -> str:
    """``crc32c:xxxxxxxx`` of the file's data set (:func:`dataset_crc32c`)."""
    try:
        return f"{CRC32C_PREFIX}{dataset_crc32c(path, dataset_size):08x}"
    except ValueError as exc:
        raise ChecksumMismatch(path, "", str(exc)) from None


CRC32C_PREFIX = "crc32c:"


def expected_crc(item: StoredInstance) -> int | None:
    """The recorded CRC-32C as a number, for checking while sending; None if the
    record holds another kind of checksum."""
    if not item.checksum.startswith(CRC32C_PREFIX):
        return None
    try:
        return int(item.checksum[len(CRC32C_PREFIX) :], 16)
    except ValueError:
        return None


def verify_checksum(item: StoredInstance) -> None:
    """Raise :class:`ChecksumMismatch` unless the stored data set is intact."""
    try:
        actual = dataset_checksum(item.path, item.dataset_size)
    except OSError as exc:
        raise ChecksumMismatch(item.path, item.checksum, f"unreadable ({exc.strerror})") from None
    if actual != item.checksum:
        raise ChecksumMismatch(item.path, item.checksum, actual)
