"""WADO-RS, Retrieve (PS3.18 10.4): a study, a series or an instance as
``multipart/related; type="application/dicom"``, each part a stored Part 10 file
streamed from disk a chunk at a time (memory flat whatever the study's size).

The stored bytes go out unchanged when the client accepts their transfer syntax
(``transfer-syntax=*`` accepts any); without a ``transfer-syntax`` parameter
PS3.18 asks for Explicit VR Little Endian. Converting other syntaxes needs the
sandboxed decoding pool, which is not built yet: until then such a request is
answered 406, naming the stored syntax, rather than with bytes it did not ask for.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import falcon
import falcon.asgi

from dicomgw import audit
from dicomgw.api.accept import accepted_parts
from dicomgw.api.auditing import audit_request
from dicomgw.api.context import ApiContext
from dicomgw.api.problems import Problem, not_found
from dicomgw.api.resources.rendered import RenderedResource, uri_rendering
from dicomgw.api.storedfile import StoredFile
from dicomgw.query.files import StoredInstance, stored_files
from dicomgw.render.image import RENDERED_TYPES
from dicomgw.storage.layout import StoredFileMissing
from dicomgw.ul.uids import EXPLICIT_VR_LITTLE_ENDIAN, is_valid_uid

log = logging.getLogger(__name__)

APPLICATION_DICOM = "application/dicom"
ANY = "*"


def accepted_syntaxes(accept: str | None) -> set[str] | None:
    """The transfer syntaxes an ``Accept`` header takes for application/dicom parts
    ({"*"}: any); None when it takes none of them (PS3.18 8.7.3.5)."""
    syntaxes = {
        syntax or EXPLICIT_VR_LITTLE_ENDIAN
        for kind, syntax in accepted_parts(accept, APPLICATION_DICOM)
        if kind in ("*", APPLICATION_DICOM)
    }
    return syntaxes or None


class RetrieveResource:
    def __init__(self, api: ApiContext) -> None:
        self._api = api
        self._root = api.config.storage_root

    async def retrieve(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        study: str,
        series: str | None = None,
        instance: str | None = None,
    ) -> None:
        """PS3.18 10.4: Retrieve Study, Series or Instance (roles checked by the caller)."""
        for uid in (study, series, instance):
            if uid is not None and not is_valid_uid(uid):
                raise not_found(f"'{uid[:80]}', which is not a UID,")
        syntaxes = accepted_syntaxes(req.get_header("Accept"))
        if syntaxes is None:
            raise Problem(
                406,
                "not-acceptable",
                "Not acceptable",
                f"'{(req.get_header('Accept') or '')[:80]}': this retrieval answers "
                'multipart/related; type="application/dicom" (bulk data and rendered '
                "forms are not offered yet)",
            )
        async with self._api.pools.pool.acquire() as conn:
            files = await stored_files(conn, study, series, instance)
            if not files:
                what = instance or series or study
                raise not_found(f"'{what}'")
            wrong = [
                f for f in files if ANY not in syntaxes and f.transfer_syntax_uid not in syntaxes
            ]
            if wrong:
                raise Problem(
                    406,
                    "not-acceptable",
                    "Not acceptable",
                    f"{len(wrong)} instance(s) are stored as {wrong[0].transfer_syntax_uid}, "
                    f"not in {', '.join(sorted(syntaxes))}; conversion is not offered yet: "
                    "ask with transfer-syntax=* for the stored bytes",
                )
            await audit_request(
                conn,
                req,
                "wado.retrieve",
                f"study {study}",
                {"series": series, "instance": instance, "instances": len(files)},
                event_id=audit.INSTANCES_ACCESSED,
            )
        boundary = secrets.token_hex(16)
        resp.content_type = f'multipart/related; type="{APPLICATION_DICOM}"; boundary={boundary}'
        resp.stream = _parts(self._root, files, boundary)


async def _parts(root: Path, files: list[StoredInstance], boundary: str) -> AsyncIterator[bytes]:
    """The body: each file as a part (RFC 2046: the CRLF before a delimiter is the
    delimiter's), read a chunk at a time."""
    for n, item in enumerate(files):
        head = (
            f"--{boundary}\r\nContent-Type: {APPLICATION_DICOM}; "
            f"transfer-syntax={item.transfer_syntax_uid}\r\n\r\n"
        ).encode()
        yield head if n == 0 else b"\r\n" + head
        try:
            stored = await StoredFile.open(root, item.file_path)
        except StoredFileMissing as exc:
            # NOTE: the status is sent already; the body ends here, unfinished, so
            # the client sees a broken multipart rather than a missing instance.
            log.error("WADO-RS: a stored file is missing", extra={"error": str(exc)})
            return
        try:
            async for chunk in stored:
                yield chunk
        finally:
            await stored.close()
    yield f"\r\n--{boundary}--\r\n".encode()


class WadoUriResource:
    """WADO-URI (PS3.18 9, the URI service): one instance by its three UIDs, as
    ``application/dicom`` (the stored Part 10 file) or rendered as ``image/jpeg``
    (the default) or ``image/png`` by the decode pool (rendered.py)."""

    def __init__(self, api: ApiContext) -> None:
        self._api = api
        self._root = api.config.storage_root
        self._rendered = RenderedResource(api)

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        params = req.params
        if params.get("requestType") != "WADO":
            raise Problem(
                400, "bad-request", "Bad request", "requestType=WADO is required (PS3.18 9.1.2)"
            )
        uids = {}
        for name in ("studyUID", "seriesUID", "objectUID"):
            value = params.get(name)
            if not isinstance(value, str) or not value:
                raise Problem(400, "bad-request", "Bad request", f"{name} is required")
            if not is_valid_uid(value):
                raise not_found(f"'{value[:80]}', which is not a UID,")
            uids[name] = value
        content_types = str(params.get("contentType") or "image/jpeg").replace(" ", "").split(",")
        rendered = next((t for t in content_types if t in RENDERED_TYPES), None)
        if rendered is None and not any(
            t in (APPLICATION_DICOM, "*/*", "application/*") for t in content_types
        ):
            raise Problem(
                406,
                "not-acceptable",
                "Not acceptable",
                f"contentType {','.join(content_types)[:80]}: offered are "
                f"{APPLICATION_DICOM}, {' and '.join(RENDERED_TYPES)}",
            )
        for unsupported in ("anonymize", "annotation", "region", "presentationUID"):
            if unsupported in params:
                raise Problem(
                    400, "bad-request", "Bad request", f"{unsupported} is not supported here"
                )
        async with self._api.pools.pool.acquire() as conn:
            files = await stored_files(conn, uids["studyUID"], uids["seriesUID"], uids["objectUID"])
        if not files:
            raise not_found(f"instance '{uids['objectUID']}'")
        item = files[0]
        if rendered is not None and APPLICATION_DICOM not in content_types:
            job = uri_rendering(params, self._rendered.path(item), rendered)
            await self._rendered.answer(req, resp, item, job, action="wado.uri.rendered")
            return
        for rendering_only in ("windowCenter", "windowWidth", "frameNumber", "rows", "columns"):
            if rendering_only in params:
                raise Problem(
                    400,
                    "bad-request",
                    "Bad request",
                    f"{rendering_only} applies to rendered images, not to {APPLICATION_DICOM}",
                )
        async with self._api.pools.pool.acquire() as conn:
            wanted = params.get("transferSyntax")
            if wanted and wanted != item.transfer_syntax_uid:
                raise Problem(
                    406,
                    "not-acceptable",
                    "Not acceptable",
                    f"the instance is stored as {item.transfer_syntax_uid}; conversion is not "
                    "offered yet: leave transferSyntax out for the stored bytes",
                )
            await audit_request(
                conn,
                req,
                "wado.uri",
                f"study {uids['studyUID']}",
                {"instance": uids["objectUID"]},
                event_id=audit.INSTANCES_ACCESSED,
            )
        try:
            stored = await StoredFile.open(self._root, item.file_path)
        except StoredFileMissing as exc:
            log.error("WADO-URI: a stored file is missing", extra={"error": str(exc)})
            raise Problem(500, "storage-error", "Stored file missing", str(exc)) from None
        resp.content_type = APPLICATION_DICOM
        resp.content_length = stored.size
        resp.stream = _closing(stored)


async def _closing(stored: StoredFile) -> AsyncIterator[bytes]:
    try:
        async for chunk in stored:
            yield chunk
    finally:
        await stored.close()
