"""The ``Accept`` header of a DICOMweb retrieval (PS3.18 8.7.3.5): which part
media types, in which transfer syntaxes, the client takes."""

from __future__ import annotations

import falcon


def accepted_parts(accept: str | None, default_type: str) -> list[tuple[str, str | None]]:
    """(part media type, transfer-syntax or None) of each item the header takes;
    ``"*"`` for any part type; a ``multipart/related`` without ``type`` means
    ``default_type``. No header: [("*", None)]."""
    if not accept:
        return [("*", None)]
    out: list[tuple[str, str | None]] = []
    for item in accept.split(","):
        kind, params = falcon.parse_header(item.strip())
        kind = kind.lower()
        if kind in ("*/*", "multipart/*"):
            out.append(("*", None))
        elif kind == "multipart/related":
            part = params.get("type", default_type).lower()
            out.append(("*" if part in ("*", "*/*") else part, params.get("transfer-syntax")))
    return out
