"""DICOMweb (PS3.18) under ``/dicom-web``: STOW-RS, Store Instances (PS3.18 10.5),
and QIDO-RS, Search (PS3.18 10.6).

Thin HTTP adapters. QIDO-RS: the request is parsed into a query of
``dicomgw.query`` (the one search module), answered as DICOM JSON. STOW-RS:
the ``multipart/related`` body is read as it arrives
(api/multipart.py), each part is a Part 10 file streamed into ingest
(ingest/part10_stream.py), the very path a C-STORE takes: Part 10 checks,
fsync, index rows and forward jobs by the routing rules in one commit,
duplicate policy, disk watermarks. One part that fails never hides the others.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import falcon
import falcon.asgi
import orjson

from dicomgw import audit
from dicomgw.api.auditing import audit_request
from dicomgw.api.auth import allow
from dicomgw.api.context import ApiContext, App
from dicomgw.api.multipart import MultipartError, MultipartReader, PartData, PartEnd, PartStart
from dicomgw.api.problems import Problem
from dicomgw.api.resources.rendered import RenderedResource
from dicomgw.api.resources.wado import RetrieveResource, WadoUriResource
from dicomgw.api.resources.wado_metadata import (
    BulkDataResource,
    FramesResource,
    MetadataResource,
    one_instance,
    parse_frame_list,
)
from dicomgw.api.urls import public_base
from dicomgw.dimse.status import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, SUCCESS, status_category
from dicomgw.ingest.part10_stream import Part10Stream
from dicomgw.ingest.service import Result
from dicomgw.ingest.source import Source
from dicomgw.query.attributes import Level
from dicomgw.query.search import MAX_LIMIT, QueryError, dicom_json, parse_qido, search
from dicomgw.ul.uids import is_valid_uid

log = logging.getLogger(__name__)

ROOT = "/dicom-web"
DICOM_JSON = "application/dicom+json"
APPLICATION_DICOM = "application/dicom"

# PS3.18 Table 10.5.3-1, Store Instances Response Module (DICOM JSON, PS3.18 F.2).
RETRIEVE_URL = "00081190"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_CLASS_UID = "00081150"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
WARNING_REASON = "00081196"


def add_routes(app: App, api: ApiContext) -> None:
    store = StoreInstancesResource(api)
    app.add_route(f"{ROOT}/studies", store)
    app.add_route(f"{ROOT}/studies/{{study}}", store, suffix="study")
    # PS3.18 10.4: retrieve a series or an instance (a study: GET on the route above).
    retrieve = RetrieveRoutes(store.retrieve)
    app.add_route(f"{ROOT}/studies/{{study}}/series/{{series}}", retrieve, suffix="series")
    app.add_route(
        f"{ROOT}/studies/{{study}}/series/{{series}}/instances/{{instance}}",
        retrieve,
        suffix="instance",
    )
    # PS3.18 10.4.1.1.2-4: metadata, bulk data and frames.
    parts = InstancePartRoutes(api)
    app.add_route(f"{ROOT}/studies/{{study}}/metadata", parts, suffix="study_metadata")
    app.add_route(
        f"{ROOT}/studies/{{study}}/series/{{series}}/metadata", parts, suffix="series_metadata"
    )
    instance = f"{ROOT}/studies/{{study}}/series/{{series}}/instances/{{instance}}"
    app.add_route(f"{instance}/metadata", parts, suffix="instance_metadata")
    app.add_route(f"{instance}/frames/{{frames}}", parts, suffix="frames")
    app.add_route(f"{instance}/bulkdata/{{route:path}}", parts, suffix="bulkdata")
    # PS3.18 10.4.1.1.5-6: rendered images and thumbnails.
    rendered = RenderedRoutes(api)
    app.add_route(f"{instance}/rendered", rendered, suffix="instance")
    app.add_route(f"{instance}/thumbnail", rendered, suffix="instance_thumbnail")
    app.add_route(f"{instance}/frames/{{frames}}/rendered", rendered, suffix="frame")
    app.add_route(f"{instance}/frames/{{frames}}/thumbnail", rendered, suffix="frame_thumbnail")
    app.add_route(f"{ROOT}/studies/{{study}}/thumbnail", rendered, suffix="study_thumbnail")
    app.add_route(
        f"{ROOT}/studies/{{study}}/series/{{series}}/thumbnail", rendered, suffix="series_thumbnail"
    )
    # PS3.18 9: WADO-URI.
    app.add_route(f"{ROOT}/wado", WadoRoute(api))
    # PS3.18 10.6.1 Table 10.6.1-2: the search resources.
    app.add_route(f"{ROOT}/series", SearchResource(api, "series"))
    app.add_route(f"{ROOT}/instances", SearchResource(api, "instance"))
    app.add_route(f"{ROOT}/studies/{{study}}/series", SearchResource(api, "series"))
    app.add_route(f"{ROOT}/studies/{{study}}/instances", SearchResource(api, "instance"))
    app.add_route(
        f"{ROOT}/studies/{{study}}/series/{{series}}/instances", SearchResource(api, "instance")
    )


READERS = ("viewer", "operator")


class SearchResource:
    """QIDO-RS at one level; the path's UIDs restrict it (PS3.18 10.6)."""

    def __init__(self, api: ApiContext, level: Level) -> None:
        self._api = api
        self._level = level

    @allow(*READERS)
    async def on_get(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        study: str | None = None,
        series: str | None = None,
    ) -> None:
        """PS3.18 10.6: Search for studies, series or instances."""
        _accepts_dicom_json(req)
        within = {}
        for keyword, uid in (("StudyInstanceUID", study), ("SeriesInstanceUID", series)):
            if uid is not None:
                if not is_valid_uid(uid):
                    raise Problem(404, "not-found", "Not found", f"'{uid[:80]}' is not a UID")
                within[keyword] = uid
        try:
            query = parse_qido(self._level, req.params, within)
        except QueryError as exc:
            raise Problem(400, "bad-query", "Bad query", str(exc), field=exc.key) from None
        async with self._api.pools.pool.acquire() as conn:
            rows, more = await search(conn, query)
            await audit_request(
                conn,
                req,
                f"qido.{self._level}",
                "studies" if study is None else f"study {study}",
                {"query": dict(req.params), "matches": len(rows)},
                event_id=audit.QUERY,
            )
        root = public_base(req) + ROOT
        returned = query.returned()
        resp.content_type = DICOM_JSON
        resp.data = orjson.dumps([dicom_json(r, returned, self._level, root) for r in rows])
        if more and query.limited_by_server:
            # PS3.18 8.3.4.4.1: the origin server says when it cut the answer.
            resp.set_header(
                "Warning",
                f'299 dicom-gw: "There are more than {len(rows)} results: ask again with '
                f'offset={query.offset + len(rows)} (at most {MAX_LIMIT} a request)"',
            )


def _accepts_dicom_json(req: falcon.asgi.Request) -> None:
    """406 unless the client takes DICOM JSON (or JSON, or anything)."""
    accept = req.get_header("Accept")
    if accept and not any(req.client_accepts(kind) for kind in (DICOM_JSON, "application/json")):
        raise Problem(
            406,
            "not-acceptable",
            "Not acceptable",
            f"'{accept[:80]}': the search answers {DICOM_JSON} only (XML is not offered)",
        )


class RetrieveRoutes:
    """WADO-RS of a series or an instance (api/resources/wado.py does the work)."""

    def __init__(self, retrieve: RetrieveResource) -> None:
        self._retrieve = retrieve

    @allow(*READERS)
    async def on_get_series(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, study: str, series: str
    ) -> None:
        """PS3.18 10.4: Retrieve Series."""
        await self._retrieve.retrieve(req, resp, study, series)

    @allow(*READERS)
    async def on_get_instance(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        study: str,
        series: str,
        instance: str,
    ) -> None:
        """PS3.18 10.4: Retrieve Instance."""
        await self._retrieve.retrieve(req, resp, study, series, instance)


class WadoRoute:
    """WADO-URI (api/resources/wado.py does the work)."""

    def __init__(self, api: ApiContext) -> None:
        self._wado = WadoUriResource(api)

    @allow(*READERS)
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """PS3.18 9: Retrieve DICOM Object by its UIDs (WADO-URI)."""
        await self._wado.on_get(req, resp)


class InstancePartRoutes:
    """WADO-RS metadata, frames and bulk data (api/resources/wado_metadata.py does the work)."""

    def __init__(self, api: ApiContext) -> None:
        self._api = api
        self._metadata = MetadataResource(api)
        self._frames = FramesResource(api)
        self._bulk = BulkDataResource(api, self._frames)

    @allow(*READERS)
    async def on_get_study_metadata(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, study: str
    ) -> None:
        """PS3.18 10.4: Retrieve Study Metadata."""
        await self._metadata.answer(req, resp, study)

    @allow(*READERS)
    async def on_get_series_metadata(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, study: str, series: str
    ) -> None:
        """PS3.18 10.4: Retrieve Series Metadata."""
        await self._metadata.answer(req, resp, study, series)

    @allow(*READERS)
    async def on_get_instance_metadata(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        study: str,
        series: str,
        instance: str,
    ) -> None:
        """PS3.18 10.4: Retrieve Instance Metadata."""
        await self._metadata.answer(req, resp, study, series, instance)

    @allow(*READERS)
    async def on_get_frames(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        *,
        study: str,
        series: str,
        instance: str,
        frames: str,
    ) -> None:
        """PS3.18 10.4: Retrieve Frames (numbers from 1, comma-separated)."""
        numbers = parse_frame_list(frames)
        item = await one_instance(self._api, study, series, instance)
        await self._frames.frames(req, resp, item, numbers)

    @allow(*READERS)
    async def on_get_bulkdata(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        *,
        study: str,
        series: str,
        instance: str,
        route: str,
    ) -> None:
        """PS3.18 10.4: Retrieve Bulk Data, by the BulkDataURI metadata gave."""
        item = await one_instance(self._api, study, series, instance)
        await self._bulk.answer(req, resp, item, route)


class RenderedRoutes:
    """Rendered images and thumbnails (api/resources/rendered.py does the work)."""

    def __init__(self, api: ApiContext) -> None:
        self._rendered = RenderedResource(api)

    @allow(*READERS)
    async def on_get_instance(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, **uids: str
    ) -> None:
        """PS3.18 10.4: Retrieve Rendered Instance (its first frame)."""
        await self._rendered.instance(req, resp, _uids(uids), thumbnail=False)

    @allow(*READERS)
    async def on_get_instance_thumbnail(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, **uids: str
    ) -> None:
        """PS3.18 10.4: Retrieve Instance Thumbnail."""
        await self._rendered.instance(req, resp, _uids(uids), thumbnail=True)

    @allow(*READERS)
    async def on_get_frame(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, frames: str, **uids: str
    ) -> None:
        """PS3.18 10.4: Retrieve Rendered Frame (one frame number, from 1)."""
        await self._rendered.instance(req, resp, _uids(uids), frames=frames, thumbnail=False)

    @allow(*READERS)
    async def on_get_frame_thumbnail(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, frames: str, **uids: str
    ) -> None:
        """PS3.18 10.4: Retrieve Frame Thumbnail."""
        await self._rendered.instance(req, resp, _uids(uids), frames=frames, thumbnail=True)

    @allow(*READERS)
    async def on_get_study_thumbnail(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, study: str
    ) -> None:
        """PS3.18 10.4: Retrieve Study Thumbnail (its middle instance's)."""
        await self._rendered.representative(req, resp, study)

    @allow(*READERS)
    async def on_get_series_thumbnail(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, study: str, series: str
    ) -> None:
        """PS3.18 10.4: Retrieve Series Thumbnail (its middle instance's)."""
        await self._rendered.representative(req, resp, study, series)


def _uids(params: dict[str, str]) -> tuple[str, str, str]:
    return params["study"], params["series"], params["instance"]


class StoreInstancesResource:
    def __init__(self, api: ApiContext) -> None:
        self._api = api
        self._max_bytes = api.config.dicomweb.max_stow_bytes
        self._search = SearchResource(api, "study")
        self.retrieve = RetrieveResource(api)

    @allow(*READERS)
    async def on_get_study(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, study: str
    ) -> None:
        """PS3.18 10.4: Retrieve Study."""
        await self.retrieve.retrieve(req, resp, study)

    @allow(*READERS)
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """PS3.18 10.6: Search for studies."""
        await self._search.on_get(req, resp)

    @allow("operator")
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """PS3.18 10.5: Store Instances."""
        await self._store(req, resp, None)

    @allow("operator")
    async def on_post_study(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, study: str
    ) -> None:
        """PS3.18 10.5: Store Instances into one study; others are refused (0xA900)."""
        if not is_valid_uid(study):
            raise Problem(
                404, "not-found", "Not found", f"'{study[:80]}' is not a Study Instance UID"
            )
        await self._store(req, resp, study)

    async def _store(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, study: str | None
    ) -> None:
        boundary = _boundary(req.content_type)
        length = req.content_length
        if length is not None and length > self._max_bytes:
            raise Problem(
                413,
                "too-large",
                "Request body too large",
                f"{length} bytes; dicomweb.max_stow_bytes is {self._max_bytes}",
            )
        ingest = await self._api.ingesting.ingest()
        user = req.context.user
        source = Source(
            kind="stow",
            user=user.username if user is not None else None,
            address=req.context.client_ip,
            session=req.context.request_id,
        )
        reader = MultipartReader(boundary)
        # PERF: a part is committed and indexed (fsync, index transaction) while the
        # next ones are read, as C-STOREs on one association are; the index writer
        # then commits parts that finish together in one transaction.
        results: list[tuple[Part10Stream | None, asyncio.Future[Result]]] = []
        current: Part10Stream | None = None
        wrong_type: str | None = None
        received = 0
        try:
            async for chunk in req.stream:
                received += len(chunk)
                if received > self._max_bytes:
                    raise Problem(
                        413,
                        "too-large",
                        "Request body too large",
                        f"more than dicomweb.max_stow_bytes ({self._max_bytes}) bytes",
                    )
                for event in reader.feed(chunk):
                    if isinstance(event, PartStart):
                        kind = event.headers.get("content-type", APPLICATION_DICOM)
                        if falcon.parse_header(kind)[0].lower() == APPLICATION_DICOM:
                            current, wrong_type = (
                                Part10Stream(ingest, source, study_instance_uid=study),
                                None,
                            )
                        else:
                            current, wrong_type = None, kind
                    elif isinstance(event, PartData):
                        if current is not None:
                            current.feed(event.data)
                    elif isinstance(event, PartEnd):
                        if current is not None:
                            results.append((current, asyncio.ensure_future(current.finish())))
                        else:
                            comment = f"part is {wrong_type!r}, not {APPLICATION_DICOM}"
                            refused = ingest.refuse(CANNOT_UNDERSTAND, comment).result
                            results.append((None, _done(refused)))
                        current = None
                        await _bounded(results)
                if reader.done:
                    break
            reader.end()
        except MultipartError as exc:
            if current is not None:
                current.abandon()
            if not results:
                raise Problem(400, "bad-multipart", "Malformed multipart body", str(exc)) from None
            # What was complete is stored; the broken part is reported.
            cut = Result(CANNOT_UNDERSTAND, f"malformed multipart: {exc}")
            results.append((current, _done(cut)))
        except BaseException:
            # NOTE: a client that went away (or a limit) leaves nothing of the unfinished
            # part; the complete ones are still committed (their finish is not cancelled).
            if current is not None:
                current.abandon()
            await asyncio.gather(*(future for _, future in results), return_exceptions=True)
            raise
        outcomes = [(part, await future) for part, future in results]
        if not results:
            raise Problem(
                400, "bad-multipart", "Malformed multipart body", "the body holds no part"
            )
        stored = sum(_stored(result) for _, result in outcomes)
        failed = len(results) - stored
        resp.status = 200 if not failed else (409 if not stored else 202)
        resp.content_type = DICOM_JSON
        resp.data = orjson.dumps(_store_response(outcomes, study))
        async with self._api.pools.pool.acquire() as conn:
            await audit_request(
                conn,
                req,
                "stow.store",
                "studies",
                {"stored": stored, "failed": failed, "study": study},
                event_id=audit.INSTANCES_TRANSFERRED,
                outcome="success" if not failed else "failure",
            )
        log.info(
            "STOW-RS request stored",
            extra={"stored": stored, "failed": failed, "parts": len(results)},
        )


MAX_PARTS_IN_FLIGHT = 16
"""Parts of one request being committed at once; reading waits beyond this."""


async def _bounded(results: list[tuple[Part10Stream | None, asyncio.Future[Result]]]) -> None:
    pending = [future for _, future in results if not future.done()]
    if len(pending) >= MAX_PARTS_IN_FLIGHT:
        await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)


def _done(result: Result) -> asyncio.Future[Result]:
    future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
    future.set_result(result)
    return future


def _stored(result: Result) -> bool:
    """Success, or a warning status (stored, with a WarningReason)."""
    return result.status == SUCCESS or status_category(result.status) == "warning"


def _boundary(content_type: str | None) -> str:
    """The boundary of a ``multipart/related; type="application/dicom"`` body; 415 for
    any other media type (PS3.18 10.5.1.1), 400 without a boundary."""
    kind, params = falcon.parse_header(content_type or "")
    if kind.lower() != "multipart/related":
        raise Problem(
            415,
            "unsupported-media-type",
            "Unsupported media type",
            f"'{content_type}': STOW-RS takes multipart/related; type=\"application/dicom\"",
        )
    part_type = params.get("type", APPLICATION_DICOM).lower()
    if part_type != APPLICATION_DICOM:
        raise Problem(
            415,
            "unsupported-media-type",
            "Unsupported media type",
            f"multipart/related of type '{part_type}': only {APPLICATION_DICOM} is taken",
        )
    boundary = params.get("boundary", "")
    if not 1 <= len(boundary) <= 70:
        raise Problem(
            400, "bad-multipart", "Malformed multipart body", "no usable boundary parameter"
        )
    return boundary


def _store_response(
    results: list[tuple[Part10Stream | None, Result]], study: str | None
) -> dict[str, Any]:
    """The Store Instances Response Module (PS3.18 10.5.3) in DICOM JSON."""
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for part, result in results:
        item: dict[str, Any] = {}
        if part is not None and part.sop_class_uid:
            item[REFERENCED_SOP_CLASS_UID] = {"vr": "UI", "Value": [part.sop_class_uid]}
        if part is not None and part.sop_instance_uid:
            item[REFERENCED_SOP_INSTANCE_UID] = {"vr": "UI", "Value": [part.sop_instance_uid]}
        if _stored(result):
            if result.status != SUCCESS:
                item[WARNING_REASON] = {"vr": "US", "Value": [result.status]}
            referenced.append(item)
        else:
            status = result.status if 0 <= result.status <= 0xFFFF else OUT_OF_RESOURCES
            item[FAILURE_REASON] = {"vr": "US", "Value": [status]}
            failed.append(item)
    response: dict[str, Any] = {}
    if study is not None:
        response[RETRIEVE_URL] = {"vr": "UR", "Value": [f"{ROOT}/studies/{study}"]}
    if failed:
        response[FAILED_SOP_SEQUENCE] = {"vr": "SQ", "Value": failed}
    if referenced:
        response[REFERENCED_SOP_SEQUENCE] = {"vr": "SQ", "Value": referenced}
    return response
