"""The streaming multipart/related reader: the same events however the body is
split, part contents exact (a CRLF inside a part is content), bad bodies named."""

from __future__ import annotations

import pytest

from dicomgw.api.multipart import (
    MultipartError,
    MultipartReader,
    PartData,
    PartEnd,
    PartStart,
)

BOUNDARY = "xYz-42"
PARTS = [b"\r\n--xYz-4 almost a delimiter\r\n", b"", b"DICM" * 50 + b"\r\n--xYz-4"]
BODY = (
    b"preamble to ignore\r\n"
    + b"".join(
        b"--xYz-42\r\nContent-Type: application/dicom\r\nX-Part: %d\r\n\r\n" % n + part + b"\r\n"
        for n, part in enumerate(PARTS)
    )
    + b"--xYz-42--\r\nepilogue"
)


def read(chunks: list[bytes]) -> list[tuple[dict[str, str], bytes]]:
    reader = MultipartReader(BOUNDARY)
    parts: list[tuple[dict[str, str], bytes]] = []
    content = b""
    headers: dict[str, str] = {}
    for chunk in chunks:
        for event in reader.feed(chunk):
            if isinstance(event, PartStart):
                headers, content = event.headers, b""
            elif isinstance(event, PartData):
                content += event.data
            elif isinstance(event, PartEnd):
                parts.append((headers, content))
    reader.end()
    return parts


def test_whole() -> None:
    parts = read([BODY])
    assert [content for _, content in parts] == PARTS
    assert parts[2][0] == {"content-type": "application/dicom", "x-part": "2"}


def test_split_at_every_offset() -> None:
    expected = read([BODY])
    for at in range(len(BODY) + 1):
        assert read([BODY[:at], BODY[at:]]) == expected, at


def test_byte_by_byte() -> None:
    assert read([BODY[n : n + 1] for n in range(len(BODY))]) == read([BODY])


def test_a_delimiter_at_the_very_start_and_no_headers() -> None:
    reader = MultipartReader("b")
    events = reader.feed(b"--b\r\n\r\nabc\r\n--b--")
    assert events == [PartStart({}), PartData(b"abc"), PartEnd()]
    assert reader.done


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"--xYz-42\r\nContent-Type: application/dicom\r\n\r\nDICM", "ends inside a part"),
        (b"no delimiter at all", "before any part"),
        (b"--xYz-42junk\r\n\r\n", "neither CRLF nor '--'"),
        (b"--xYz-42\r\nno colon here\r\n\r\n", "without a name"),
    ],
)
def test_bad_bodies_are_named(body: bytes, problem: str) -> None:
    reader = MultipartReader(BOUNDARY)
    with pytest.raises(MultipartError, match=problem):
        reader.feed(body)
        reader.end()


def test_boundary_length_is_bounded() -> None:
    with pytest.raises(MultipartError):
        MultipartReader("x" * 71)
