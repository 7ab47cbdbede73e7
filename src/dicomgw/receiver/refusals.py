"""Refused peers in the audit log (PS3.15 A.5.3 Security Alert): associations
rejected (AE titles, limits) and DICOM TLS handshakes that failed.

A modality configured with the wrong AE title retries every few seconds, all
night: the first refusal of a kind from a peer is written at once, the repeats
within ``window_s`` are counted and written with the next one after it, so the
log says how often without a row per retry. Writing happens beside the
listener; a database that is away costs the row (logged), never the receiver.
"""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg

from dicomgw import audit

log = logging.getLogger(__name__)

WINDOW_S = 60.0
MAX_TRACKED = 4096
"""Keys kept for the repeat count; beyond it the oldest are forgotten."""


class RefusalAuditor:
    def __init__(self, pool: asyncpg.Pool, window_s: float = WINDOW_S) -> None:
        self._pool = pool
        self._window_s = window_s
        self._last: dict[tuple[str, ...], tuple[float, int]] = {}
        """Per (what, peer, details): when it was last written, repeats since."""
        self._writes: set[asyncio.Task[None]] = set()

    def __call__(self, what: str, peer: str, detail: dict[str, str]) -> None:
        key = (what, peer, *sorted(f"{k}={v}" for k, v in detail.items() if k != "problem"))
        now = time.monotonic()
        written, repeats = self._last.get(key, (-self._window_s, 0))
        if now - written < self._window_s:
            self._last[key] = (written, repeats + 1)
            return
        self._last.pop(key, None)
        self._last[key] = (now, 0)
        if len(self._last) > MAX_TRACKED:
            del self._last[next(iter(self._last))]
        row = dict(detail, repeats_before=str(repeats)) if repeats else detail
        task = asyncio.create_task(self._write(what, peer, row))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, what: str, peer: str, detail: dict[str, str]) -> None:
        try:
            async with self._pool.acquire(timeout=10) as conn:
                await audit.record(
                    conn,
                    actor=detail.get("calling_ae") or "dicom-peer",
                    action=f"dimse.{what}.refused",
                    target=detail.get("called_ae"),
                    detail=dict(detail),
                    source_ip=peer if peer != "?" else None,
                    event_id=audit.ASSOCIATION_REJECTED,
                    outcome="failure",
                )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning(
                "cannot write the audit row of a refused peer",
                extra={"what": what, "peer": peer, "error": str(exc)},
            )

    async def close(self) -> None:
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
