"""Errors as RFC 9457 problem details (``application/problem+json``).

Every error the API returns has a stable ``type`` (a URN, so clients can switch
on it), a ``title``, the HTTP ``status`` and, where it helps, a ``detail`` in
words an operator understands. Falcon's own errors (404, 405, bad JSON) go
through the same serializer.
"""

from __future__ import annotations

from typing import Any

import falcon
import orjson

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:dicom-gw:problem:"

# Falcon's built-in errors, by status, get these types.
_BY_STATUS = {
    400: "bad-request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "payload-too-large",
    415: "unsupported-media-type",
    422: "invalid-request",
    429: "too-many-requests",
    500: "internal-error",
    503: "unavailable",
}


class Problem(falcon.HTTPError):
    """An API error with a stable problem type."""

    def __init__(
        self,
        status: int,
        kind: str,
        title: str,
        detail: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(falcon.code_to_http_status(status), title=title, description=detail,
                         headers=headers)  # fmt: skip
        self.kind = kind
        self.extensions = extensions


def unauthenticated(detail: str = "log in first") -> Problem:
    return Problem(401, "unauthenticated", "Authentication required", detail)


def forbidden(detail: str) -> Problem:
    return Problem(403, "forbidden", "Not allowed", detail)


def invalid(detail: str, **extensions: Any) -> Problem:
    return Problem(422, "invalid-request", "Invalid request", detail, **extensions)


def not_found(what: str) -> Problem:
    return Problem(404, "not-found", "Not found", f"{what} does not exist")


def serialize(req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError) -> None:
    kind = getattr(exc, "kind", None) or _BY_STATUS.get(exc.status_code, "error")
    body: dict[str, Any] = {
        "type": f"{TYPE_PREFIX}{kind}",
        "title": exc.title,
        "status": exc.status_code,
    }
    if exc.description:
        body["detail"] = exc.description
    elif isinstance(exc, falcon.HTTPRouteNotFound):
        body["detail"] = f"nothing at {req.path} (ids in paths are whole numbers from 1)"
    body.update(getattr(exc, "extensions", {}))
    request_id = getattr(req.context, "request_id", None)
    if request_id:
        body["request_id"] = request_id
    resp.data = orjson.dumps(body)
    resp.content_type = PROBLEM_JSON
