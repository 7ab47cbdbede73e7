"""tus 1.0 (https://tus.io/protocols/resumable-upload) under ``/api/v1/uploads/``:
core, creation, creation-with-upload, creation-defer-length, expiration,
termination, checksum (sha1, md5, sha256) and concatenation.

A 204 to a PATCH means the bytes are fsynced and the new offset is committed in
PostgreSQL. A file sent with tus alone becomes an upload of its own, taken in
(api/uploading.py) once its last byte is in; the session API
(api/resources/uploads.py) gives tus URLs for the files of a study instead.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import logging
import os
import secrets
import time
from typing import Any

import falcon
import falcon.asgi

from dicomgw.api.auth import User, allow
from dicomgw.api.context import PREFIX, ApiContext, App
from dicomgw.api.problems import Problem
from dicomgw.api.resources.upload_access import (
    UPLOADERS,
    owned_upload,
    rate_limited,
    within_quota,
)
from dicomgw.api.urls import public_base
from dicomgw.uploads import batches
from dicomgw.uploads.intake import NOT_A_KNOWN_KIND
from dicomgw.uploads.receive import (
    ALGORITHMS,
    HEAD_BYTES,
    Checksum,
    ChecksumMismatch,
    LeaseLost,
    TooLong,
    receive,
)
from dicomgw.uploads.store import Upload
from dicomgw.uploads.wrap import sniff

log = logging.getLogger(__name__)

ROOT = f"{PREFIX}/uploads"
TUS_VERSION = "1.0.0"
EXTENSIONS = (
    "creation,creation-with-upload,creation-defer-length,expiration,termination,"
    "checksum,concatenation"
)
OFFSET_STREAM = "application/offset+octet-stream"
FORM_KEYS = (
    "patient_name",
    "patient_id",
    "study_date",
    "modality",
    "study_description",
    "accession_number",
    "referring_physician",
    "notes",
)
"""Upload-Metadata keys that fill the form of a file sent alone (images, PDFs)."""


def add_routes(app: App, api: ApiContext) -> None:
    resource = TusResource(api)
    app.add_route(ROOT, resource)
    app.add_route(f"{ROOT}/{{upload_id}}", resource, suffix="upload")


class TusProblem(Problem):
    """A problem that still carries the tus headers a client reads."""

    def __init__(self, status: int, kind: str, title: str, detail: str, **ext: Any) -> None:
        super().__init__(status, kind, title, detail, headers={"Tus-Resumable": TUS_VERSION}, **ext)


def _http_date(when: Any) -> str:
    return email.utils.format_datetime(when, usegmt=True)


def _metadata(header: str | None) -> dict[str, str]:
    """``Upload-Metadata``: ``key base64,key base64`` (a key may have no value)."""
    found: dict[str, str] = {}
    if not header:
        return found
    for pair in header.split(","):
        key, _, value = pair.strip().partition(" ")
        if not key or not key.isascii() or " " in key or len(key) > 64:
            raise TusProblem(400, "bad-metadata", "Bad Upload-Metadata", f"key {key[:64]!r}")
        try:
            found[key] = base64.b64decode(value.strip(), validate=True).decode()[:1024]
        except (binascii.Error, ValueError, UnicodeDecodeError):
            raise TusProblem(
                400, "bad-metadata", "Bad Upload-Metadata", f"the value of '{key}' is not base64"
            ) from None
    return found


def _encode_metadata(metadata: dict[str, str]) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in metadata.items())


def _int_header(req: falcon.asgi.Request, name: str) -> int | None:
    value = req.get_header(name)
    if value is None:
        return None
    if not value.isdigit() or len(value) > 19:
        raise TusProblem(400, "bad-header", f"Bad {name}", f"'{value[:40]}' is not a byte count")
    return int(value)


class TusResource:
    def __init__(self, api: ApiContext) -> None:
        self._api = api
        self._up = api.uploading
        self._config = api.config.uploads

    def _headers(self, resp: falcon.asgi.Response) -> None:
        resp.set_header("Tus-Resumable", TUS_VERSION)

    def _check_version(self, req: falcon.asgi.Request) -> None:
        sent = req.get_header("Tus-Resumable")
        if sent is None:
            raise Problem(
                400,
                "tus-version",
                "Tus-Resumable missing",
                f"tus requests carry Tus-Resumable: {TUS_VERSION}",
                headers={"Tus-Version": TUS_VERSION},
            )
        if sent != TUS_VERSION:
            raise Problem(
                412,
                "tus-version",
                "Unsupported tus version",
                f"Tus-Resumable must be {TUS_VERSION} (got {sent!r})",
                headers={"Tus-Version": TUS_VERSION},
            )

    # -- OPTIONS -----------------------------------------------------------------

    @allow("public")
    async def on_options(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """tus: what this server supports."""
        self._options(resp)

    @allow("public")
    async def on_options_upload(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, upload_id: str
    ) -> None:
        """tus: what this server supports."""
        self._options(resp)

    def _options(self, resp: falcon.asgi.Response) -> None:
        self._headers(resp)
        resp.set_header("Tus-Version", TUS_VERSION)
        resp.set_header("Tus-Extension", EXTENSIONS)
        resp.set_header("Tus-Max-Size", str(self._config.max_upload_bytes))
        resp.set_header("Tus-Checksum-Algorithm", ",".join(ALGORITHMS))
        resp.status = 204

    # -- creation --------------------------------------------------------------------

    @allow(*UPLOADERS)
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """tus creation: a new upload; its URL in Location."""
        self._check_version(req)
        self._headers(resp)
        user: User = req.context.user
        length = _int_header(req, "Upload-Length")
        deferred = req.get_header("Upload-Defer-Length")
        concat = (req.get_header("Upload-Concat") or "").strip()
        metadata = _metadata(req.get_header("Upload-Metadata"))
        if concat.startswith("final;"):
            await self._final(req, resp, user, concat[len("final;") :], metadata)
            return
        if concat not in ("", "partial"):
            raise TusProblem(400, "bad-header", "Bad Upload-Concat", f"'{concat[:80]}'")
        if length is None and deferred != "1":
            raise TusProblem(
                400,
                "bad-header",
                "Upload length missing",
                "send Upload-Length, or Upload-Defer-Length: 1",
            )
        if length is not None and length > self._config.max_upload_bytes:
            raise TusProblem(
                413,
                "too-large",
                "Upload too large",
                f"{length} bytes; uploads.max_upload_bytes is {self._config.max_upload_bytes}",
            )
        async with self._api.pools.pool.acquire() as conn:
            await rate_limited(conn, req, self._config.create_rate, "upload-create")
            await within_quota(
                conn, self._up.store, user, length or 0, self._config.max_user_bytes_in_flight
            )
            batch_id = None
            if concat != "partial":
                batch_id = await self._file_alone(conn, req, user, metadata)
            upload_id = await self._up.store.insert(
                conn,
                user_id=user.id,
                length=length,
                filename=metadata.get("filename") or metadata.get("name") or "",
                metadata=metadata,
                concat=concat or None,
                batch_id=batch_id,
                file_index=0 if batch_id else None,
            )
            await asyncio.to_thread(self._up.store.create_file, upload_id)
            upload = await self._up.store.get(conn, upload_id)
        assert upload is not None
        resp.status = 201
        resp.set_header("Location", f"{public_base(req)}{ROOT}/{upload_id}")
        resp.set_header("Upload-Expires", _http_date(upload.expires_at))
        if req.content_type and req.content_type.startswith(OFFSET_STREAM):
            # creation-with-upload: the first bytes came with the POST.
            upload = await self._write(req, upload, 0)
            resp.set_header("Upload-Offset", str(upload.offset))
        log.info(
            "upload created",
            extra={"upload_id": upload_id, "length": length, "concat": concat or None},
        )

    async def _file_alone(
        self, conn: Any, req: falcon.asgi.Request, user: User, metadata: dict[str, str]
    ) -> str:
        """The upload of a file sent with tus alone: taken in once its last byte is
        in, its form from Upload-Metadata."""
        return await batches.create(
            conn,
            user_id=user.id,
            username=user.username,
            source_ip=req.context.client_ip,
            form={k: metadata[k] for k in FORM_KEYS if k in metadata},
            chunk_size=self._config.chunk_size,
            expire_s=self._config.expire_s,
            auto_complete=True,
        )

    async def _final(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        user: User,
        urls: str,
        metadata: dict[str, str],
    ) -> None:
        """concatenation: the partial uploads joined, in order, into one file."""
        ids = [url.rstrip("/").rsplit("/", 1)[-1] for url in urls.split()]
        if not ids:
            raise TusProblem(400, "bad-header", "Bad Upload-Concat", "no partial uploads named")
        store = self._up.store
        async with self._api.pools.pool.acquire() as conn:
            parts: list[Upload] = []
            for upload_id in ids:
                part = await store.get(conn, upload_id)
                if part is None or part.user_id != user.id or part.concat != "partial":
                    raise TusProblem(
                        400, "bad-concat", "Bad Upload-Concat", f"no partial upload {upload_id}"
                    )
                if not part.complete:
                    raise TusProblem(
                        400,
                        "bad-concat",
                        "Partial upload not complete",
                        f"partial upload {upload_id} has {part.offset} of {part.length} bytes",
                    )
                parts.append(part)
            with open(store.path(parts[0].id), "rb") as first:
                if sniff(first.read(HEAD_BYTES)) is None:
                    raise TusProblem(415, "unsupported-file", "Unsupported file", NOT_A_KNOWN_KIND)
            total = sum(p.length or 0 for p in parts)
            if total > self._config.max_upload_bytes:
                raise TusProblem(413, "too-large", "Upload too large", f"{total} bytes in all")
            batch_id = await self._file_alone(conn, req, user, metadata)
            upload_id = await store.insert(
                conn,
                user_id=user.id,
                length=total,
                filename=metadata.get("filename") or metadata.get("name") or "",
                metadata=metadata,
                concat="final",
                batch_id=batch_id,
                file_index=0,
                offset=total,
            )
            await asyncio.to_thread(self._join, upload_id, [p.id for p in parts])
            await store.delete(conn, [p.id for p in parts])
            for part in parts:
                store.remove_file(part.id)
            upload = await store.get(conn, upload_id)
        assert upload is not None
        resp.status = 201
        resp.set_header("Location", f"{public_base(req)}{ROOT}/{upload_id}")
        await self._completed(req, upload)

    def _join(self, upload_id: str, part_ids: list[str]) -> None:
        store = self._up.store
        fd = os.open(store.path(upload_id), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            for part_id in part_ids:
                src = os.open(store.path(part_id), os.O_RDONLY)
                try:
                    size = os.fstat(src).st_size
                    copied = 0
                    while copied < size:
                        done = os.copy_file_range(src, fd, size - copied)
                        if not done:
                            raise OSError(f"partial upload {part_id} ended early")
                        copied += done
                finally:
                    os.close(src)
            if self._up.fsync:
                os.fdatasync(fd)
        finally:
            os.close(fd)

    # -- HEAD, PATCH, DELETE -------------------------------------------------------------

    async def _upload(self, req: falcon.asgi.Request, upload_id: str) -> Upload:
        async with self._api.pools.pool.acquire() as conn:
            upload = await owned_upload(conn, self._up.store, req, upload_id)
        if upload is None:
            raise TusProblem(404, "not-found", "Not found", f"no upload {upload_id[:64]}")
        if upload.state == "failed":
            reason = (upload.result or {}).get("error", "it failed")
            raise TusProblem(410, "gone", "Upload failed", f"upload {upload_id}: {reason}")
        return upload

    @allow(*UPLOADERS)
    async def on_head_upload(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, upload_id: str
    ) -> None:
        """tus: the upload's offset."""
        self._check_version(req)
        self._headers(resp)
        upload = await self._upload(req, upload_id)
        resp.set_header("Upload-Offset", str(upload.offset))
        if upload.length is None:
            resp.set_header("Upload-Defer-Length", "1")
        else:
            resp.set_header("Upload-Length", str(upload.length))
        if upload.metadata:
            resp.set_header("Upload-Metadata", _encode_metadata(upload.metadata))
        if upload.concat:
            resp.set_header("Upload-Concat", upload.concat)
        if upload.state == "uploading":
            resp.set_header("Upload-Expires", _http_date(upload.expires_at))
        resp.set_header("Cache-Control", "no-store")
        resp.status = 200

    @allow(*UPLOADERS)
    async def on_patch_upload(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, upload_id: str
    ) -> None:
        """tus: bytes at Upload-Offset; 204 once they are durable."""
        self._check_version(req)
        self._headers(resp)
        if not (req.content_type or "").startswith(OFFSET_STREAM):
            raise TusProblem(
                415, "unsupported-media-type", "Wrong Content-Type", f"send {OFFSET_STREAM}"
            )
        offset = _int_header(req, "Upload-Offset")
        if offset is None:
            raise TusProblem(400, "bad-header", "Upload-Offset missing", "send Upload-Offset")
        upload = await self._upload(req, upload_id)
        if offset != upload.offset:
            raise TusProblem(
                409,
                "offset-mismatch",
                "Offset mismatch",
                f"the upload has {upload.offset} bytes; the PATCH starts at {offset}",
            )
        if upload.state != "uploading":
            if not req.content_length:
                resp.set_header("Upload-Offset", str(upload.offset))
                resp.status = 204
                return
            raise TusProblem(409, "complete", "Upload complete", f"upload {upload_id} is complete")
        if upload.expires_at.timestamp() < time.time():
            raise TusProblem(410, "gone", "Upload expired", f"upload {upload_id} expired")
        upload = await self._write(req, upload, offset)
        resp.set_header("Upload-Offset", str(upload.offset))
        if upload.state == "uploading":
            resp.set_header("Upload-Expires", _http_date(upload.expires_at))
        resp.status = 204

    async def _write(self, req: falcon.asgi.Request, upload: Upload, offset: int) -> Upload:
        store = self._up.store
        length = upload.length
        declared = _int_header(req, "Upload-Length")
        if declared is not None:
            if length is not None and declared != length:
                raise TusProblem(
                    400, "bad-header", "Upload-Length differs", f"the upload's is {length}"
                )
            if declared < offset or declared > self._config.max_upload_bytes:
                raise TusProblem(413, "too-large", "Bad Upload-Length", f"{declared} bytes")
            length = declared
        checksum = None
        sent = req.get_header("Upload-Checksum")
        if sent:
            try:
                checksum = Checksum.parse_tus(sent)
            except ValueError as exc:
                raise TusProblem(400, "bad-checksum", "Bad Upload-Checksum", str(exc)) from None
        limit = length if length is not None else self._config.max_upload_bytes
        if req.content_length is not None and offset + req.content_length > limit:
            raise TusProblem(
                413, "too-large", "Past the upload's length", f"the upload holds {limit} bytes"
            )
        token = secrets.token_hex(8)
        async with self._api.pools.pool.acquire() as conn:
            await rate_limited(conn, req, self._config.chunk_rate, "upload-chunk")
            if not await store.take_writer(conn, upload.id, token):
                raise TusProblem(
                    423, "locked", "Upload busy", "another request is writing this upload"
                )

        async def renew() -> bool:
            async with self._api.pools.pool.acquire() as conn:
                return await store.renew_writer(conn, upload.id, token)

        fd = store.open_file(upload.id)
        try:
            received = await receive(
                fd,
                offset,
                aiter(req.stream),
                limit=limit,
                expected=req.content_length,
                checksum=checksum,
                renew=renew,
                fsync=self._up.fsync,
            )
        except (ChecksumMismatch, TooLong, LeaseLost) as exc:
            await self._release(upload.id, token)
            if isinstance(exc, ChecksumMismatch):
                raise TusProblem(460, "checksum-mismatch", "Checksum mismatch", str(exc)) from None
            if isinstance(exc, TooLong):
                raise TusProblem(413, "too-large", "Past the upload's length", str(exc)) from None
            raise TusProblem(423, "locked", "Upload busy", "the write lease was lost") from None
        except BaseException:
            await self._release(upload.id, token)
            raise
        finally:
            os.close(fd)
        if offset == 0 and received.end > 0 and upload.concat != "partial":
            whole_file = length is not None and received.end >= length
            told = len(received.head) >= HEAD_BYTES or whole_file
            if told and sniff(received.head) is None:
                async with self._api.pools.pool.acquire() as conn:
                    await store.fail(conn, upload.id, NOT_A_KNOWN_KIND)
                store.remove_file(upload.id)
                raise TusProblem(
                    415,
                    "unsupported-file",
                    "Unsupported file",
                    f"{upload.filename}: {NOT_A_KNOWN_KIND}",
                )
        async with self._api.pools.pool.acquire() as conn:
            updated = await store.commit_offset(
                conn,
                upload.id,
                token,
                received.end,
                length=length if upload.length is None else None,
            )
        if updated is None:
            raise TusProblem(423, "locked", "Upload busy", "the write lease was lost")
        if updated.complete:
            await self._completed(req, updated)
        return updated

    async def _release(self, upload_id: str, token: str) -> None:
        async with self._api.pools.pool.acquire() as conn:
            await self._up.store.release_writer(conn, upload_id, token)

    async def _completed(self, req: falcon.asgi.Request, upload: Upload) -> None:
        """The last byte of a file sent alone is in: take it in."""
        if upload.batch_id is None:
            return
        async with self._api.pools.pool.acquire() as conn:
            batch = await batches.get(conn, upload.batch_id)
            if batch is None or not batch.auto_complete:
                return
            force = upload.metadata.get("force", "").lower() == "true"
            await self._up.complete(conn, req, batch, force=force)

    @allow(*UPLOADERS)
    async def on_delete_upload(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, upload_id: str
    ) -> None:
        """tus termination: the upload and its bytes are removed."""
        self._check_version(req)
        self._headers(resp)
        async with self._api.pools.pool.acquire() as conn:
            upload = await owned_upload(conn, self._up.store, req, upload_id)
            if upload is None:
                raise TusProblem(404, "not-found", "Not found", f"no upload {upload_id[:64]}")
            if upload.state == "ingested":
                raise TusProblem(
                    409, "complete", "Upload taken in", "its instances are stored; delete the study"
                )
            await self._up.store.delete(conn, [upload.id])
            if upload.batch_id is not None:
                batch = await batches.get(conn, upload.batch_id)
                if batch is not None and batch.auto_complete:
                    await batches.cancel(conn, batch.id, "terminated by the uploader")
        self._up.store.remove_file(upload.id)
        resp.status = 204
