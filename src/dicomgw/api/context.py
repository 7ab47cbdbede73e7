"""What every resource module gets to add its routes: the config, the database
pool, the login throttle, the worker's ingest stack, upload intake and decode pool."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import falcon.asgi
import falcon.routing

from dicomgw.api.ingesting import Ingesting
from dicomgw.api.middleware import PoolMiddleware
from dicomgw.api.throttle import Throttle
from dicomgw.api.uploading import Uploading
from dicomgw.config import Config
from dicomgw.render.pool import DecodePool
from dicomgw.send.secrets import SecretBox

PREFIX = "/api/v1"
ROW_ID = "id"
"""The converter of row ids in routes: ``{user_id:id}``."""
BIGINT_MAX = 2**63 - 1

App = falcon.asgi.App[falcon.asgi.Request, falcon.asgi.Response]


@dataclass(frozen=True)
class ApiContext:
    config: Config
    pools: PoolMiddleware
    throttle: Throttle
    ingesting: Ingesting
    uploading: Uploading
    decoding: DecodePool

    @functools.cached_property
    def box(self) -> SecretBox:
        """The state directory's secrets key, opened on first use (TOTP secrets)."""
        return SecretBox.open(self.config.state_path)


class RowIdConverter(falcon.routing.IntConverter):
    """A row id in a path: a bigint identity, 1 to 2**63 - 1. Anything else matches
    no route (404), rather than overflowing in the database driver (500)."""

    def __init__(self) -> None:
        super().__init__(min=1, max=BIGINT_MAX)


RouteAdder = Callable[[App, ApiContext], None]
"""A resource module's ``add_routes(app, api)``."""
