"""GET /metrics: the Prometheus text exposition of every role (docs/metrics.md).

At the root, not under /api/v1, where scrapers look. A scraper has no session
and no role: the route is guarded by ``api.metrics_token`` (Bearer) or by the
client's address (``api.metrics_networks``), and with neither set it answers
nobody. It also times every API request (:class:`RequestTimer`).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time

import asyncpg
import falcon
import falcon.asgi
from prometheus_client import CONTENT_TYPE_LATEST

from dicomgw.api.auth import PUBLIC, allow
from dicomgw.api.context import ApiContext, App
from dicomgw.api.middleware import PoolMiddleware
from dicomgw.api.problems import Problem, forbidden
from dicomgw.config import Config
from dicomgw.metrics import ApiMetrics, certificate_families, database_families, database_up

log = logging.getLogger(__name__)

PATH = "/metrics"
# Anything else a client sends as a method is one label value, not one each.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
"""The route label of a request no route matched (never its raw path)."""

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def direct_client(req: falcon.asgi.Request) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The connecting peer's address, or None when the request names other
    addresses (Forwarded, X-Forwarded-For, X-Real-IP): it came through a proxy,
    or pretends to, and its origin is unknown."""
    route = req.access_route
    if len(route) != 1 or not req.scope.get("client"):
        return None
    try:
        address = ipaddress.ip_address(route[0])
    except ValueError:
        return None
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return mapped or address


class MetricsResource:
    def __init__(self, config: Config, pools: PoolMiddleware, metrics: ApiMetrics) -> None:
        self._config = config
        self._token = config.api.metrics_token
        self._networks: list[Network] = [
            ipaddress.ip_network(n, strict=False) for n in config.api.metrics_networks
        ]
        self._pools = pools
        self._metrics = metrics

    # NOTE: public to the role check only: _check_access is the guard.
    @allow(PUBLIC)
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        self._check_access(req)
        try:
            async with self._pools.pool.acquire(timeout=5) as conn:
                families = [*await database_families(conn), database_up(True)]
        except (OSError, TimeoutError, asyncpg.PostgresError, falcon.HTTPError) as exc:
            # The other roles' metrics are worth having while the database is away.
            log.warning("metrics: cannot read the queue state", extra={"error": str(exc)})
            families = [database_up(False)]
        resp.data = self._metrics.exposition([*families, *certificate_families(self._config)])
        resp.content_type = CONTENT_TYPE_LATEST
        resp.cache_control = ["no-store"]

    def _check_access(self, req: falcon.asgi.Request) -> None:
        client = direct_client(req)
        if client is not None and any(client in network for network in self._networks):
            return
        if self._token is None:
            raise forbidden(
                "GET /metrics answers a client in api.metrics_networks, or one sending "
                "api.metrics_token"
            )
        scheme, _, credentials = (req.get_header("Authorization") or "").partition(" ")
        sent = credentials.strip().encode() if scheme.lower() == "bearer" else b""
        if not hmac.compare_digest(sent, self._token.encode()):
            raise Problem(
                401,
                "unauthenticated",
                "Authentication required",
                "send the metrics token: Authorization: Bearer <api.metrics_token>",
                headers={"WWW-Authenticate": 'Bearer realm="dicom-gw metrics"'},
            )


class RequestTimer:
    """Falcon middleware: every request's duration by method, route template
    and status (dicomgw_api_request_duration_seconds).

    NOTE: added after the app's own middleware, so its clock starts after them
    (the session lookup is not included).
    """

    def __init__(self, metrics: ApiMetrics) -> None:
        self._histogram = metrics.request_duration

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        req.context.timer_started = time.perf_counter()

    async def process_response(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        resource: object,
        req_succeeded: bool,
    ) -> None:
        started: float | None = req.context.get("timer_started")
        if started is None:
            return  # refused by an earlier middleware before the clock started
        method = req.method if req.method in METHODS else "other"
        route = req.uri_template or UNMATCHED
        self._histogram.labels(method, route, str(resp.status_code)).observe(
            time.perf_counter() - started
        )


def add_routes(app: App, api: ApiContext) -> None:
    metrics = ApiMetrics()
    app.add_middleware(RequestTimer(metrics))
    app.add_route(PATH, MetricsResource(api.config, api.pools, metrics))
