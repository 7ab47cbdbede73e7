"""The upload session API (``/api/v1/upload``), as the mobile client was specified:
init (the study's form and its files), chunks in any order (Content-MD5), status
(missing chunks, per-file progress, the state through to forwarded), complete.
It writes the same upload store as tus (api/resources/tus.py): each file of a
session is a tus upload too, and ``tus_url`` names it for a tus client.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from typing import Any

import falcon
import falcon.asgi

from dicomgw.api.auth import User, allow
from dicomgw.api.context import PREFIX, ApiContext, App
from dicomgw.api.problems import Problem, invalid
from dicomgw.api.resources.tus import FORM_KEYS
from dicomgw.api.resources.tus import ROOT as TUS_ROOT
from dicomgw.api.resources.upload_access import (
    SEES_ALL,
    UPLOADERS,
    rate_limited,
    visible_batch,
    within_quota,
)
from dicomgw.api.urls import public_base
from dicomgw.api.validation import body_of, date_or_time, flag, whole_number
from dicomgw.uploads import batches
from dicomgw.uploads.completion import describe
from dicomgw.uploads.intake import NOT_A_KNOWN_KIND
from dicomgw.uploads.receive import Checksum, ChecksumMismatch, TooLong, receive
from dicomgw.uploads.store import Upload
from dicomgw.uploads.wrap import sniff

ROOT = f"{PREFIX}/upload"
MAX_FILES = 10_000
FORM_FIELDS = (*FORM_KEYS, "service_level")


def add_routes(app: App, api: ApiContext) -> None:
    resource = UploadSessionResource(api)
    app.add_route(ROOT, resource)
    app.add_route(f"{ROOT}/init", resource, suffix="init")
    app.add_route(f"{ROOT}/{{upload_id}}", resource, suffix="one")
    app.add_route(f"{ROOT}/{{upload_id}}/chunk", resource, suffix="chunk")
    app.add_route(f"{ROOT}/{{upload_id}}/status", resource, suffix="status")
    app.add_route(f"{ROOT}/{{upload_id}}/complete", resource, suffix="complete")


def _files(body: dict[str, Any], max_bytes: int) -> list[tuple[str, int]]:
    files = body["files"]
    if not files or len(files) > MAX_FILES:
        raise invalid(f"'files' must list 1 to {MAX_FILES} files", field="files")
    found = []
    for n, item in enumerate(files):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise invalid(f"files[{n}] must be {{name, size}}", field="files")
        size = item.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= max_bytes:
            raise invalid(
                f"files[{n}].size must be 1 to {max_bytes} bytes (uploads.max_upload_bytes)",
                field="files",
            )
        found.append((item["name"][:255], size))
    return found


class UploadSessionResource:
    def __init__(self, api: ApiContext) -> None:
        self._api = api
        self._up = api.uploading
        self._config = api.config.uploads

    # -- init ---------------------------------------------------------------------------

    @allow(*UPLOADERS)
    async def on_post_init(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """A new upload: the study's form and its files; a chunk size and tus URLs."""
        user: User = req.context.user
        body = await body_of(req, {"files": list}, {name: str for name in FORM_FIELDS})
        files = _files(body, self._config.max_upload_bytes)
        total = sum(size for _, size in files)
        form = {k: body[k].strip() for k in FORM_FIELDS if k in body}
        store = self._up.store
        async with self._api.pools.pool.acquire() as conn:
            await rate_limited(conn, req, self._config.create_rate, "upload-create")
            await within_quota(conn, store, user, total, self._config.max_user_bytes_in_flight)
            async with conn.transaction():
                upload_id = await batches.create(
                    conn,
                    user_id=user.id,
                    username=user.username,
                    source_ip=req.context.client_ip,
                    form=form,
                    chunk_size=self._config.chunk_size,
                    expire_s=self._config.expire_s,
                )
                for n, (name, size) in enumerate(files):
                    await store.insert(
                        conn,
                        user_id=user.id,
                        length=size,
                        filename=name,
                        metadata={"filename": name},
                        batch_id=upload_id,
                        file_index=n,
                    )
                uploads = await store.of_batch(conn, upload_id)
            for upload in uploads:
                await asyncio.to_thread(store.create_file, upload.id)
            batch = await batches.get(conn, upload_id)
        assert batch is not None
        resp.status = 201
        resp.location = f"{ROOT}/{upload_id}/status"
        base = public_base(req)
        resp.media = {
            "upload_id": upload_id,
            "chunk_size": batch.chunk_size,
            "expires_at": batch.expires_at.isoformat(),
            "files": [
                {
                    "index": u.file_index,
                    "name": u.filename,
                    "size": u.length,
                    "chunks": u.chunk_count(),
                    "tus_url": f"{base}{TUS_ROOT}/{u.id}",
                }
                for u in uploads
            ],
        }

    # -- chunks -------------------------------------------------------------------------

    @allow(*UPLOADERS)
    async def on_put_chunk(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, upload_id: str
    ) -> None:
        """One chunk of one file (``?file=N&index=K``); a chunk already stored is 204
        and is not written again."""
        file_index = whole_number(req.get_param("file"), "file", MAX_FILES, low=0)
        index = whole_number(req.get_param("index"), "index", 2**31, low=0)
        if file_index is None or index is None:
            raise invalid("send the file's index and the chunk's: ?file=N&index=K")
        store = self._up.store
        async with self._api.pools.pool.acquire() as conn:
            batch = visible_batch(req, await batches.get(conn, upload_id), upload_id)
            upload = next(
                (u for u in await store.of_batch(conn, upload_id) if u.file_index == file_index),
                None,
            )
        if batch.state != "uploading":
            raise Problem(409, "not-uploading", "Upload not open", f"the upload is {batch.state}")
        if batch.expires_at < dt.datetime.now(dt.UTC):
            raise Problem(410, "gone", "Upload expired", f"upload {upload_id} expired")
        if upload is None:
            raise Problem(404, "not-found", "No such file", f"the upload has no file {file_index}")
        if upload.state == "failed":
            raise Problem(410, "gone", "File failed", str((upload.result or {}).get("error")))
        if index >= upload.chunk_count():
            raise Problem(
                400, "bad-chunk", "No such chunk", f"file {file_index} has {upload.chunk_count()}"
            )
        if upload.has_chunk(index):
            resp.status = 204
            return
        start, size = upload.chunk_range(index)
        if req.content_length is not None and req.content_length != size:
            raise Problem(
                400,
                "bad-chunk",
                "Wrong chunk size",
                f"chunk {index} of file {file_index} is {size} bytes, not {req.content_length}",
            )
        checksum = None
        sent = req.get_header("Content-MD5")
        if sent:
            try:
                checksum = Checksum.parse_md5(sent)
            except ValueError as exc:
                raise Problem(400, "bad-checksum", "Bad Content-MD5", str(exc)) from None
        async with self._api.pools.pool.acquire() as conn:
            await rate_limited(conn, req, self._config.chunk_rate, "upload-chunk")
        await self._write_chunk(
            req, upload=upload, index=index, start=start, size=size, checksum=checksum
        )
        resp.status = 204

    async def _write_chunk(
        self,
        req: falcon.asgi.Request,
        *,
        upload: Upload,
        index: int,
        start: int,
        size: int,
        checksum: Checksum | None,
    ) -> None:
        store = self._up.store

        async def renew() -> bool:
            return True  # chunks of one file go to distinct bytes: no lease

        fd = store.open_file(upload.id)
        try:
            received = await receive(
                fd,
                start,
                aiter(req.stream),
                limit=start + size,
                expected=size,
                checksum=checksum,
                renew=renew,
                fsync=self._up.fsync,
            )
        except ChecksumMismatch as exc:
            raise Problem(460, "checksum-mismatch", "Checksum mismatch", str(exc)) from None
        except TooLong:
            raise Problem(
                400, "bad-chunk", "Chunk too long", f"chunk {index} is {size} bytes"
            ) from None
        finally:
            os.close(fd)
        if received.end - start != size:
            raise Problem(
                400,
                "bad-chunk",
                "Chunk incomplete",
                f"{received.end - start} of the chunk's {size} bytes arrived; send it again",
            )
        async with self._api.pools.pool.acquire() as conn:
            if index == 0 and sniff(received.head) is None:
                await store.fail(conn, upload.id, NOT_A_KNOWN_KIND)
                store.remove_file(upload.id)
                raise Problem(
                    415,
                    "unsupported-file",
                    "Unsupported file",
                    f"{upload.filename}: {NOT_A_KNOWN_KIND}",
                )
            await store.commit_chunk(conn, upload.id, index)

    # -- status, list, complete, cancel ----------------------------------------------------

    @allow(*UPLOADERS)
    async def on_get_status(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, upload_id: str
    ) -> None:
        """Bytes received, each file's progress and missing chunks, the state."""
        async with self._api.pools.pool.acquire() as conn:
            batch = visible_batch(req, await batches.get(conn, upload_id), upload_id)
            uploads = await self._up.store.of_batch(conn, upload_id)
            forward = await batches.forwarding(conn, upload_id)
        resp.media = _status(batch, uploads, forward)

    @allow(*UPLOADERS)
    async def on_get_one(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, upload_id: str
    ) -> None:
        """The same as /status."""
        await self.on_get_status(req, resp, upload_id=upload_id)

    @allow(*UPLOADERS)
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """My uploads (operators and admins: everyone's), newest first."""
        user: User = req.context.user
        limit = whole_number(req.get_param("limit"), "limit", 200) or 50
        until = date_or_time(req.get_param("before"), "before")
        async with self._api.pools.pool.acquire() as conn:
            found = await batches.listing(
                conn, None if user.role in SEES_ALL else user.id, limit=limit, before=until
            )
            items = []
            for batch in found:
                uploads = await self._up.store.of_batch(conn, batch.id)
                forward = await batches.forwarding(conn, batch.id)
                items.append(_status(batch, uploads, forward, files=False))
        resp.media = {"items": items}

    @allow(*UPLOADERS)
    async def on_post_complete(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, upload_id: str
    ) -> None:
        """Every file is in: take the upload in (``?force=true`` past the duplicate rule)."""
        force = flag(req.get_param("force"), "force")
        async with self._api.pools.pool.acquire() as conn:
            batch = visible_batch(req, await batches.get(conn, upload_id), upload_id)
            done = await self._up.complete(conn, req, batch, force=force)
            now = await batches.get(conn, upload_id)
            uploads = await self._up.store.of_batch(conn, upload_id)
            forward = await batches.forwarding(conn, upload_id)
        assert now is not None
        if done.missing:
            raise Problem(
                409,
                "incomplete",
                "Upload incomplete",
                "some files are not whole yet; send their missing chunks",
                missing_chunks=done.missing,
            )
        if done.problems:
            raise Problem(415, "unsupported-file", "Unsupported files", "; ".join(done.problems))
        if done.form_missing:
            raise invalid(
                "images and PDFs are filed under the form's patient: "
                f"{', '.join(done.form_missing)} required",
                field=done.form_missing[0],
            )
        if done.duplicates:
            raise Problem(
                409,
                "duplicate",
                "Already received",
                f"{describe(done.duplicates)}; send again with force=true to store it anyway",
                duplicates=done.duplicates,
            )
        if not done.started:
            raise Problem(409, "not-uploading", "Upload not open", f"the upload is {done.state}")
        resp.status = 202
        resp.media = _status(now, uploads, forward)

    @allow(*UPLOADERS)
    async def on_delete_one(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, upload_id: str
    ) -> None:
        """Cancel an upload that is not complete; its bytes are removed."""
        store = self._up.store
        async with self._api.pools.pool.acquire() as conn:
            visible_batch(req, await batches.get(conn, upload_id), upload_id)
            if not await batches.cancel(conn, upload_id, "cancelled by the uploader"):
                raise Problem(409, "not-uploading", "Upload not open", "it is past uploading")
            uploads = await store.of_batch(conn, upload_id)
            await store.delete(conn, [u.id for u in uploads])
        for upload in uploads:
            store.remove_file(upload.id)
        resp.status = 204


def _status(
    batch: batches.Batch,
    uploads: list[Upload],
    forward: dict[str, int],
    *,
    files: bool = True,
) -> dict[str, Any]:
    total = sum(u.length or 0 for u in uploads)
    received = sum(_received(u) for u in uploads)
    body: dict[str, Any] = {
        "upload_id": batch.id,
        "state": batches.shown_state(batch, forward),
        "user": batch.username,
        "form": batch.form,
        "created_at": batch.created_at.isoformat(),
        "completed_at": batch.completed_at.isoformat() if batch.completed_at else None,
        "processed_at": batch.processed_at.isoformat() if batch.processed_at else None,
        "expires_at": batch.expires_at.isoformat(),
        "error": batch.error,
        "bytes_total": total,
        "bytes_received": received,
        "file_count": len(uploads),
        "instances": forward["instances"],
        "forwarding": {k: forward[k] for k in ("jobs", "done", "pending", "dead")},
    }
    if files:
        body["chunk_size"] = batch.chunk_size
        body["files"] = [
            {
                "index": u.file_index,
                "name": u.filename,
                "size": u.length,
                "received": _received(u),
                "state": u.state,
                "chunks": u.chunk_count(),
                "missing_chunks": u.missing_chunks() if u.state == "uploading" else [],
                "result": u.result,
            }
            for u in uploads
        ]
    return body


def _received(upload: Upload) -> int:
    if upload.state != "uploading":
        return upload.length or upload.offset
    extra = sum(
        upload.chunk_range(c)[1] for c in upload.chunks if c * upload.chunk_size >= upload.offset
    )
    return upload.offset + extra
