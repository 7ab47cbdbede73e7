"""The URL the client reached the API by, for the links answers carry."""

from __future__ import annotations

import falcon.asgi


def public_base(req: falcon.asgi.Request) -> str:
    """``scheme://host[:port]`` and the app's root path, as the client called it:
    through the proxy's ``Forwarded``/``X-Forwarded-Host`` when there is one
    (the shipped nginx site sets it), else from the Host header, port included
    (Falcon's ``forwarded_prefix`` alone drops it)."""
    if req.get_header("Forwarded") or req.get_header("X-Forwarded-Host"):
        return req.forwarded_prefix
    return f"{req.forwarded_scheme}://{req.netloc}{req.root_path}"
