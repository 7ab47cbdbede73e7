"""dicomweb.anonymous_read_networks: a viewer on a trusted LAN reads /dicom-web/
without logging in, as a viewer; it cannot store, and /api/ stays closed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.conftest import _create_database, with_database
from tests.gateway import Gateway, running


def gateway_with(workdir: Path, pg_server: str, networks: str) -> Iterator[Gateway]:
    name = f"gw_{uuid.uuid4().hex[:8]}"
    asyncio.run(_create_database(pg_server, name))
    state = workdir / f"anon-{name}"
    state.mkdir(mode=0o755)
    env = {"DICOMGW_DICOMWEB__ANONYMOUS_READ_NETWORKS": networks}
    with running(Gateway(state, with_database(pg_server, name), extra_env=env)) as gw:
        yield gw


@pytest.fixture(scope="module")
def open_to_loopback(workdir: Path, pg_server: str) -> Iterator[Gateway]:
    yield from gateway_with(workdir, pg_server, "[127.0.0.0/8]")


@pytest.fixture(scope="module")
def open_elsewhere(workdir: Path, pg_server: str) -> Iterator[Gateway]:
    yield from gateway_with(workdir, pg_server, "[10.99.0.0/16]")


def test_a_listed_network_reads_as_a_viewer_and_is_audited(open_to_loopback: Gateway) -> None:
    base = f"http://127.0.0.1:{open_to_loopback.api_port}"
    assert httpx.get(f"{base}/dicom-web/studies").status_code == 200
    assert httpx.get(f"{base}/dicom-web/series").status_code == 200
    # Reading only: storing needs an account, and the management API is closed.
    stow = httpx.post(
        f"{base}/dicom-web/studies",
        content=b"--b--\r\n",
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'},
    )
    assert stow.status_code == 401
    assert httpx.get(f"{base}/api/v1/studies").status_code == 401
    assert open_to_loopback.dsn is not None
    with psycopg.connect(open_to_loopback.dsn) as conn:
        actors = conn.execute(
            "SELECT DISTINCT actor FROM audit_log WHERE action LIKE 'qido.%'"
        ).fetchall()
    assert actors == [("anonymous@127.0.0.1",)]


def test_an_address_outside_the_networks_must_log_in(open_elsewhere: Gateway) -> None:
    base = f"http://127.0.0.1:{open_elsewhere.api_port}"
    answer = httpx.get(f"{base}/dicom-web/studies")
    assert answer.status_code == 401
    assert answer.headers["content-type"] == "application/problem+json"
