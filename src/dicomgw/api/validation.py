"""Request bodies and query values: JSON objects with the fields a responder
expects, whole numbers in a range, no NUL characters; or a 422 naming the field."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any

import falcon
import falcon.asgi

from dicomgw.api.problems import Problem, invalid

# A date, or a date and time to the minute or finer with an optional offset: what
# the OpenAPI description's DateOrTime pattern says (fromisoformat takes more).
DATE_OR_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"(T[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,9})?)?(Z|[+-][0-9]{2}:[0-9]{2})?)?"
)


async def body_of(
    req: falcon.asgi.Request,
    required: Mapping[str, type],
    optional: Mapping[str, type] | None = None,
) -> dict[str, Any]:
    """The JSON object body with ``required`` fields (and maybe ``optional`` ones) of
    the given types; unknown fields are refused, so a typo is not silently ignored."""
    if req.content_type is None or not req.content_type.startswith(falcon.MEDIA_JSON):
        raise Problem(415, "unsupported-media-type", "JSON expected",
                      "send the body as application/json")  # fmt: skip
    try:
        body = await req.get_media()
    except falcon.MediaMalformedError:
        raise invalid("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise invalid("the body must be a JSON object")
    for name, value in body.items():
        if _holds_nul(name) or _holds_nul(value):
            # PostgreSQL text cannot hold it; said here rather than failing there.
            raise invalid(f"'{name}' holds a NUL character (\\u0000)", field=name)
    allowed = {**required, **(optional or {})}
    for name in body:
        if name not in allowed:
            raise invalid(f"unknown field '{name}'; allowed: {', '.join(allowed)}", field=name)
    for name, kind in allowed.items():
        if name not in body:
            if name in required:
                raise invalid(f"'{name}' is required", field=name)
            continue
        value = body[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise invalid(f"'{name}' must be a {kind.__name__}", field=name)
    return body


def _holds_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(v) for v in value)
    return False


def whole_number(raw: str | None, name: str, high: int, low: int = 1) -> int | None:
    """A query parameter's whole number from ``low`` to ``high``, or None when absent."""
    if raw is None:
        return None
    # NOTE: isdigit() alone takes '²', and int() refuses thousands of digits.
    value = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 19 else None
    if value is None or not low <= value <= high:
        raise invalid(f"'{name}' must be a whole number from {low} to {high}", field=name)
    return value


def flag(raw: str | None, name: str) -> bool:
    """A query parameter's true/false (absent: false)."""
    if raw is None:
        return False
    if raw.lower() not in ("true", "false", "1", "0"):
        raise invalid(f"'{name}' must be true or false", field=name)
    return raw.lower() in ("true", "1")


def date_or_time(raw: str | None, name: str) -> dt.datetime | None:
    """A query parameter's date (its midnight) or date and time; UTC when it has
    no offset. None when absent."""
    if raw is None:
        return None
    try:
        if not DATE_OR_TIME.fullmatch(raw):
            raise ValueError(raw)
        parsed = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise invalid(
            f"'{name}' must be a date or a date and time: 2025-01-31, 2025-01-31T08:00 "
            "or 2025-01-31T08:00:00+01:00",
            field=name,
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
