"""The gateway's processes: ``dicom-gw serve`` (all-in-one) and the roles it
combines, each of which can also run alone under systemd (``dicom-gw receiver``,
``forwarder``, ``api``; deploy/systemd).

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
import time
from collections.abc import Callable, Iterator

import asyncpg
import msgspec
import uvloop

from dicomgw.accounts import ensure_first_admin
from dicomgw.certificates import warn_if_expiring
from dicomgw.config import Config
from dicomgw.db import migrate
from dicomgw.db.embedded import EmbeddedPostgres
from dicomgw.db.pool import close_pool, create_pool
from dicomgw.db.server import database_server
from dicomgw.errors import DatabaseError, DicomGwError
from dicomgw.forward.supervisor import Forwarder, SendObserver
from dicomgw.index.batcher import init_connection
from dicomgw.receiver.server import Receiver
from dicomgw.send.destinations import apply_declared
from dicomgw.send.secrets import SecretBox
from dicomgw.statedir import StateDirLock
from dicomgw.stats import rollup_forever
from dicomgw.storage.layout import prepare_storage
from dicomgw.systemd import notify

log = logging.getLogger(__name__)

API_START_TIMEOUT_S = 60.0
CERTIFICATE_CHECK_S = 86_400.0
API_STOP_TIMEOUT_S = 10.0
METRICS_DIR = "metrics"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def run(config: Config, config_file: str | None) -> None:
    """``dicom-gw serve``: receiver, forwarder and API over one database, which
    is the embedded one (started, or an orphan adopted) unless a DSN is set."""
    with _state_dir_locked(config):
        metrics_dir(config, exclusive=True)
        prepare_storage(config.storage_root)
        with _live(config, adopt=True, upgrade=config.database.upgrade_on_start) as live:
            uvloop.run(_serve(*live, config_file))


def run_receiver(config: Config) -> None:
    """``dicom-gw receiver``: the DIMSE listener, spool and index writer. One per
    state directory (it holds the lock, as ``serve`` does); it migrates the
    schema, so the other roles start after it (deploy/systemd)."""
    with _state_dir_locked(config):
        metrics_dir(config, exclusive=False)
        prepare_storage(config.storage_root)
        with _live(config, adopt=False, upgrade=config.database.upgrade_on_start) as live:
            uvloop.run(_receive_only(*live))


def run_forwarder(config: Config) -> None:
    """``dicom-gw forwarder``: only the forwarder, on a database that ``serve`` or
    ``receiver`` (or an operator) set up; several may run against one database."""
    metrics_dir(config, exclusive=False)
    with _live(config, adopt=False, upgrade=False) as live:
        uvloop.run(_forward_only(*live))


def run_api(config: Config, config_file: str | None) -> None:
    """``dicom-gw api``: Granian with ``api.workers`` workers, supervised here."""
    metrics_dir(config, exclusive=False)
    with _live(config, adopt=False, upgrade=False) as live:
        uvloop.run(_api_only(*live, config_file))


@contextlib.contextmanager
def _state_dir_locked(config: Config) -> Iterator[None]:
    lock = StateDirLock(config.state_path)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def _live(
    config: Config, *, adopt: bool, upgrade: bool
) -> Iterator[tuple[Config, EmbeddedPostgres | None]]:
    """The config with the DSN of the database in use, its schema checked; and
    the embedded server, if that is the one."""
    with database_server(config, adopt=adopt) as (dsn, embedded):
        ensure_schema(dsn, upgrade=upgrade)
        live = msgspec.structs.replace(
            config, database=msgspec.structs.replace(config.database, dsn=dsn)
        )
        yield live, embedded


def ensure_schema(dsn: str, *, upgrade: bool) -> None:
    if upgrade:
        migrate.upgrade(dsn)
        return
    current, head = migrate.current(dsn), migrate.head()
    migrate.check_known(current)
    if current != head:
        raise DatabaseError(
            f"database schema is at {current or 'nothing'}, this version needs {head}: "
            f"run 'dicom-gw db upgrade' (or set database.upgrade_on_start: true)"
        )


def metrics_dir(config: Config, *, exclusive: bool) -> None:
    """Multiprocess metrics (dicomgw.metrics): every process writes its samples
    under <state_dir>/metrics (API workers inherit the environment). ``serve``
    owns them all and empties the directory; a role run on its own
    (``exclusive=False``) removes only the files of processes that are gone,
    so that a previous run is not counted and the other roles' files stay.

    NOTE: prometheus_client picks its mode when first imported, so this runs
    before anything imports it; the roles import dicomgw.metrics afterwards.
    """
    if "prometheus_client" in sys.modules:
        raise DicomGwError("internal: prometheus_client was imported before its directory was set")
    directory = config.state_path / METRICS_DIR
    try:
        if exclusive and directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(mode=0o700, exist_ok=True)
        for path in directory.glob("*.db"):
            if not _alive(int(path.stem.rsplit("_", 1)[-1])):
                path.unlink(missing_ok=True)
    except (OSError, ValueError) as exc:
        raise DicomGwError(
            f"cannot clean up '{directory}' (the metrics of previous runs): {exc}; remove it"
        ) from None
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def _serve(
    config: Config, embedded: EmbeddedPostgres | None, config_file: str | None
) -> None:
    from dicomgw.metrics import ServeMetrics  # NOTE: only after metrics_dir()

    stop = _stop_on_signals()
    metrics = ServeMetrics()
    keeper = _keep_database(embedded, metrics.observe_database_restart)
    pool = await create_pool(config.database.dsn or "", config.database, init=init_connection)
    await _first_admin(pool)
    receiver = Receiver(
        config,
        pool,
        on_answered=metrics.observe_answered,
        on_index_batch=metrics.observe_index_batch,
    )
    forwarder = await start_forwarder(config, pool, on_sent=metrics.observe_send)
    try:
        await receiver.start()
    except BaseException:
        await receiver.close()
        await forwarder.close()
        await close_pool(pool)
        raise
    _watch_certificates(config, receiver)
    rollups = asyncio.create_task(rollup_forever(pool), name="stats-rollup")
    updater = asyncio.create_task(metrics.keep_updated(receiver, forwarder), name="metrics")
    api = await _start_api(config, config_file)
    try:
        await _wait_api_listening(config, api)
        url = f"http://{config.api.host}:{config.api.port}/"
        log.info(
            "dicom-gw serving",
            extra={
                "dimse": f"{config.dimse.host}:{config.dimse.port}",
                "ae_title": config.dimse.ae_title,
                "api": url,
                "state_dir": config.state_dir,
            },
        )
        if sys.stderr.isatty():  # someone at a terminal (./dev run): say where to go
            sys.stderr.write(
                f"dicom-gw: web console and API at {url}, DICOM {config.dimse.ae_title} on "
                f"port {config.dimse.port}\n"
            )
        await _until_stopped(stop, api)
    finally:
        await _cancelled(keeper, rollups, updater)
        await receiver.close()
        await forwarder.close()
        await _stop_api(api)
        await close_pool(pool)
        log.info("stopped")


async def _receive_only(config: Config, embedded: EmbeddedPostgres | None) -> None:
    from dicomgw.metrics import ServeMetrics  # NOTE: only after metrics_dir()

    stop = _stop_on_signals()
    metrics = ServeMetrics()
    keeper = _keep_database(embedded, metrics.observe_database_restart)
    pool = await create_pool(config.database.dsn or "", config.database, init=init_connection)
    receiver = Receiver(
        config,
        pool,
        on_answered=metrics.observe_answered,
        on_index_batch=metrics.observe_index_batch,
    )
    try:
        await receiver.start()
        _watch_certificates(config, receiver)
        rollups = asyncio.create_task(rollup_forever(pool), name="stats-rollup")
        updater = asyncio.create_task(metrics.keep_updated(receiver, None), name="metrics")
        try:
            log.info(
                "dicom-gw receiver running",
                extra={"dimse": f"{config.dimse.host}:{config.dimse.port}"},
            )
            await _until_stopped(stop)
        finally:
            await _cancelled(rollups, updater)
    finally:
        await _cancelled(keeper)
        await receiver.close()
        await close_pool(pool)
        log.info("stopped")


async def _forward_only(config: Config, embedded: EmbeddedPostgres | None) -> None:
    from dicomgw.metrics import ServeMetrics  # NOTE: only after metrics_dir()

    stop = _stop_on_signals()
    metrics = ServeMetrics()
    keeper = _keep_database(embedded, metrics.observe_database_restart)
    pool = await create_pool(config.database.dsn or "", config.database)
    try:
        forwarder = await start_forwarder(config, pool, on_sent=metrics.observe_send)
        updater = asyncio.create_task(metrics.keep_updated(None, forwarder), name="metrics")
        try:
            log.info("dicom-gw forwarder running", extra={"owner": forwarder.owner})
            await _until_stopped(stop)
        finally:
            await _cancelled(updater)
            await forwarder.close()
    finally:
        await _cancelled(keeper)
        await close_pool(pool)
    log.info("stopped")


async def _api_only(
    config: Config, embedded: EmbeddedPostgres | None, config_file: str | None
) -> None:
    stop = _stop_on_signals()
    keeper = _keep_database(embedded, lambda: None)
    pool = await create_pool(config.database.dsn or "", config.database)
    try:
        await _first_admin(pool)
    finally:
        await close_pool(pool)
    api = await _start_api(config, config_file)
    try:
        await _wait_api_listening(config, api)
        log.info("dicom-gw api running", extra={"api": f"{config.api.host}:{config.api.port}"})
        await _until_stopped(stop, api)
    finally:
        await _cancelled(keeper)
        await _stop_api(api)
        log.info("stopped")


def _watch_certificates(config: Config, receiver: Receiver) -> None:
    """Expiry warnings now and daily (the watched task lives as long as the
    loop); SIGHUP reloads the DICOM TLS certificate (``dicom-gw tls install``)."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, receiver.reload_tls)

    def check() -> None:
        warn_if_expiring(config)
        loop.call_later(CERTIFICATE_CHECK_S, check)

    check()


def _keep_database(
    embedded: EmbeddedPostgres | None, on_restart: Callable[[], None]
) -> asyncio.Task[None]:
    """The embedded server's watchdog; it does nothing for an external
    database or an embedded one this process did not start or adopt."""

    async def keep() -> None:
        if embedded is not None:
            await embedded.keep_running(on_restart)

    return asyncio.create_task(keep(), name="embedded-postgres")


async def _cancelled(*tasks: asyncio.Task[None]) -> None:
    """Cancel and wait: a task still unwinding may hold a pool connection."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _stop_on_signals() -> asyncio.Event:
    """Set by SIGTERM/SIGINT; installed first, so that a signal during start-up
    stops the process cleanly once started, instead of killing it half-way."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _until_stopped(
    stop: asyncio.Event, api: asyncio.subprocess.Process | None = None
) -> None:
    """Tell systemd we serve, then wait for ``stop``; the API child exiting on
    its own is an error."""
    notify("READY=1")
    waits: set[asyncio.Future[object]] = {asyncio.ensure_future(stop.wait())}
    if api is not None:
        waits.add(asyncio.ensure_future(api.wait()))
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
    if api is not None and api.returncode is not None:
        raise DicomGwError(f"the API server exited with status {api.returncode}")
    notify("STOPPING=1")
    log.info("stopping")


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


async def _wait_api_listening(config: Config, api: asyncio.subprocess.Process) -> None:
    """Until Granian accepts connections, so that READY=1 means serving."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(config.api.host, config.api.host)
    deadline = time.monotonic() + API_START_TIMEOUT_S
    while api.returncode is None:
        try:
            _, writer = await asyncio.open_connection(host, config.api.port)
        except OSError:
            if time.monotonic() > deadline:
                raise DicomGwError(
                    f"the API did not listen on {config.api.host}:{config.api.port} within "
                    f"{API_START_TIMEOUT_S:.0f} s"
                ) from None
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    raise DicomGwError(
        f"the API server exited with status {api.returncode} at start; is port "
        f"{config.api.port} in use? set api.port"
    )


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
