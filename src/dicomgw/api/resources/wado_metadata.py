"""WADO-RS resources cut from inside stored files (PS3.18 10.4.1.1.2-4): metadata
of a study, a series or an instance as DICOM JSON, bulk data values, and frames.

Files are parsed in a worker thread (only headers: Pixel Data is located, never
loaded whole; see query/metadata.py). Metadata answers carry an ETag drawn from
the instances and their files, so a viewer asking again gets 304; the last few
answers are kept per worker, so a series opened by several viewers is parsed once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections import OrderedDict
from pathlib import Path

import falcon
import falcon.asgi
import orjson

from dicomgw import audit
from dicomgw.api.accept import accepted_parts
from dicomgw.api.auditing import audit_request
from dicomgw.api.context import ApiContext
from dicomgw.api.problems import Problem, not_found
from dicomgw.api.urls import public_base
from dicomgw.query.files import StoredInstance, stored_files
from dicomgw.query.metadata import (
    NATIVE_SYNTAXES,
    NoSuchElement,
    bulk_value,
    instance_metadata,
    pixel_layout,
    read_frames,
)
from dicomgw.storage.layout import StoredFileMissing, stored_path
from dicomgw.ul.uids import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN, is_valid_uid

log = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
OCTET_STREAM = "application/octet-stream"
CACHED_ANSWERS = 16
# PS3.18 Table 8.7.3-5: the media type of each encapsulated transfer syntax's frames.
FRAME_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}
# Native pixel bytes are the same in these (little endian; PS3.5 A.1, A.2).
_LITTLE_ENDIAN_NATIVE = frozenset((IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN))


def _check_uids(*uids: str | None) -> None:
    for uid in uids:
        if uid is not None and not is_valid_uid(uid):
            raise not_found(f"'{uid[:80]}', which is not a UID,")


class MetadataResource:
    """PS3.18 10.4.1.1.2: Retrieve Study, Series or Instance Metadata."""

    def __init__(self, api: ApiContext) -> None:
        self._api = api
        self._root = api.config.storage_root
        self._answers: OrderedDict[str, bytes] = OrderedDict()

    async def answer(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        study: str,
        series: str | None = None,
        instance: str | None = None,
    ) -> None:
        _check_uids(study, series, instance)
        accept = req.get_header("Accept")
        if accept and not any(req.client_accepts(k) for k in (DICOM_JSON, "application/json")):
            raise Problem(
                406,
                "not-acceptable",
                "Not acceptable",
                f"'{accept[:80]}': metadata is answered as {DICOM_JSON} only (XML is not offered)",
            )
        async with self._api.pools.pool.acquire() as conn:
            files = await stored_files(conn, study, series, instance)
            if not files:
                raise not_found(f"'{instance or series or study}'")
            await audit_request(
                conn,
                req,
                "wado.metadata",
                f"study {study}",
                {"series": series, "instance": instance, "instances": len(files)},
                event_id=audit.INSTANCES_ACCESSED,
            )
        base = f"{public_base(req)}/dicom-web"
        tag = hashlib.sha256(
            "\n".join([base, *(f"{f.sop_instance_uid} {f.file_path}" for f in files)]).encode()
        ).hexdigest()[:32]
        etag = f'"{tag}"'
        resp.set_header("ETag", etag)
        resp.set_header("Cache-Control", "private, no-cache")  # revalidate: studies grow
        if req.get_header("If-None-Match") == etag:
            resp.status = falcon.HTTP_304
            return
        body = self._answers.get(tag)
        if body is None:
            try:
                body = await asyncio.to_thread(self._parse, files, base, study)
            except StoredFileMissing as exc:
                log.error("WADO-RS metadata: a stored file is missing", extra={"error": str(exc)})
                raise Problem(
                    500, "storage-error", "Stored file missing", "a stored file cannot be read"
                ) from None
            self._answers[tag] = body
            while len(self._answers) > CACHED_ANSWERS:
                self._answers.popitem(last=False)
        else:
            self._answers.move_to_end(tag)
        resp.content_type = DICOM_JSON
        resp.data = body

    def _parse(self, files: list[StoredInstance], base: str, study: str) -> bytes:
        out = []
        for item in files:
            path = self._path(item)
            series = f"{base}/studies/{study}/series/{item.series_instance_uid}"
            url = f"{series}/instances/{item.sop_instance_uid}"
            try:
                out.append(instance_metadata(path, url, item.transfer_syntax_uid))
            except OSError as exc:
                raise StoredFileMissing(item.file_path, exc.strerror or str(exc)) from None
        return orjson.dumps(out)

    def _path(self, item: StoredInstance) -> Path:
        return stored_path(self._root, item.file_path)


async def one_instance(api: ApiContext, study: str, series: str, instance: str) -> StoredInstance:
    _check_uids(study, series, instance)
    async with api.pools.pool.acquire() as conn:
        files = await stored_files(conn, study, series, instance)
    if not files:
        raise not_found(f"'{instance}'")
    return files[0]


def _multipart(resp: falcon.asgi.Response, media_type: str, parts: list[tuple[str, bytes]]) -> None:
    """``parts`` (content type, bytes) as one multipart/related body."""
    boundary = secrets.token_hex(16)
    body = bytearray()
    for content_type, data in parts:
        body += f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode()
        body += data
        body += b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    resp.content_type = f'multipart/related; type="{media_type}"; boundary={boundary}'
    resp.data = bytes(body)


def frame_media_type(stored_syntax: str, accept: str | None) -> str | None:
    """The media type to send stored frames as, or None if the client takes none
    that needs no conversion (PS3.18 8.7.3.5)."""
    native = stored_syntax in NATIVE_SYNTAXES
    for kind, syntax in accepted_parts(accept, OCTET_STREAM):
        if native:
            # NOTE: big endian native pixels would need byte swapping: only on "*".
            same = stored_syntax in _LITTLE_ENDIAN_NATIVE and syntax in (
                None,
                *_LITTLE_ENDIAN_NATIVE,
            )
            if kind in ("*", OCTET_STREAM) and (same or syntax == "*"):
                return OCTET_STREAM
        else:
            stored_type = FRAME_MEDIA_TYPES.get(stored_syntax, OCTET_STREAM)
            if kind == "*" or (kind == stored_type and syntax in (None, "*", stored_syntax)):
                return stored_type
            if kind == OCTET_STREAM and syntax in ("*", stored_syntax):
                return OCTET_STREAM
    return None


class FramesResource:
    """PS3.18 10.4.1.1.4: Retrieve Frames, and the Pixel Data bulk data."""

    def __init__(self, api: ApiContext) -> None:
        self._api = api
        self._root = api.config.storage_root

    async def frames(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        item: StoredInstance,
        numbers: list[int] | None,
    ) -> None:
        """``numbers`` None: every frame (the Pixel Data bulk data)."""
        media_type = frame_media_type(item.transfer_syntax_uid, req.get_header("Accept"))
        if media_type is None:
            raise Problem(
                406,
                "not-acceptable",
                "Not acceptable",
                f"the frames are stored as {item.transfer_syntax_uid}; conversion is not offered "
                'yet: ask with multipart/related; type="application/octet-stream"; '
                "transfer-syntax=* for the stored bytes",
            )
        path = stored_path(self._root, item.file_path)

        def read() -> list[bytes]:
            layout = pixel_layout(path, item.transfer_syntax_uid)
            return read_frames(path, layout, numbers or list(range(1, layout.frames + 1)))

        try:
            frames = await asyncio.to_thread(read)
        except NoSuchElement as exc:
            raise not_found(f"{exc} of instance '{item.sop_instance_uid}'") from None
        except OSError as exc:
            log.error("WADO-RS frames: a stored file cannot be read", extra={"error": str(exc)})
            raise Problem(
                500, "storage-error", "Stored file unreadable", str(exc.strerror)
            ) from None
        async with self._api.pools.pool.acquire() as conn:
            await audit_request(
                conn,
                req,
                "wado.frames",
                f"instance {item.sop_instance_uid}",
                {"frames": numbers or "all"},
                event_id=audit.INSTANCES_ACCESSED,
            )
        syntax = (
            EXPLICIT_VR_LITTLE_ENDIAN
            if media_type == OCTET_STREAM
            and item.transfer_syntax_uid in NATIVE_SYNTAXES
            and item.transfer_syntax_uid in _LITTLE_ENDIAN_NATIVE
            else item.transfer_syntax_uid
        )
        part_type = f"{media_type}; transfer-syntax={syntax}"
        _multipart(resp, media_type, [(part_type, frame) for frame in frames])


def parse_frame_list(text: str) -> list[int]:
    """PS3.18 10.4.1.1.4: a comma-separated list of frame numbers, from 1."""
    try:
        numbers = [int(n) for n in text.split(",")]
    except ValueError:
        raise Problem(
            400, "bad-request", "Bad frame list", f"'{text[:80]}' is not a list of frame numbers"
        ) from None
    if not numbers or min(numbers) < 1 or len(numbers) > 10_000:
        raise Problem(400, "bad-request", "Bad frame list", "frame numbers start at 1")
    return numbers


class BulkDataResource:
    """PS3.18 10.4.1.1.3: Retrieve Bulk Data, by the path metadata named it with."""

    def __init__(self, api: ApiContext, frames: FramesResource) -> None:
        self._api = api
        self._root = api.config.storage_root
        self._frames = frames

    async def answer(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        item: StoredInstance,
        route: str,
    ) -> None:
        if route.upper() in ("7FE00010", "7FE00008", "7FE00009"):
            await self._frames.frames(req, resp, item, None)
            return
        if not any(
            kind in ("*", OCTET_STREAM)
            for kind, _ in accepted_parts(req.get_header("Accept"), OCTET_STREAM)
        ):
            raise Problem(
                406, "not-acceptable", "Not acceptable", f"bulk data is answered as {OCTET_STREAM}"
            )
        path = stored_path(self._root, item.file_path)
        try:
            value = await asyncio.to_thread(bulk_value, path, route)
        except NoSuchElement:
            raise not_found(f"bulk data '{route[:80]}' of '{item.sop_instance_uid}'") from None
        async with self._api.pools.pool.acquire() as conn:
            await audit_request(
                conn,
                req,
                "wado.bulkdata",
                f"instance {item.sop_instance_uid}",
                {"path": route},
                event_id=audit.INSTANCES_ACCESSED,
            )
        _multipart(resp, OCTET_STREAM, [(OCTET_STREAM, value)])
