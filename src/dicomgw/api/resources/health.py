"""Liveness and readiness: unauthenticated, no PHI."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import asyncpg
import falcon
import falcon.asgi

from dicomgw.api.auth import PUBLIC, allow
from dicomgw.api.middleware import PoolMiddleware
from dicomgw.config import Config
from dicomgw.errors import DicomGwError
from dicomgw.storage.disk import disk_usage
from dicomgw.storage.layout import prepare_storage


class LiveResource:
    @allow(PUBLIC)
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = {"status": "ok"}


def _listening(port: int) -> bool:
    """Whether some socket on this host listens on TCP ``port`` (from /proc, without
    connecting: a probe connection would show up in the receiver's log each time)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    return True
    return False


class ReadyResource:
    """Ready to take images: the database answers, the storage root is writable and
    below the high watermark, and the DIMSE port accepts connections. The age of
    the oldest due forward job is reported but does not make the gateway unready:
    a destination that is down must not stop reception."""

    def __init__(self, config: Config, pools: PoolMiddleware) -> None:
        self._config = config
        self._pools = pools

    @allow(PUBLIC)
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        checks: dict[str, dict[str, Any]] = {}
        try:
            async with self._pools.pool.acquire(timeout=5) as conn:
                lag: float = await conn.fetchval(
                    "SELECT coalesce(extract(epoch FROM now() - min(due_at)), 0)::float8 "
                    "FROM forward_jobs WHERE state = 'pending' AND due_at <= now()"
                )
            checks["database"] = {"ok": True}
            checks["queue"] = {"ok": True, "oldest_due_s": round(lag, 1)}
        except (OSError, TimeoutError, asyncpg.PostgresError, falcon.HTTPError) as exc:
            checks["database"] = {"ok": False, "error": str(exc)}
        storage = self._config.storage
        try:
            prepare_storage(self._config.storage_root)
            used, free = disk_usage(self._config.storage_root)
            checks["storage"] = {"ok": True}
            checks["disk"] = {
                "ok": used < storage.high_watermark_percent,
                "used_percent": round(used, 1),
                "free_bytes": free,
                "high_watermark_percent": storage.high_watermark_percent,
            }
        except DicomGwError as exc:
            checks["storage"] = {"ok": False, "error": str(exc)}
        dimse = self._config.dimse
        checks["receiver"] = {"ok": _listening(dimse.port), "port": dimse.port}
        ok = all(c["ok"] for c in checks.values())
        resp.status = falcon.HTTP_200 if ok else falcon.HTTP_503
        resp.set_header("Cache-Control", "no-store")
        resp.media = {"status": "ok" if ok else "unavailable", "checks": checks}
