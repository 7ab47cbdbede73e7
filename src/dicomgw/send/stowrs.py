"""The STOW-RS sender (PS3.18 10.5): stored Part 10 files POSTed to ``{url}/studies``.

Each request is ``multipart/related; type="application/dicom"``, one part per
instance holding its stored file byte for byte (preamble and File Meta included),
streamed from disk with its Content-Length known up front. The answer (PS3.18
10.5.3, a Store Instances Response data set in ``application/dicom+json``) says
per instance what happened; an answer that cannot be read falls back to the HTTP
status alone.
"""

from __future__ import annotations

import asyncio
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from dicomgw.config import StowDestination
from dicomgw.dimse import status
from dicomgw.errors import ConfigError, DicomGwError
from dicomgw.send.delivery import (
    UNOBSERVED,
    WITHDRAWN,
    ChecksumMismatch,
    Outcome,
    Progress,
    StoredInstance,
    verify_checksum,
)

CHUNK_SIZE = 1 << 20
RESPONSE_LIMIT = 8 << 20
"""Most of an answer read: the JSON for 1000 instances is well under 1 MiB."""
EXCERPT_CHARS = 200
# Servers that cannot send JSON may send XML (or anything) rather than 406.
ACCEPT = "application/dicom+json, application/json;q=0.9, */*;q=0.1"

# PS3.18 10.5.3, Store Instances Response Module (PS3.3 C.4.23 / Table 10.5.3-1).
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
WARNING_REASON = "00081196"

# HTTP answers that say "not now" rather than "not this": retried.
TRANSIENT_HTTP = frozenset((408, 429))

# The failure and warning reasons of PS3.18 10.5.3 (the C-STORE statuses of PS3.4 B.2.3).
_REASONS = {
    status.OUT_OF_RESOURCES: "out of resources",
    status.DATASET_DOES_NOT_MATCH_SOP_CLASS: "data set does not match SOP class",
    status.CANNOT_UNDERSTAND: "cannot understand",
    0xC122: "transfer syntax not supported",
    status.PROCESSING_FAILURE: "processing failure",
    status.DUPLICATE_SOP_INSTANCE: "duplicate SOP instance",
    status.SOP_CLASS_NOT_SUPPORTED: "SOP class not supported",
    status.NOT_AUTHORIZED: "not authorized",
    status.WARNING_COERCION: "coercion of data elements",
    status.WARNING_ELEMENTS_DISCARDED: "elements discarded",
    status.WARNING_DATASET_DOES_NOT_MATCH: "data set does not match SOP class",
}
_REASON_RANGES = (
    (0xA700, 0xA7FF, "out of resources"),
    (0xA900, 0xA9FF, "data set does not match SOP class"),
    (0xC000, 0xCFFF, "cannot understand"),
)

_HINTS = {
    401: "check the destination's credentials (auth, username/password or token)",
    403: "check the destination's credentials and the server's permissions for them",
    404: "check the destination URL: instances are POSTed to <url>/studies",
    405: "check the destination URL: instances are POSTed to <url>/studies",
    413: "the request is too large for the server: lower instances_per_request "
    "or raise the server's upload limit",
}


class DestinationUnreachable(DicomGwError):
    """The HTTP probe of a DICOMweb server got no answer, or a 5xx one."""

    def __init__(self, url: str, problem: str) -> None:
        self.url = url
        self.problem = problem
        super().__init__(f"DICOMweb server {url} is not reachable: {problem}")


class _StoredFileChanged(Exception):
    """A stored file became shorter between its checksum and its upload."""


@dataclass(frozen=True, slots=True)
class _Part:
    index: int
    """Position in the items given to :meth:`StowSender.send`."""
    item: StoredInstance
    size: int
    """The file's size when its checksum was verified: what the part will hold."""


@dataclass(frozen=True, slots=True)
class _Answer:
    """The per-instance part of a Store Instances Response."""

    failed: dict[str, int | None] = field(default_factory=dict)
    """SOP Instance UID -> Failure Reason (None when the server gave none)."""
    stored: dict[str, int | None] = field(default_factory=dict)
    """SOP Instance UID -> Warning Reason (None: stored without warning)."""


class StowSender:
    """Delivers stored instances to one DICOMweb server with STOW-RS.

    One HTTP/1.1 client keeps its connection alive across :meth:`send` calls. A
    sender has one request in flight at a time: the forwarder runs ``max_parallel``
    senders per destination, so that many requests reach the server at once.
    """

    def __init__(self, destination: StowDestination) -> None:
        self._url = destination.url.rstrip("/")
        self._timeout_s = destination.timeout_s
        self._per_request = destination.instances_per_request
        headers = {"Accept": ACCEPT}
        auth: httpx.Auth | None = None
        if destination.auth == "basic":
            auth = httpx.BasicAuth(destination.username or "", destination.password or "")
        elif destination.auth == "bearer":
            headers["Authorization"] = f"Bearer {destination.token}"
        self._client = httpx.AsyncClient(
            auth=auth,
            headers=headers,
            verify=_tls_context(destination),
            http1=True,
            http2=False,
            timeout=destination.timeout_s,
        )

    async def send(
        self, items: Sequence[StoredInstance], progress: Progress = UNOBSERVED
    ) -> list[Outcome]:
        """Deliver ``items``; one :class:`Outcome` per item, in their order, each also
        told to ``progress`` once its request is answered.

        Items whose stored data set fails its checksum are not sent (permanent).
        The others go ``instances_per_request`` to a request, one request after
        another; once the server is found down or overloaded, the rest are not tried.
        """
        # Reading whole files for their checksums would block the event loop.
        parts, outcomes = await asyncio.to_thread(_prepare, items)
        for index, outcome in outcomes.items():
            progress.answered(items[index], outcome)
        batches = [
            parts[i : i + self._per_request] for i in range(0, len(parts), self._per_request)
        ]
        server_failure: Outcome | None = None
        for planned in batches:
            for part in planned:
                if not progress.wanted(part.item):
                    outcomes[part.index] = WITHDRAWN
            batch = [part for part in planned if part.index not in outcomes]
            if not batch:
                continue
            # NOTE: after a refused connection or a timeout, each further request would
            # only wait for the same failure (timeout_s each).
            result = server_failure or await self._post(batch)
            if isinstance(result, Outcome):
                server_failure = result
                result = [result] * len(batch)
            for part, outcome in zip(batch, result, strict=True):
                outcomes[part.index] = outcome
                progress.answered(part.item, outcome)
        return [outcomes[index] for index in range(len(items))]

    async def echo(self) -> float:
        """Seconds for an HTTP round trip to the server; :class:`DestinationUnreachable`
        when nothing answers or the answer is a 5xx.

        The probe is a QIDO-RS ``GET {url}/studies?limit=1``: read-only, cheap, on the
        same path and credentials as the uploads, and answered by the DICOMweb
        application itself, so a proxy whose PACS is down says 502/503 rather than
        answering for it (as it may for OPTIONS). Any answer below 500 counts as
        reachable: a server without QIDO says 404/405, and a 401 is a rejection
        that the uploads report per instance, not an outage.
        """
        start = time.perf_counter()
        try:
            request = self._client.build_request("GET", f"{self._url}/studies", params={"limit": 1})
            response = await self._client.send(request, stream=True)
            try:
                body = await _read_capped(response)
            finally:
                await response.aclose()
        except httpx.RequestError as exc:
            raise DestinationUnreachable(
                self._url, _transport_problem(exc, self._timeout_s)
            ) from exc
        elapsed = time.perf_counter() - start
        if response.status_code >= 500:
            raise DestinationUnreachable(self._url, _http_problem(response, body))
        return elapsed

    async def close(self) -> None:
        """Close the kept-alive connections."""
        await self._client.aclose()

    async def _post(self, parts: list[_Part]) -> list[Outcome] | Outcome:
        """One STOW-RS request: an outcome per part, or one transient outcome for all
        when the server failed (no answer, 5xx, 408, 429). Never raises for those."""
        boundary = f"dicomgw-{secrets.token_hex(16)}"
        length, body = _multipart(parts, boundary)
        headers = {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Content-Length": str(length),
        }
        try:
            request = self._client.build_request(
                "POST", f"{self._url}/studies", content=body, headers=headers
            )
            response = await self._client.send(request, stream=True)
            try:
                answer = await _read_capped(response)
            finally:
                await response.aclose()
        except httpx.RequestError as exc:
            problem = f"{_transport_problem(exc, self._timeout_s)} ({self._url}); will retry"
            return Outcome("transient", None, problem)
        except (OSError, _StoredFileChanged) as exc:
            # Reading a stored file failed after its checksum was verified: the next
            # attempt verifies it again.
            return [Outcome("transient", None, f"{exc}; will retry") for _ in parts]
        return _outcomes(parts, response, answer)


def _tls_context(destination: StowDestination) -> ssl.SSLContext | bool:
    """The system trust store (where admins add an internal CA), or ``tls_ca_file``."""
    if not destination.verify_tls:
        return False
    try:
        return ssl.create_default_context(cafile=destination.tls_ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            "tls_ca_file",
            f"cannot be read as PEM CA certificates ({exc})",
            destination.tls_ca_file,
            source=f"destination '{destination.name}'",
        ) from exc


def _prepare(items: Sequence[StoredInstance]) -> tuple[list[_Part], dict[int, Outcome]]:
    """The items fit to send, and outcomes for those that are not (runs in a thread)."""
    parts: list[_Part] = []
    rejected: dict[int, Outcome] = {}
    for index, item in enumerate(items):
        try:
            verify_checksum(item)
            parts.append(_Part(index, item, item.path.stat().st_size))
        except (ChecksumMismatch, OSError) as exc:
            # OSError: the file went away between its checksum and its size.
            rejected[index] = Outcome("permanent", None, f"{exc}; not sent")
    return parts, rejected


def _multipart(parts: list[_Part], boundary: str) -> tuple[int, AsyncIterator[bytes]]:
    """The body's length and its bytes, read from the files ``CHUNK_SIZE`` at a time.

    RFC 2046 5.1.1: the CRLF before each delimiter belongs to the delimiter, so a
    part holds exactly the file's bytes.
    """
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    close = f"\r\n--{boundary}--\r\n".encode()
    length = sum(part.size for part in parts) + len(parts) * (len(head) + 2) - 2 + len(close)

    async def chunks() -> AsyncIterator[bytes]:
        for n, part in enumerate(parts):
            yield head if n == 0 else b"\r\n" + head
            with open(part.item.path, "rb") as f:
                remaining = part.size
                while remaining:
                    chunk = await asyncio.to_thread(f.read, min(CHUNK_SIZE, remaining))
                    if not chunk:
                        raise _StoredFileChanged(
                            f"stored file {part.item.path} became shorter while being sent"
                        )
                    remaining -= len(chunk)
                    yield chunk
        yield close

    return length, chunks()


async def _read_capped(response: httpx.Response) -> bytes:
    """The answer's body, or its first ``RESPONSE_LIMIT`` bytes."""
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) >= RESPONSE_LIMIT:
            break
    return bytes(body)


def _outcomes(parts: list[_Part], response: httpx.Response, body: bytes) -> list[Outcome] | Outcome:
    """Classify each instance of one request from the HTTP status and the answer;
    one transient outcome for all when the server failed."""
    code = response.status_code
    http = f"HTTP {code} {response.reason_phrase}".rstrip()
    if code >= 500 or code in TRANSIENT_HTTP:
        return Outcome("transient", code, f"{_http_problem(response, body)}; will retry")
    if 300 <= code < 400:
        where = response.headers.get("Location", "elsewhere")
        problem = f"{http}: the server redirects to {where}; set the destination URL to it"
        return [Outcome("permanent", code, problem) for _ in parts]
    answer = _parse(body)
    outcomes = []
    for part in parts:
        uid = part.item.sop_instance_uid
        if answer is not None and uid in answer.failed:
            outcomes.append(_failed(answer.failed[uid], code, http))
        elif answer is not None and uid in answer.stored:
            warning = answer.stored[uid]
            if warning is None:
                outcomes.append(Outcome("delivered", code, f"stored ({http})"))
            else:
                message = f"stored with warning {_reason(warning)} ({http})"
                outcomes.append(Outcome("delivered", warning, message, warning=True))
        elif code == 202:
            # Some instances failed and the answer does not say whether this one did:
            # sending it again is safe (a duplicate is delivered, with a warning).
            message = f"{http}: the server did not say whether this instance was stored"
            if answer is None:
                message += f", in an answer that cannot be read: {_excerpt(body)}"
            message += "; will send again"
            outcomes.append(Outcome("transient", code, message))
        elif code < 300:
            outcomes.append(Outcome("delivered", code, f"stored ({http})"))
        else:
            outcomes.append(Outcome("permanent", code, _http_problem(response, body)))
    return outcomes


def _failed(reason: int | None, code: int, http: str) -> Outcome:
    if reason is None:
        return Outcome("permanent", code, f"refused, no failure reason given ({http})")
    if reason == status.DUPLICATE_SOP_INSTANCE:
        message = f"the server already has this instance: {_reason(reason)} ({http})"
        return Outcome("delivered", reason, message, warning=True)
    if reason >> 8 == status.OUT_OF_RESOURCES >> 8:
        return Outcome(
            "transient", reason, f"refused for now: {_reason(reason)} ({http}); will retry"
        )
    return Outcome("permanent", reason, f"refused: {_reason(reason)} ({http})")


def _reason(code: int) -> str:
    name = _REASONS.get(code) or next(
        (name for low, high, name in _REASON_RANGES if low <= code <= high), None
    )
    return f"0x{code:04X} ({name})" if name else f"0x{code:04X}"


def _parse(body: bytes) -> _Answer | None:
    """The Store Instances Response in ``body`` (DICOM JSON, PS3.18 F.2), or None
    when it is not one (XML, HTML, malformed)."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    # NOTE: some servers wrap the one response data set in an array.
    if isinstance(document, list) and len(document) == 1:
        document = document[0]
    if not isinstance(document, dict):
        return None
    answer = _Answer()
    for item in _values(document, FAILED_SOP_SEQUENCE):
        uid = _first(item, REFERENCED_SOP_INSTANCE_UID)
        if isinstance(uid, str):
            answer.failed[uid] = _code(_first(item, FAILURE_REASON))
    for item in _values(document, REFERENCED_SOP_SEQUENCE):
        uid = _first(item, REFERENCED_SOP_INSTANCE_UID)
        if isinstance(uid, str):
            answer.stored[uid] = _code(_first(item, WARNING_REASON))
    return answer


def _values(dataset: object, tag: str) -> list[Any]:
    element = dataset.get(tag) if isinstance(dataset, dict) else None
    value = element.get("Value") if isinstance(element, dict) else None
    return value if isinstance(value, list) else []


def _first(dataset: object, tag: str) -> object:
    values = _values(dataset, tag)
    return values[0] if values else None


def _code(value: object) -> int | None:
    return value if isinstance(value, int) and 0 <= value <= 0xFFFF else None


def _http_problem(response: httpx.Response, body: bytes) -> str:
    code = response.status_code
    problem = f"HTTP {code} {response.reason_phrase}".rstrip()
    retry_after = response.headers.get("Retry-After")
    if retry_after:
        problem += f" (Retry-After: {retry_after})"
    if body:
        problem += f": {_excerpt(body)}"
    if code in _HINTS:
        problem += f"; {_HINTS[code]}"
    return problem


def _excerpt(body: bytes) -> str:
    text = " ".join(body[: EXCERPT_CHARS * 4].decode("utf-8", "replace").split())
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "..."


def _transport_problem(exc: httpx.RequestError, timeout_s: float) -> str:
    if isinstance(exc, httpx.ConnectTimeout):
        return f"no connection within {timeout_s:g} s"
    if isinstance(exc, httpx.WriteTimeout):
        return f"the server stopped reading the request for {timeout_s:g} s"
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer within {timeout_s:g} s"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect ({exc or type(exc).__name__})"
    return f"connection lost ({exc or type(exc).__name__})"
