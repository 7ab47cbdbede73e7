"""The built web UI (``webui/``), served at ``/`` next to the API.

Vite writes hashed file names under ``/assets/``, so those are cached for a
year; ``index.html`` names them and is revalidated every time. Any other path
outside ``/api/`` that is not a file is a page of the single-page app and gets
``index.html``. The security headers, the CSP included, come from
:class:`~dicomgw.api.middleware.RequestMiddleware` like every other response.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import falcon
import falcon.asgi

from dicomgw.api.context import App
from dicomgw.config import ApiConfig

log = logging.getLogger(__name__)

ASSETS = "/assets/"
INDEX = "index.html"
# NOTE: an explicit map, not mimetypes: the system's tables differ between
# distributions, and a module script served with a wrong type does not run.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".webmanifest": "application/manifest+json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".woff": "font/woff",
    ".txt": "text/plain; charset=utf-8",
}
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"

_SOURCE_CHECKOUT_DIST = Path(__file__).resolve().parents[3] / "webui" / "dist"


def webui_root(config: ApiConfig) -> Path | None:
    """The directory to serve: ``api.webui_dir``, else the source checkout's
    ``webui/dist`` or the installed package's ``<prefix>/share/dicom-gw/webui``;
    None when that holds no ``index.html`` (then only the API is served)."""
    if config.webui_dir:
        candidates = [Path(config.webui_dir)]
    else:
        candidates = [_SOURCE_CHECKOUT_DIST, Path(sys.prefix) / "share" / "dicom-gw" / "webui"]
    for candidate in candidates:
        if (candidate / INDEX).is_file():
            return candidate.resolve()
    if config.webui_dir:
        log.warning("api.webui_dir %s has no %s: the web UI is not served", config.webui_dir, INDEX)
    return None


class WebUI:
    """A Falcon sink: files of the built UI, and ``index.html`` for the app's pages."""

    def __init__(self, root: Path) -> None:
        self._root = root

    def _file(self, path: str) -> Path | None:
        """The file under the root that ``path`` names, or None (also for any path
        that tries to leave the root, through ``..`` or a symbolic link)."""
        parts = PurePosixPath(path).parts[1:]
        if any(p in ("..", ".") or "\\" in p or "\0" in p for p in parts):
            return None
        candidate = self._root.joinpath(*parts)
        try:
            resolved = candidate.resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if not resolved.is_relative_to(self._root) or not resolved.is_file():
            return None
        return resolved

    async def __call__(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response | None, **_: Any
    ) -> None:
        if resp is None or req.path == "/api" or req.path.startswith("/api/"):
            # (None: a WebSocket; the UI has none.)
            raise falcon.HTTPRouteNotFound()
        if req.method not in ("GET", "HEAD"):
            raise falcon.HTTPMethodNotAllowed(["GET", "HEAD"])
        found = self._file(req.path) if req.path != "/" else None
        if found is None and req.path.startswith(ASSETS):
            # A hashed asset that is gone (an older build): never answer it with HTML.
            raise falcon.HTTPRouteNotFound()
        if found is None:
            found = self._root / INDEX
        await self._send(req, resp, found)

    async def _send(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, path: Path) -> None:
        try:
            stat = path.stat()
        except OSError:
            raise falcon.HTTPRouteNotFound() from None
        resp.content_type = CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream")
        resp.cache_control = [IMMUTABLE if req.path.startswith(ASSETS) else REVALIDATE]
        resp.etag = f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"'
        if req.get_header("If-None-Match") == resp.etag:
            resp.status = falcon.HTTP_304
            return
        if req.method == "HEAD":
            resp.content_length = stat.st_size
            return
        resp.data = await asyncio.to_thread(path.read_bytes)


def add_webui(app: App, config: ApiConfig) -> None:
    """Serve the UI at ``/`` when it is built; routes (the API) take precedence."""
    root = webui_root(config)
    if root is not None:
        app.add_sink(WebUI(root), prefix="/")
