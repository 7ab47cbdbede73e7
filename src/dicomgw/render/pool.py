"""The decode pool: rendering runs in child processes, each with a memory limit
(RLIMIT_AS) and a CPU-time limit, recycled every so many jobs. A child that
dies (a decoder crash, a limit hit) fails its job with RenderError and the pool
is made again; a job past its time limit has its child killed. An API worker
never decodes pixel data itself.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import resource
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from dicomgw.render.image import RenderError, Rendering, render

log = logging.getLogger(__name__)

JOBS_PER_CHILD = 500
"""A child is replaced after this many jobs (decoders leak; memory creeps)."""


def _limit(memory_bytes: int, cpu_s: int) -> None:  # pragma: no cover - in the child
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))


class DecodePool:
    def __init__(self, workers: int, memory_bytes: int, timeout_s: float) -> None:
        self._workers = workers
        self._memory = memory_bytes
        self._timeout = timeout_s
        self._pool: ProcessPoolExecutor | None = None
        self._slots: asyncio.Semaphore | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # NOTE: forkserver, not fork: the API worker has threads (asyncpg,
            # to_thread), and a fork of a threaded process may deadlock.
            self._pool = ProcessPoolExecutor(
                self._workers,
                mp_context=multiprocessing.get_context("forkserver"),
                initializer=_limit,
                initargs=(self._memory, int(self._timeout) + 1),
                max_tasks_per_child=JOBS_PER_CHILD,
            )
        return self._pool

    async def render(self, job: Rendering) -> bytes:
        """The encoded image; RenderError if it cannot be made (in time)."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._workers)
        async with self._slots:
            pool = self._executor()
            future = asyncio.get_running_loop().run_in_executor(pool, render, job)
            try:
                return await asyncio.wait_for(future, self._timeout)
            except TimeoutError:
                log.warning(
                    "rendering took too long: its process is killed", extra={"file": job.path}
                )
                self._reset(kill=True)
                raise RenderError(f"rendering took over {self._timeout:.0f} s", 503) from None
            except (BrokenProcessPool, MemoryError) as exc:
                log.warning("a decode process died", extra={"file": job.path, "error": str(exc)})
                self._reset(kill=True)
                raise RenderError(
                    "the decoder stopped (over its memory or time limit, or it crashed)", 503
                ) from None

    def _reset(self, *, kill: bool) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if kill:
            for process in list(getattr(pool, "_processes", {}).values()):
                process.kill()
        pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self._reset(kill=False)
