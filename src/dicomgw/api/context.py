"""What every resource module gets to add its routes: the config, the database
pool, the login throttle."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import falcon.asgi

from dicomgw.api.auth import Throttle
from dicomgw.api.middleware import PoolMiddleware
from dicomgw.config import Config
from dicomgw.forward.secrets import SecretBox

PREFIX = "/api/v1"

App = falcon.asgi.App[falcon.asgi.Request, falcon.asgi.Response]


@dataclass(frozen=True)
class ApiContext:
    config: Config
    pools: PoolMiddleware
    throttle: Throttle

    @functools.cached_property
    def box(self) -> SecretBox:
        """The state directory's secrets key, opened on first use (TOTP secrets)."""
        return SecretBox.open(self.config.state_path)


RouteAdder = Callable[[App, ApiContext], None]
"""A resource module's ``add_routes(app, api)``."""
