"""A streaming reader of ``multipart/related`` bodies (RFC 2387, RFC 2046 5.1),
sans-IO: feed it the body as it arrives, get events back. A part's content is
handed on in pieces as soon as it cannot be the start of a delimiter, so memory
stays at one chunk plus a delimiter's length whatever the part's size.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_PART_HEADERS = 16384
"""A part's header block larger than this is refused (real ones are < 200 bytes)."""


class MultipartError(ValueError):
    """The body is not well-formed multipart; the message says where."""


@dataclass(frozen=True, slots=True)
class PartStart:
    headers: dict[str, str]
    """Header names in lower case."""


@dataclass(frozen=True, slots=True)
class PartData:
    data: bytes


@dataclass(frozen=True, slots=True)
class PartEnd:
    pass


Event = PartStart | PartData | PartEnd

_PREAMBLE, _AFTER_DELIMITER, _HEADERS, _BODY, _DONE = range(5)


class MultipartReader:
    def __init__(self, boundary: str) -> None:
        if not 1 <= len(boundary) <= 70:
            raise MultipartError(f"boundary of {len(boundary)} characters (RFC 2046: 1-70)")
        # RFC 2046 5.1.1: the CRLF before "--boundary" belongs to the delimiter.
        self._delimiter = b"\r\n--" + boundary.encode("latin-1")
        # NOTE: so that a delimiter right at the start of the body is found too.
        self._buffer = bytearray(b"\r\n")
        self._state = _PREAMBLE
        self.parts = 0

    @property
    def done(self) -> bool:
        """The close delimiter has been read."""
        return self._state == _DONE

    def feed(self, chunk: bytes | memoryview) -> list[Event]:
        if self._state == _DONE:
            return []  # the epilogue is ignored
        self._buffer += chunk
        events: list[Event] = []
        while self._step(events):
            pass
        return events

    def end(self) -> None:
        """The body ended: MultipartError unless the close delimiter was read."""
        if self._state != _DONE:
            where = "inside a part" if self._state in (_HEADERS, _BODY) else "before any part"
            raise MultipartError(f"the body ends {where}, without the close delimiter")

    def _step(self, events: list[Event]) -> bool:
        """One move of the state machine; False when it needs more bytes."""
        buffer, delimiter = self._buffer, self._delimiter
        if self._state in (_PREAMBLE, _BODY):
            at = buffer.find(delimiter)
            if at < 0:
                keep = len(delimiter) - 1
                if self._state == _BODY and len(buffer) > keep:
                    events.append(PartData(bytes(buffer[:-keep])))
                    del buffer[:-keep]
                elif self._state == _PREAMBLE and len(buffer) > keep:
                    del buffer[:-keep]
                return False
            if self._state == _BODY:
                if at:
                    events.append(PartData(bytes(buffer[:at])))
                events.append(PartEnd())
            del buffer[: at + len(delimiter)]
            self._state = _AFTER_DELIMITER
            return True
        if self._state == _AFTER_DELIMITER:
            if len(buffer) < 2:
                return False
            if buffer[:2] == b"--":
                self._state = _DONE
                buffer.clear()
                return False
            end = buffer.find(b"\r\n")
            if end < 0:
                if len(buffer) > 80:
                    raise MultipartError("a delimiter is followed by neither CRLF nor '--'")
                return False
            if buffer[:end].strip(b" \t"):
                raise MultipartError("a delimiter is followed by neither CRLF nor '--'")
            del buffer[: end + 2]
            self._state = _HEADERS
            return True
        if self._state == _HEADERS:
            if buffer[:2] == b"\r\n":
                headers_end, skip = 0, 2
            else:
                headers_end, skip = buffer.find(b"\r\n\r\n"), 4
            if headers_end < 0:
                if len(buffer) > MAX_PART_HEADERS:
                    raise MultipartError(f"part {self.parts + 1} has headers over 16 KiB")
                return False
            events.append(PartStart(_headers(bytes(buffer[:headers_end]), self.parts + 1)))
            del buffer[: headers_end + skip]
            self.parts += 1
            self._state = _BODY
            return True
        return False


def _headers(block: bytes, part: int) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.split(b"\r\n") if block else []:
        name, sep, value = line.partition(b":")
        if not sep or not name.strip():
            raise MultipartError(f"part {part} has a header line without a name: {line[:40]!r}")
        headers[name.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
    return headers
