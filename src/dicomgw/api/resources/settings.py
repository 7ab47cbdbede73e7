"""The effective configuration, read-only, secrets masked (the web UI's Settings page)."""

from __future__ import annotations

import falcon.asgi

from dicomgw.api.auth import allow
from dicomgw.api.context import PREFIX, ApiContext, App
from dicomgw.config import Config, redacted


class SettingsResource:
    def __init__(self, config: Config) -> None:
        # NOTE: the config is fixed for the life of the process; so is this answer.
        self._settings = redacted(config)

    @allow("operator")
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = self._settings


def add_routes(app: App, api: ApiContext) -> None:
    app.add_route(f"{PREFIX}/settings", SettingsResource(api.config))
