"""CORS (the Fetch standard) for DICOMweb only: a viewer served from another
origin (OHIF on its own host) may search, retrieve and store with a token.
Nothing under /api/ is opened to other origins: the console is same-origin."""

from __future__ import annotations

import falcon.asgi

ROOT = "/dicom-web/"
EXPOSED = "Content-Type, Warning, X-Request-Id"
ALLOWED_HEADERS = "Authorization, Content-Type, Accept"
ALLOWED_METHODS = "GET, POST, OPTIONS"
PREFLIGHT_MAX_AGE_S = 600


class DicomwebCors:
    def __init__(self, origins: tuple[str, ...]) -> None:
        self._any = "*" in origins
        self._origins = frozenset(o.rstrip("/").lower() for o in origins)

    def _allowed(self, origin: str | None) -> bool:
        return origin is not None and (self._any or origin.rstrip("/").lower() in self._origins)

    async def process_response(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        resource: object,
        req_succeeded: bool,
    ) -> None:
        if not req.path.startswith(ROOT):
            return
        origin = req.get_header("Origin")
        resp.append_header("Vary", "Origin")
        if not self._allowed(origin):
            return
        # NOTE: never "*" with credentials; tokens travel in Authorization, which a
        # listed origin may send, and cookies are not asked for.
        resp.set_header("Access-Control-Allow-Origin", "*" if self._any else str(origin))
        resp.set_header("Access-Control-Expose-Headers", EXPOSED)
        if req.method == "OPTIONS" and req.get_header("Access-Control-Request-Method"):
            resp.set_header("Access-Control-Allow-Methods", ALLOWED_METHODS)
            resp.set_header("Access-Control-Allow-Headers", ALLOWED_HEADERS)
            resp.set_header("Access-Control-Max-Age", str(PREFLIGHT_MAX_AGE_S))
