"""Behind HTTPS the session cookie is ``__Host-``: Secure, HttpOnly,
SameSite=Strict, Path=/, no Domain; logging out replaces it the same way."""

from __future__ import annotations

from pathlib import Path

import falcon.testing

from dicomgw.api.app import create_app
from dicomgw.api.auth import SECURE_SESSION_COOKIE
from tests.api.inprocess import api_config, migrated, new_user


async def test_host_prefixed_cookie_behind_https(empty_db: str, tmp_path: Path) -> None:
    await migrated(empty_db)
    config = api_config(empty_db, tmp_path, DICOMGW_API__BEHIND_HTTPS="true")
    await new_user(empty_db, "carol", "viewer", "carol's long password")
    async with falcon.testing.ASGIConductor(create_app(config)) as api:
        login = await api.simulate_post(
            "/api/v1/auth/login", json={"username": "carol", "password": "carol's long password"}
        )
        assert login.status_code == 200
        cookie = login.cookies[SECURE_SESSION_COOKIE]
        assert (cookie.secure, cookie.http_only, cookie.path, cookie.domain) == (
            True,
            True,
            "/",
            None,
        )
        assert cookie.same_site == "Strict"
        session = {SECURE_SESSION_COOKIE: cookie.value}
        assert (await api.simulate_get("/api/v1/me", cookies=session)).status_code == 200
        assert (await api.simulate_get("/api/v1/me", cookies={"dicomgw_session": cookie.value})
                ).status_code == 401  # fmt: skip
        logout = await api.simulate_post(
            "/api/v1/auth/logout",
            cookies=session,
            headers={"X-CSRF-Token": login.json["csrf_token"]},
        )
        assert logout.status_code == 204
        gone = logout.cookies[SECURE_SESSION_COOKIE]
        assert (gone.value, gone.secure) == ("", True)
        assert gone.expires is not None and gone.expires.year == 1970
        assert (await api.simulate_get("/api/v1/me", cookies=session)).status_code == 401
