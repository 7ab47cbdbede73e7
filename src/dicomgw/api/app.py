"""The management API: ``create_app(config)`` builds the Falcon ASGI app.

This layer runs no DIMSE acceptor, receiver or services (pyproject.toml's
import contracts say so): API workers talk to PostgreSQL and the storage root.
The compiled core is a library any process may load (the storage module that
checks and deletes files does). Routes live under ``/api/v1``; errors
are problem+json (api/problems.py); every responder declares the roles it
serves (api/auth.py ``allow``), and one that does not serves nobody.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import falcon
import falcon.asgi
import orjson

from dicomgw.api import problems
from dicomgw.api.auth import AuthMiddleware
from dicomgw.api.context import PREFIX, ROW_ID, ApiContext, App, RouteAdder, RowIdConverter
from dicomgw.api.cors import DicomwebCors
from dicomgw.api.ingesting import Ingesting
from dicomgw.api.middleware import PoolMiddleware, RequestMiddleware
from dicomgw.api.resources import (
    audit_log,
    certificate,
    destinations,
    dicomweb,
    metrics,
    mfa,
    openapi,
    queue,
    rules,
    settings,
    stats,
    studies,
    tus,
    uploads,
)
from dicomgw.api.resources.auth import (
    LoginResource,
    LogoutResource,
    MePasswordResource,
    MeResource,
    MySessionsResource,
)
from dicomgw.api.resources.health import LiveResource, ReadyResource
from dicomgw.api.resources.users import UsersResource
from dicomgw.api.throttle import Throttle
from dicomgw.api.uploading import Uploading
from dicomgw.api.webui import add_webui
from dicomgw.config import Config
from dicomgw.render.pool import DecodePool


def _core_routes(app: App, api: ApiContext) -> None:
    app.add_route(f"{PREFIX}/health/live", LiveResource())
    app.add_route(f"{PREFIX}/health/ready", ReadyResource(api.config, api.pools))
    app.add_route(f"{PREFIX}/auth/login", LoginResource(api))
    app.add_route(f"{PREFIX}/auth/logout", LogoutResource(api.pools, api.config.api))
    app.add_route(f"{PREFIX}/me", MeResource(api.pools))
    app.add_route(f"{PREFIX}/me/password", MePasswordResource(api.pools, api.config.api))
    sessions = MySessionsResource(api.pools)
    app.add_route(f"{PREFIX}/me/sessions", sessions)
    app.add_route(f"{PREFIX}/me/sessions/{{session_id:id}}", sessions, suffix="one")
    users = UsersResource(api.pools, api.config.api)
    app.add_route(f"{PREFIX}/users", users)
    app.add_route(f"{PREFIX}/users/{{user_id:id}}", users, suffix="one")


ROUTES: tuple[RouteAdder, ...] = (
    _core_routes,
    mfa.add_routes,
    audit_log.add_routes,
    stats.add_routes,
    destinations.add_routes,
    rules.add_routes,
    queue.add_routes,
    studies.add_routes,
    settings.add_routes,
    certificate.add_routes,
    metrics.add_routes,
    openapi.add_routes,
    dicomweb.add_routes,
    tus.add_routes,
    uploads.add_routes,
)
"""Every group of routes the API serves; each resource module contributes one."""


def create_app(
    config: Config,
    *,
    throttle: Throttle | None = None,
    routes: Sequence[RouteAdder] = ROUTES,
) -> App:
    pools = PoolMiddleware(config)
    app: App = falcon.asgi.App(
        middleware=[
            pools,
            RequestMiddleware(config.api.behind_https),
            AuthMiddleware(config.api, lambda: pools.pool, config.dicomweb.anonymous_read_networks),
            DicomwebCors(config.dicomweb.cors_origins),
        ]
    )
    json_handler = falcon.media.JSONHandler(
        dumps=lambda o: orjson.dumps(o).decode(), loads=orjson.loads
    )
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = json_handler
    app.req_options.media_handlers[falcon.MEDIA_JSON] = json_handler
    app.set_error_serializer(problems.serialize)
    app.router_options.converters[ROW_ID] = RowIdConverter
    ingesting = Ingesting(config)
    uploading = Uploading(config, pools, ingesting)
    decoding = DecodePool(
        config.dicomweb.render_workers,
        config.dicomweb.render_memory_bytes,
        config.dicomweb.render_timeout_s,
    )

    async def stop_decoding() -> None:
        decoding.close()

    pools.before_close += [uploading.close, ingesting.close, stop_decoding]
    # NOTE: from start-up, so that an upload whose worker died mid-intake is taken
    # over (and expired ones removed) without waiting for the next upload.
    pools.after_start.append(uploading.start)
    api = ApiContext(config, pools, throttle or Throttle(), ingesting, uploading, decoding)
    for add in routes:
        add(app, api)
    add_webui(app, config.api)
    return app


def create_app_from_env() -> App:
    """Granian's factory target: the config file from DICOMGW_CONFIG plus the environment."""
    from dicomgw.config import load_config
    from dicomgw.log import setup_logging

    config = load_config(os.environ.get("DICOMGW_CONFIG") or None)
    setup_logging(config.logging)
    return create_app(config)
