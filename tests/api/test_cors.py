"""CORS on DICOMweb only, for the origins dicomweb.cors_origins lists (in-process)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomgw.config import ConfigError, load_config
from tests.api.inprocess import api_config, logged_in, migrated

VIEWER = "https://viewer.example.org"


async def test_listed_origins_may_call_dicomweb_and_nothing_else(
    empty_db: str, tmp_path: Path
) -> None:
    await migrated(empty_db)
    config = api_config(empty_db, tmp_path, DICOMGW_DICOMWEB__CORS_ORIGINS=f"[{VIEWER}]")
    async with logged_in(config, "viewer") as api:
        conductor = api.conductor
        preflight = await conductor.simulate_options(
            "/dicom-web/studies",
            headers={
                "Origin": VIEWER,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert preflight.headers["access-control-allow-origin"] == VIEWER
        assert "Authorization" in preflight.headers["access-control-allow-headers"]
        # An error is readable by the page too (it says why).
        refused = await conductor.simulate_get("/dicom-web/studies", headers={"Origin": VIEWER})
        assert refused.status_code == 401
        assert refused.headers["access-control-allow-origin"] == VIEWER
        assert "Warning" in refused.headers["access-control-expose-headers"]
        other = await conductor.simulate_get(
            "/dicom-web/studies", headers={"Origin": "https://elsewhere.example"}
        )
        assert "access-control-allow-origin" not in other.headers
        console = await conductor.simulate_options(
            "/api/v1/me", headers={"Origin": VIEWER, "Access-Control-Request-Method": "GET"}
        )
        assert "access-control-allow-origin" not in console.headers


def test_an_origin_must_be_one(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("dicomweb: {cors_origins: ['viewer.example.org/app']}\n")
    with pytest.raises(ConfigError, match="not an origin"):
        load_config(path, {})
