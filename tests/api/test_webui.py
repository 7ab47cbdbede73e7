"""The built web UI at / (api/webui.py): files, caching, the single-page app's
fallback, path safety, and the API left as it was."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import falcon.testing
import pytest

from dicomgw.api.app import create_app
from dicomgw.api.webui import webui_root
from tests.api.inprocess import api_config, logged_in, migrated

INDEX = b'<!doctype html><script type="module" src="/assets/index-4f2a.js"></script>'
SCRIPT = b"console.log('ui')"


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    root = tmp_path / "dist"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_bytes(INDEX)
    (root / "assets" / "index-4f2a.js").write_bytes(SCRIPT)
    (root / "assets" / "index-9c1d.css").write_text("body{}")
    (root / "favicon.svg").write_text("<svg/>")
    (tmp_path / "secret.txt").write_text("outside the root")
    (root / "assets" / "escape.js").symlink_to(tmp_path / "secret.txt")
    return root


@pytest.fixture
async def client(
    dist: Path, empty_db: str, tmp_path: Path
) -> AsyncIterator[falcon.testing.ASGIConductor]:
    config = api_config(empty_db, tmp_path, DICOMGW_API__WEBUI_DIR=str(dist))
    async with falcon.testing.ASGIConductor(create_app(config)) as conductor:
        yield conductor


async def test_index_is_revalidated_and_carries_the_security_headers(
    client: falcon.testing.ASGIConductor,
) -> None:
    resp = await client.simulate_get("/")
    assert resp.status_code == 200
    assert resp.content == INDEX
    assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
    assert resp.headers["Cache-Control"] == "no-cache"
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "'unsafe-eval'" not in csp and "script-src" not in csp.replace("default-src", "")
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


async def test_hashed_assets_are_cached_for_a_year_with_their_type(
    client: falcon.testing.ASGIConductor,
) -> None:
    js = await client.simulate_get("/assets/index-4f2a.js")
    assert js.status_code == 200 and js.content == SCRIPT
    assert js.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert js.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    css = await client.simulate_get("/assets/index-9c1d.css")
    assert css.headers["Content-Type"] == "text/css; charset=utf-8"
    icon = await client.simulate_get("/favicon.svg")
    assert icon.headers["Content-Type"] == "image/svg+xml"
    assert icon.headers["Cache-Control"] == "no-cache"


async def test_pages_of_the_app_get_the_index(client: falcon.testing.ASGIConductor) -> None:
    for url in ("/studies", "/studies/1.2.840.10008.5.1.4.1.1.2", "/queue?state=dead", "/x/"):
        path, _, query = url.partition("?")
        resp = await client.simulate_get(path, query_string=query)
        assert (resp.status_code, resp.content) == (200, INDEX), url


async def test_a_missing_asset_is_404_not_html(client: falcon.testing.ASGIConductor) -> None:
    resp = await client.simulate_get("/assets/index-old.js")
    assert resp.status_code == 404
    assert resp.headers["Content-Type"] == "application/problem+json"


async def test_paths_cannot_leave_the_root(client: falcon.testing.ASGIConductor) -> None:
    for path in (
        "/../secret.txt",
        "/assets/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/assets/%2e%2e/%2e%2e/secret.txt",
        "/assets/..%2f..%2fsecret.txt",
        "/assets/escape.js",
        "/assets/escape.js%00",
    ):
        resp = await client.simulate_get(path)
        assert b"outside the root" not in resp.content, path
        assert resp.status_code in (200, 404), path


async def test_only_get_and_head(client: falcon.testing.ASGIConductor) -> None:
    assert (await client.simulate_post("/")).status_code == 405
    assert (await client.simulate_delete("/assets/index-4f2a.js")).status_code == 405
    head = await client.simulate_head("/assets/index-4f2a.js")
    assert head.status_code == 200
    assert head.headers["Content-Length"] == str(len(SCRIPT))
    assert head.content == b""


async def test_etag_answers_304(client: falcon.testing.ASGIConductor) -> None:
    etag = (await client.simulate_get("/assets/index-4f2a.js")).headers["ETag"]
    again = await client.simulate_get("/assets/index-4f2a.js", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""


async def test_without_a_built_ui_only_the_api_is_served(empty_db: str, tmp_path: Path) -> None:
    empty = tmp_path / "no-ui"
    empty.mkdir()
    config = api_config(empty_db, tmp_path, DICOMGW_API__WEBUI_DIR=str(empty))
    assert webui_root(config.api) is None
    async with falcon.testing.ASGIConductor(create_app(config)) as client:
        resp = await client.simulate_get("/")
    assert resp.status_code == 404
    assert resp.headers["Content-Type"] == "application/problem+json"


async def test_api_paths_never_get_the_index(empty_db: str, tmp_path: Path, dist: Path) -> None:
    await migrated(empty_db)
    config = api_config(empty_db, tmp_path, DICOMGW_API__WEBUI_DIR=str(dist))
    async with logged_in(config, "viewer") as api:
        unknown = await api.call("GET", "/no-such-thing")
        assert unknown.status_code == 404
        assert unknown.headers["Content-Type"] == "application/problem+json"
        assert (await api.call("GET", "/me")).json["username"] == api.username
        assert (await api.conductor.simulate_get("/api")).status_code == 404


async def test_settings_are_the_effective_config_with_secrets_masked(
    empty_db: str, tmp_path: Path
) -> None:
    await migrated(empty_db)
    config = api_config(empty_db, tmp_path, DICOMGW_API__METRICS_TOKEN="s3cret-metrics-token-value")
    async with logged_in(config, "operator") as api:
        resp = await api.call("GET", "/settings")
        assert resp.status_code == 200
        assert resp.json["dimse"]["ae_title"] == config.dimse.ae_title
        assert resp.json["api"]["metrics_token"] == "********"
        assert "s3cret" not in resp.text
    async with logged_in(config, "viewer") as api:
        assert (await api.call("GET", "/settings")).status_code == 403


async def test_me_gives_a_reloaded_page_its_csrf_token(empty_db: str, tmp_path: Path) -> None:
    await migrated(empty_db)
    async with logged_in(api_config(empty_db, tmp_path), "viewer") as api:
        me = await api.call("GET", "/me")
        assert me.json["csrf_token"] == api.csrf
        assert me.json["totp_enabled"] is False
