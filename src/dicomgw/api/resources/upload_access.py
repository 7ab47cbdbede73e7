"""Who may touch an upload, and how often: shared by tus and the session API.

An uploader sees only its own uploads (a clinic's account must not learn what
others sent); operators and admins see all. An upload someone may not see is
answered like one that does not exist (404), so ids cannot be probed.
"""

from __future__ import annotations

import asyncpg
import falcon.asgi

from dicomgw.api.auth import User
from dicomgw.api.problems import Problem
from dicomgw.api.throttle import spend
from dicomgw.config import RateLimit
from dicomgw.uploads.batches import Batch
from dicomgw.uploads.store import Upload, UploadStore

UPLOADERS = ("uploader", "operator")
"""Roles that may upload (admin always may)."""
SEES_ALL = frozenset(("operator", "admin"))


def may_see(user: User, owner_id: int | None) -> bool:
    return user.role in SEES_ALL or owner_id == user.id


async def owned_upload(
    conn: asyncpg.Connection, store: UploadStore, req: falcon.asgi.Request, upload_id: str
) -> Upload | None:
    upload = await store.get(conn, upload_id)
    if upload is None or not may_see(req.context.user, upload.user_id):
        return None
    return upload


def visible_batch(req: falcon.asgi.Request, batch: Batch | None, batch_id: str) -> Batch:
    if batch is None or not may_see(req.context.user, batch.user_id):
        raise Problem(404, "not-found", "Not found", f"no upload {batch_id[:64]}")
    return batch


async def rate_limited(
    conn: asyncpg.Connection, req: falcon.asgi.Request, limit: RateLimit, what: str
) -> None:
    """429 with Retry-After past ``limit`` (per account and per address)."""
    user: User = req.context.user
    limits = {f"{what}:user:{user.id}": limit.per_user}
    if req.context.client_ip:
        limits[f"{what}:ip:{req.context.client_ip}"] = limit.per_address
    wait = await spend(conn, limits, limit.window_s)
    if wait is not None:
        raise Problem(
            429,
            "too-many-requests",
            "Too many requests",
            f"too many {what.replace('-', ' ')} requests; try again in {wait} s",
            headers={"Retry-After": str(wait), "Tus-Resumable": "1.0.0"},
        )


async def within_quota(
    conn: asyncpg.Connection, store: UploadStore, user: User, length: int, quota: int
) -> None:
    """413 if ``length`` more bytes would take the account's unfinished uploads past
    uploads.max_user_bytes_in_flight."""
    held = await store.bytes_in_flight(conn, user.id)
    if held + length > quota:
        raise Problem(
            413,
            "quota",
            "Upload quota exceeded",
            f"your unfinished uploads hold {held} bytes; with {length} more they would pass "
            f"uploads.max_user_bytes_in_flight ({quota})",
            headers={"Tus-Resumable": "1.0.0"},
        )
