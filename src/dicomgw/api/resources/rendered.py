"""DICOMweb rendered resources and thumbnails (PS3.18 10.4.1.1.5-6, 8.3.5): a
frame of a stored instance as JPEG or PNG, decoded in the decode pool
(render/pool.py), never in this worker.

An instance is rendered as its first frame (a multi-frame instance's other
frames: ``/frames/{n}/rendered``). A study's or a series' thumbnail is that of
its middle instance (of the first series, for a study). Query parameters:
``viewport=w,h`` (the largest size; the aspect ratio is kept), ``quality``
(JPEG, 1-100), ``window=center,width[,linear]``.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping

import falcon
import falcon.asgi

from dicomgw import audit
from dicomgw.api.auditing import audit_request
from dicomgw.api.context import ApiContext
from dicomgw.api.problems import Problem, invalid, not_found
from dicomgw.query.files import StoredInstance, stored_files
from dicomgw.render.image import RENDERED_TYPES, RenderError, Rendering
from dicomgw.storage.layout import stored_path
from dicomgw.ul.uids import is_valid_uid

log = logging.getLogger(__name__)

THUMBNAIL = (128, 128)
"""A thumbnail's size when the request names no viewport."""
MAX_VIEWPORT = 8192


def _media_type(req: falcon.asgi.Request) -> str:
    accept = req.get_header("Accept")
    if not accept:
        return "image/jpeg"
    for kind in RENDERED_TYPES:
        if req.client_accepts(kind):
            return kind
    raise Problem(
        406,
        "not-acceptable",
        "Not acceptable",
        f"'{accept[:80]}': rendered images are offered as {' or '.join(RENDERED_TYPES)}",
    )


def _numbers(raw: str | None, name: str, count: int) -> list[float] | None:
    if raw is None:
        return None
    parts = raw.split(",")
    try:
        values = [float(p) for p in parts[:count]]
    except ValueError:
        values = []
    if len(values) != count or not all(math.isfinite(v) and abs(v) < 1e9 for v in values):
        raise invalid(f"'{name}' must be {count} numbers separated by commas", field=name)
    return values


def rendering_of(req: falcon.asgi.Request, path: str, frame: int, *, thumbnail: bool) -> Rendering:
    """The request's parameters (PS3.18 8.3.5.1), checked."""
    viewport = THUMBNAIL if thumbnail else None
    given = _numbers(req.get_param("viewport"), "viewport", 2)
    if given is not None:
        width, height = (int(v) for v in given)
        if not (0 < width <= MAX_VIEWPORT and 0 < height <= MAX_VIEWPORT):
            raise invalid(
                f"'viewport' must be 1 to {MAX_VIEWPORT} pixels each way", field="viewport"
            )
        viewport = (width, height)
    quality = 90
    if req.get_param("quality") is not None:
        raw = req.get_param("quality") or ""
        if not raw.isdigit() or not 1 <= int(raw) <= 100:
            raise invalid("'quality' must be a whole number from 1 to 100", field="quality")
        quality = int(raw)
    window = None
    raw_window = req.get_param("window")
    if raw_window is not None:
        parts = raw_window.split(",")
        if len(parts) == 3 and parts[2].strip().lower() != "linear":
            raise invalid("'window': only the linear function is offered", field="window")
        center, span = _numbers(",".join(parts[:2]), "window", 2) or (0.0, 0.0)
        if span < 1:
            raise invalid("'window' width must be at least 1", field="window")
        window = (center, span)
    return Rendering(path, frame, _media_type(req), viewport, quality, window)


def _action(thumbnail: bool) -> str:
    return "wado.thumbnail" if thumbnail else "wado.rendered"


def uri_rendering(params: Mapping[str, object], path: str, media_type: str) -> Rendering:
    """WADO-URI's rendering parameters (PS3.18 9.1.2.3): frameNumber, rows and
    columns (the largest size; the aspect ratio is kept), windowCenter with
    windowWidth, imageQuality."""

    def number(name: str, low: float, high: float) -> float | None:
        raw = params.get(name)
        if raw is None:
            return None
        try:
            value = float(str(raw))
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and low <= value <= high):
            raise invalid(f"'{name}' must be a number from {low:g} to {high:g}", field=name)
        return value

    frame = number("frameNumber", 1, 2**31)
    rows, columns = number("rows", 1, MAX_VIEWPORT), number("columns", 1, MAX_VIEWPORT)
    viewport = None
    if rows is not None or columns is not None:
        viewport = (int(columns or MAX_VIEWPORT), int(rows or MAX_VIEWPORT))
    center, width = number("windowCenter", -1e9, 1e9), number("windowWidth", 1, 1e9)
    if (center is None) != (width is None):
        raise invalid("windowCenter and windowWidth go together", field="windowCenter")
    quality = number("imageQuality", 1, 100)
    return Rendering(
        path,
        int(frame or 1),
        media_type,
        viewport,
        int(quality or 90),
        None if center is None or width is None else (center, width),
    )


class RenderedResource:
    """Renders one instance's frame; the routes in dicomweb.py call it."""

    def __init__(self, api: ApiContext) -> None:
        self._api = api
        self._root = api.config.storage_root

    async def _instances(
        self, study: str, series: str | None = None, instance: str | None = None
    ) -> list[StoredInstance]:
        for uid in (study, series, instance):
            if uid is not None and not is_valid_uid(uid):
                raise not_found(f"'{uid[:80]}', which is not a UID,")
        async with self._api.pools.pool.acquire() as conn:
            found = await stored_files(conn, study, series, instance)
        if not found:
            raise not_found(f"'{instance or series or study}'")
        return found

    async def instance(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        uids: tuple[str, str, str],
        *,
        frames: str = "1",
        thumbnail: bool,
    ) -> None:
        study, series, instance = uids
        if not frames.isdigit() or int(frames) < 1:
            raise Problem(
                400, "bad-request", "Bad frame number", f"'{frames[:40]}': one frame, from 1"
            )
        [item] = (await self._instances(study, series, instance))[:1]
        job = rendering_of(req, self.path(item), int(frames), thumbnail=thumbnail)
        await self.answer(req, resp, item, job, action=_action(thumbnail))

    async def representative(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        study: str,
        series: str | None = None,
    ) -> None:
        """A study's or a series' thumbnail: its middle instance's."""
        found = await self._instances(study, series)
        first = [f for f in found if f.series_instance_uid == found[0].series_instance_uid]
        item = first[len(first) // 2]
        job = rendering_of(req, self.path(item), 1, thumbnail=True)
        await self.answer(req, resp, item, job, action=_action(True))

    def path(self, item: StoredInstance) -> str:
        return str(stored_path(self._root, item.file_path))

    async def answer(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        item: StoredInstance,
        job: Rendering,
        *,
        action: str,
    ) -> None:
        """``job`` rendered in the decode pool, answered and audited as ``action``."""
        frame = job.frame
        tag = hashlib.sha256(repr((item.checksum, job)).encode()).hexdigest()[:32]
        resp.etag = f'"{tag}"'
        resp.cache_control = ["private", "max-age=3600"]
        resp.vary = ["Accept"]
        if req.get_header("If-None-Match") == resp.etag:
            resp.status = falcon.HTTP_304
            return
        try:
            image = await self._api.decoding.render(job)
        except RenderError as exc:
            log.warning(
                "cannot render",
                extra={"instance": item.sop_instance_uid, "frame": frame, "error": str(exc)},
            )
            raise Problem(
                exc.status,
                "not-rendered",
                "Cannot render",
                f"instance {item.sop_instance_uid}: {exc}",
            ) from None
        async with self._api.pools.pool.acquire() as conn:
            await audit_request(
                conn,
                req,
                action,
                f"instance {item.sop_instance_uid}",
                {"frame": frame},
                event_id=audit.INSTANCES_ACCESSED,
            )
        resp.content_type = job.media_type
        resp.data = image
