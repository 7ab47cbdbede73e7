"""GET /api/v1/openapi.yaml: the API's OpenAPI 3.1 description, as shipped.

The file is package data (``dicomgw/api/openapi.yaml``; docs/openapi.yaml links
to it), so an installed gateway serves the description of the code it runs. It
names no patient and no secret, and clients need it before they can log in, so
it is public.
"""

from __future__ import annotations

from importlib import resources

import falcon
import falcon.asgi

from dicomgw.api.auth import PUBLIC, allow
from dicomgw.api.context import PREFIX, ApiContext, App

MEDIA_YAML = "application/yaml"
"""RFC 9512."""


def spec_bytes() -> bytes:
    return resources.files("dicomgw.api").joinpath("openapi.yaml").read_bytes()


class OpenApiResource:
    def __init__(self) -> None:
        self._spec = spec_bytes()

    @allow(PUBLIC)
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.content_type = MEDIA_YAML
        resp.data = self._spec


def add_routes(app: App, api: ApiContext) -> None:
    app.add_route(f"{PREFIX}/openapi.yaml", OpenApiResource())
