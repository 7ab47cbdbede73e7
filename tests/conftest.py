"""Shared fixtures: a real PostgreSQL (the embedded one dicom-gw ships) for the
whole session, a fresh database per test, and state directories that the
unprivileged PostgreSQL user can enter when the suite runs as root."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from dicomgw.db.embedded import EmbeddedPostgres
from tests.gateway import Gateway, running

# The quick lane (./dev test --quick) leaves out what is marked slow: these
# folders (a browser; rpmbuild, systemd and nginx; the fuzzers) and the modules
# and tests marked so (whole-gateway forwarding runs, crash tests).
SLOW_FOLDERS = frozenset(("e2e", "deploy", "fuzz"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.parent.name in SLOW_FOLDERS:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    # NOTE: pytest's tmp dirs are 0700 under /tmp/pytest-of-root; the embedded
    # PostgreSQL runs as another user when we are root and must traverse them.
    path = Path(tempfile.mkdtemp(prefix="dicomgw-tests-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def state_dir(workdir: Path) -> Path:
    path = workdir / f"state-{uuid.uuid4().hex[:8]}"
    path.mkdir(mode=0o755)
    return path


@pytest.fixture(scope="session")
def pg_server(workdir: Path) -> Iterator[str]:
    """DSN of a real PostgreSQL for the session (its 'postgres' database)."""
    server = EmbeddedPostgres(workdir / "session-pg", run_as="dicomgw")
    dsn = server.start(adopt=True)
    yield dsn
    server.stop()


def with_database(dsn: str, name: str) -> str:
    head, _, query = dsn.partition("?")
    base = head.rsplit("/", 1)[0]
    return f"{base}/{name}?{query}" if query else f"{base}/{name}"


@pytest.fixture
async def empty_db(pg_server: str) -> str:
    """DSN of a new, empty database on the session server."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    await _create_database(pg_server, name)
    return with_database(pg_server, name)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No DICOMGW_* from the developer's shell leaks into a test."""
    for key in list(os.environ):
        if key.startswith("DICOMGW_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="session")
def session_gateway(workdir: Path, pg_server: str) -> Iterator[Gateway]:
    """One running gateway shared by the tests that only send to it.

    Tests must not assume they are alone on it: compare what they sent, by UID.
    """
    name = f"gw_{uuid.uuid4().hex[:8]}"
    asyncio.run(_create_database(pg_server, name))
    state = workdir / "session-gateway"
    state.mkdir(mode=0o755)
    with running(Gateway(state, with_database(pg_server, name))) as gateway:
        yield gateway


async def _create_database(dsn: str, name: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


@pytest.fixture
async def gateway_factory(state_dir: Path, empty_db: str) -> AsyncIterator[Callable[..., Gateway]]:
    """A gateway of the test's own (started by the test), e.g. to kill or reconfigure."""
    made: list[Gateway] = []

    def make(config_yaml: str | None = None, **extra_env: str) -> Gateway:
        gateway = Gateway(state_dir, empty_db, extra_env=extra_env, config_yaml=config_yaml)
        made.append(gateway)
        return gateway

    yield make
    for gateway in made:
        if gateway.proc is not None:
            try:
                gateway.stop()
            except subprocess.TimeoutExpired:
                gateway.kill()
