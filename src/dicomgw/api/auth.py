"""Who is asking, and may they: sessions, API tokens, login throttling, RBAC.

A browser logs in and gets a session cookie (HttpOnly, SameSite=Strict) plus a
CSRF token that state-changing requests must echo in ``X-CSRF-Token``; a
script uses an API token (``Authorization: Bearer``), or, for DICOMweb clients
that speak only HTTP Basic, Basic with the token as the password. Only SHA-256 hashes of
session and API tokens are stored. Roles are deny-by-default: a responder
serves only the roles its :func:`allow` names.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import secrets
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import falcon
import falcon.asgi
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from dicomgw.accounts import ROLES, hash_password, rehashed
from dicomgw.api.clients import client_address, networks, within
from dicomgw.api.problems import Problem, forbidden, unauthenticated
from dicomgw.config import ApiConfig

SESSION_COOKIE = "dicomgw_session"
SECURE_SESSION_COOKIE = "__Host-dicomgw_session"
"""Over HTTPS (api.behind_https): the browser keeps a ``__Host-`` cookie only if it
is Secure, has Path=/ and no Domain, so no other host or path can set or
shadow it. Over plain HTTP (a console on the LAN) a Secure cookie would be
dropped, so it is the plain name there."""


def session_cookie(config: ApiConfig) -> str:
    return SECURE_SESSION_COOKIE if config.behind_https else SESSION_COOKIE


CSRF_HEADER = "X-CSRF-Token"
TOKEN_PREFIX = "dgw_"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
AUTHENTICATED_ROOTS = ("/api/", "/dicom-web/")
"""Where requests are authenticated (the web UI's files are not)."""

_hasher = PasswordHasher()
# NOTE: verified against for unknown users, so that "no such user" takes as long
# as "wrong password" and the two cannot be told apart by timing.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


@dataclass(frozen=True, slots=True)
class User:
    id: int
    username: str
    role: str
    via: str
    """'session', 'token', or 'network' (an anonymous reader on a trusted network)."""
    session_id: int | None = None
    csrf_token: str | None = None


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def check_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


# PERF: argon2id takes ~0.1 s of CPU and 64 MiB per hash. Run on the event loop,
# one login stalled every request of its worker (a load test saw searches wait
# seconds); in threads (argon2-cffi releases the GIL) but at most this many at
# once per worker, so a burst of logins can exhaust neither memory nor the CPU.
HASHING_SLOTS = 2
_hashing: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


def _slots() -> asyncio.Semaphore:
    """The running loop's semaphore (a semaphore belongs to one loop)."""
    loop = asyncio.get_running_loop()
    if loop not in _hashing:
        _hashing[loop] = asyncio.Semaphore(HASHING_SLOTS)
    return _hashing[loop]


async def password_matches(password_hash: str | None, password: str) -> bool:
    """check_password, off the event loop and bounded."""
    async with _slots():
        return await asyncio.to_thread(check_password, password_hash, password)


async def new_password_hash(password: str, config: ApiConfig) -> str:
    """accounts.hash_password (AccountError for a weak one), off the loop and bounded."""
    async with _slots():
        return await asyncio.to_thread(hash_password, password, config.password_min_length)


async def upgraded_hash(password: str, password_hash: str) -> str | None:
    """accounts.rehashed, off the loop and bounded."""
    async with _slots():
        return await asyncio.to_thread(rehashed, password, password_hash)


# -- sessions -----------------------------------------------------------------------


async def create_session(
    conn: asyncpg.Connection,
    user_id: int,
    config: ApiConfig,
    ip: str | None,
    user_agent: str | None,
) -> tuple[str, str]:
    """(cookie token, CSRF token) of a new session."""
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
    await conn.execute(
        "INSERT INTO sessions (token_hash, user_id, csrf_token, expires_at, source_ip, user_agent) "
        "VALUES ($1, $2, $3, now() + make_interval(secs => $4), $5::inet, $6)",
        token_hash(token),
        user_id,
        csrf,
        config.session_max_age_s,
        ip,
        (user_agent or "")[:256] or None,
    )
    return token, csrf


SESSION_USER = """
UPDATE sessions s SET last_seen_at = now()
FROM users u
WHERE s.token_hash = $1 AND u.id = s.user_id AND NOT u.disabled
  AND s.expires_at > now() AND s.last_seen_at > now() - make_interval(secs => $2)
RETURNING s.id, s.csrf_token, u.id AS user_id, u.username, u.role
"""

TOKEN_USER = """
UPDATE api_tokens t SET last_used_at = now()
FROM users u
WHERE t.token_hash = $1 AND u.id = t.user_id AND NOT u.disabled
  AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > now())
RETURNING u.id AS user_id, u.username, u.role
"""


async def authenticate(
    conn: asyncpg.Connection, req: falcon.asgi.Request, config: ApiConfig
) -> User | None:
    header = req.get_header("Authorization") or ""
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer" and credentials.startswith(TOKEN_PREFIX):
        row = await conn.fetchrow(TOKEN_USER, token_hash(credentials.strip()))
        return User(row["user_id"], row["username"], row["role"], "token") if row else None
    if scheme.lower() == "basic":
        return await _basic_token_user(conn, credentials.strip())
    cookie = req.get_cookie_values(session_cookie(config))
    if not cookie:
        return None
    row = await conn.fetchrow(SESSION_USER, token_hash(cookie[0]), config.session_idle_timeout_s)
    if row is None:
        return None
    return User(
        row["user_id"], row["username"], row["role"], "session", row["id"], row["csrf_token"]
    )


async def _basic_token_user(conn: asyncpg.Connection, credentials: str) -> User | None:
    """HTTP Basic whose password is an API token of that user (DICOMweb clients that
    speak only Basic). An account password is never taken here: it would bypass
    TOTP and cost an argon2 hash per request."""
    try:
        username, _, password = base64.b64decode(credentials, validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    if not password.startswith(TOKEN_PREFIX):
        return None
    row = await conn.fetchrow(TOKEN_USER, token_hash(password))
    if row is None or row["username"].lower() != username.lower():
        return None
    return User(row["user_id"], row["username"], row["role"], "token")


# -- RBAC ---------------------------------------------------------------------------

__all__ = ["ROLES"]

R = TypeVar("R", bound=Callable[..., Awaitable[None]])
ROLES_ATTRIBUTE = "allowed_roles"
PUBLIC = "public"


def allow(*roles: str) -> Callable[[R], R]:
    """Mark a responder with the roles it serves (admin always may); ``allow(PUBLIC)``
    for the few that serve anyone. A responder without it serves nobody."""
    allowed = frozenset(roles) | ({"admin"} if PUBLIC not in roles else set())

    def mark(responder: R) -> R:
        @functools.wraps(responder)
        async def checked(
            resource: Any, req: falcon.asgi.Request, resp: falcon.asgi.Response, **params: Any
        ) -> None:
            if PUBLIC not in allowed:
                user: User | None = req.context.user
                if user is None:
                    raise unauthenticated()
                if user.role not in allowed:
                    raise forbidden(f"the {user.role} role cannot do this")
            await responder(resource, req, resp, **params)

        setattr(checked, ROLES_ATTRIBUTE, allowed)
        return checked  # type: ignore[return-value]

    return mark


class AuthMiddleware:
    """Sets ``req.context.user`` and ``client_ip`` (api/clients.py); refuses
    cross-site state changes (CSRF)."""

    def __init__(
        self,
        config: ApiConfig,
        pool: Callable[[], asyncpg.Pool],
        anonymous_read_networks: tuple[str, ...] = (),
    ) -> None:
        self._config = config
        self._pool = pool
        self._proxies = networks(config.trusted_proxies)
        self._anonymous_read = networks(anonymous_read_networks)

    def _anonymous_reader(self, req: falcon.asgi.Request) -> bool:
        ip = req.context.client_ip
        return (
            bool(self._anonymous_read)
            and req.method in ("GET", "HEAD")
            and req.path.startswith("/dicom-web/")
            and ip is not None
            and within(ip, self._anonymous_read)
        )

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        req.context.user = None
        req.context.client_ip = client_address(req, self._proxies)
        if not req.path.startswith(AUTHENTICATED_ROOTS) or req.path.startswith("/api/v1/health/"):
            return
        async with self._pool().acquire() as conn:
            user = await authenticate(conn, req, self._config)
        if user is None and self._anonymous_reader(req):
            # dicomweb.anonymous_read_networks: a viewer on a trusted LAN reads
            # as a viewer would, audited under its address.
            user = User(0, f"anonymous@{req.context.client_ip}", "viewer", "network")
        req.context.user = user
        if user is not None and user.via == "session" and req.method in UNSAFE_METHODS:
            sent = req.get_header(CSRF_HEADER) or ""
            if not hmac.compare_digest(sent, user.csrf_token or ""):
                raise Problem(
                    403,
                    "csrf",
                    "CSRF check failed",
                    f"state-changing requests with a session cookie need the {CSRF_HEADER} "
                    "header returned at login",
                )
