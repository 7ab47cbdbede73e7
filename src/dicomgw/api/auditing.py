"""Audit rows for API requests: who (the logged-in user unless said otherwise),
from where and under which request id come from the request."""

from __future__ import annotations

import asyncpg
import falcon.asgi

from dicomgw import audit


async def audit_request(
    conn: asyncpg.Connection,
    req: falcon.asgi.Request,
    action: str,
    target: str | None = None,
    detail: dict[str, object] | None = None,
    *,
    actor: str | None = None,
    event_id: str | None = None,
    outcome: str = "success",
) -> None:
    user = req.context.user
    await audit.record(
        conn,
        actor=actor or (user.username if user is not None else "anonymous"),
        action=action,
        target=target,
        detail=detail,
        source_ip=req.context.client_ip,
        request_id=req.context.request_id,
        event_id=event_id,
        outcome=outcome,
    )
