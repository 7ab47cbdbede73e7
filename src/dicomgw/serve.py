"""``dicom-gw serve``: the all-in-one supervisor.

Order matters: lock the state dir, prepare storage, start (or use) PostgreSQL,
migrate, then open the DIMSE port and start the API; on SIGTERM/SIGINT close
the listeners first, then the database, so nothing is acknowledged after the
index is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import sys

import asyncpg
import msgspec
import uvloop

from dicomgw.accounts import ensure_first_admin
from dicomgw.config import Config
from dicomgw.db import migrate
from dicomgw.db.pool import create_pool
from dicomgw.db.server import database
from dicomgw.errors import DatabaseError, DicomGwError
from dicomgw.forward.destinations import apply_declared
from dicomgw.forward.secrets import SecretBox
from dicomgw.forward.supervisor import Forwarder, SendObserver
from dicomgw.index.batcher import init_connection
from dicomgw.receiver.server import Receiver
from dicomgw.statedir import StateDirLock
from dicomgw.stats import rollup_forever
from dicomgw.storage.layout import prepare_storage

log = logging.getLogger(__name__)

API_STOP_TIMEOUT_S = 10.0
METRICS_DIR = "metrics"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def run(config: Config, config_file: str | None) -> None:
    lock = StateDirLock(config.state_path)
    lock.acquire()
    try:
        metrics_dir(config)
        prepare_storage(config.storage_root)
        with database(config, adopt=True) as dsn:
            ensure_schema(dsn, upgrade=config.database.upgrade_on_start)
            live = msgspec.structs.replace(
                config, database=msgspec.structs.replace(config.database, dsn=dsn)
            )
            uvloop.run(_serve(live, config_file))
    finally:
        lock.release()


def run_forwarder(config: Config) -> None:
    """``dicom-gw forwarder``: only the forwarder, on a database that ``serve`` (or
    an operator) set up; several may run against one database."""
    with database(config, adopt=False) as dsn:
        ensure_schema(dsn, upgrade=False)
        live = msgspec.structs.replace(
            config, database=msgspec.structs.replace(config.database, dsn=dsn)
        )
        uvloop.run(_forward_only(live))


async def _forward_only(config: Config) -> None:
    pool = await create_pool(config.database.dsn or "", config.database)
    try:
        forwarder = await start_forwarder(config, pool)
        log.info("dicom-gw forwarder running", extra={"owner": forwarder.owner})
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("stopping")
        await forwarder.close()
    finally:
        await pool.close()
    log.info("stopped")


def ensure_schema(dsn: str, *, upgrade: bool) -> None:
    if upgrade:
        migrate.upgrade(dsn)
        return
    current, head = migrate.current(dsn), migrate.head()
    if current != head:
        raise DatabaseError(
            f"database schema is at {current or 'nothing'}, this version needs {head}: "
            f"run 'dicom-gw db upgrade' (or set database.upgrade_on_start: true)"
        )


def metrics_dir(config: Config) -> None:
    """Multiprocess metrics (dicomgw.metrics): serve and its API workers (which
    inherit the environment) write their samples under <state_dir>/metrics,
    emptied here so that a previous run's processes are not counted.

    NOTE: prometheus_client picks its mode when first imported, so this runs
    before anything imports it; _serve imports dicomgw.metrics afterwards.
    """
    if "prometheus_client" in sys.modules:
        raise DicomGwError("internal: prometheus_client was imported before its directory was set")
    directory = config.state_path / METRICS_DIR
    try:
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(mode=0o700)
    except OSError as exc:
        raise DicomGwError(
            f"cannot empty '{directory}' (the metrics of the previous run): {exc.strerror}; "
            "remove it"
        ) from None
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)


async def _serve(config: Config, config_file: str | None) -> None:
    from dicomgw.metrics import ServeMetrics  # NOTE: only after metrics_dir()

    metrics = ServeMetrics()
    pool = await create_pool(config.database.dsn or "", config.database, init=init_connection)
    await _first_admin(pool)
    receiver = Receiver(config, pool, on_store_answered=metrics.observe_store)
    forwarder = await start_forwarder(config, pool, on_sent=metrics.observe_send)
    try:
        await receiver.start()
    except BaseException:
        await receiver.close()
        await forwarder.close()
        await pool.close()
        raise
    rollups = asyncio.create_task(rollup_forever(pool), name="stats-rollup")
    updater = asyncio.create_task(metrics.keep_updated(receiver, forwarder), name="metrics")
    api = await _start_api(config, config_file)
    log.info(
        "dicom-gw serving",
        extra={
            "dimse": f"{config.dimse.host}:{config.dimse.port}",
            "ae_title": config.dimse.ae_title,
            "api": f"http://{config.api.host}:{config.api.port}",
            "state_dir": config.state_dir,
        },
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    api_exit = asyncio.ensure_future(api.wait())
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({api_exit, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if api_exit.done():
            raise DicomGwError(f"the API server exited with status {api.returncode}")
        log.info("stopping")
    finally:
        stopper.cancel()
        rollups.cancel()
        updater.cancel()
        await receiver.close()
        await forwarder.close()
        await _stop_api(api)
        api_exit.cancel()
        await pool.close()
        log.info("stopped")


async def _first_admin(pool: asyncpg.Pool) -> None:
    """A new installation gets 'admin'; its password is shown once, here."""
    async with pool.acquire() as conn:
        password = await ensure_first_admin(conn, os.environ.get("DICOMGW_ADMIN_PASSWORD"))
    if password is None:
        return
    if os.environ.get("DICOMGW_ADMIN_PASSWORD"):
        log.info("created user 'admin' with the password from DICOMGW_ADMIN_PASSWORD")
        return
    # NOTE: on the console only, never in the (JSON) log: logs are kept and shipped.
    sys.stderr.write(
        f"\ndicom-gw: created the first user 'admin' with password: {password}\n"
        "dicom-gw: it is shown only this once; log in and change it.\n\n"
    )
    sys.stderr.flush()


async def start_forwarder(
    config: Config, pool: asyncpg.Pool, on_sent: SendObserver | None = None
) -> Forwarder:
    """Apply the declared destinations and routes, then start forwarding."""
    box = SecretBox.open(config.state_path)
    async with pool.acquire() as conn:
        await apply_declared(conn, config, box)
    forwarder = Forwarder(pool, config.forwarder, box, config.storage_root, on_sent=on_sent)
    await forwarder.start()
    return forwarder


async def _start_api(config: Config, config_file: str | None) -> asyncio.subprocess.Process:
    env = dict(os.environ)
    env["DICOMGW_STATE_DIR"] = config.state_dir
    env["DICOMGW_DATABASE__DSN"] = config.database.dsn or ""
    if config_file:
        env["DICOMGW_CONFIG"] = os.path.abspath(config_file)
    argv = [
        sys.executable,
        "-m",
        "granian",
        "--interface",
        "asgi",
        "--factory",
        "--host",
        config.api.host,
        "--port",
        str(config.api.port),
        "--workers",
        str(config.api.workers),
        "--loop",
        "uvloop",
        "--no-ws",
        "--log-level",
        "warning",
        "dicomgw.api.app:create_app_from_env",
    ]
    return await asyncio.create_subprocess_exec(*argv, env=env, preexec_fn=_die_with_parent)


def _die_with_parent() -> None:
    """In the API child: SIGTERM it when serve dies, even by kill -9 (Linux)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


async def _stop_api(api: asyncio.subprocess.Process) -> None:
    if api.returncode is not None:
        return
    api.terminate()
    try:
        await asyncio.wait_for(api.wait(), API_STOP_TIMEOUT_S)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            api.kill()
        await api.wait()
