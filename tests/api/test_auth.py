"""Login, sessions, CSRF, RBAC, problem+json and headers, over HTTP to a running gateway."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest

from dicomgw.api.app import create_app
from dicomgw.api.auth import PUBLIC, ROLES_ATTRIBUTE
from dicomgw.config import load_config
from tests.api.conftest import Client
from tests.cli import run_cli
from tests.gateway import ADMIN_PASSWORD, Gateway

PROTECTED = [
    ("GET", "/me"),
    ("GET", "/me/sessions"),
    ("POST", "/me/password"),
    ("POST", "/auth/logout"),
    ("GET", "/users"),
    ("POST", "/users"),
    ("PATCH", "/users/1"),
    ("DELETE", "/me/sessions/1"),
]


def test_every_responder_declares_its_roles() -> None:
    """Deny by default: a responder without allow() would serve nobody; make sure
    none was forgotten (and list which are public)."""
    app = create_app(load_config(None, {}))
    public = []
    for route in app._router._roots:
        stack = [route]
        while stack:
            node = stack.pop()
            stack.extend(node.children)
            if node.resource is None:
                continue
            for name in dir(node.resource):
                if name.startswith("on_"):
                    roles = getattr(getattr(node.resource, name), ROLES_ATTRIBUTE, None)
                    assert roles, f"{node.uri_template} {name} has no allow()"
                    if PUBLIC in roles:
                        public.append(f"{node.uri_template} {name}")
    assert sorted(public) == [
        "/api/v1/auth/login on_post",
        "/api/v1/health/live on_get",
        "/api/v1/health/ready on_get",
        "/api/v1/openapi.yaml on_get",  # no PHI, no secrets; clients read it before login
        # tus discovery (the server's version and extensions): clients ask before anything.
        "/api/v1/uploads on_options",
        "/api/v1/uploads on_options_upload",
        "/api/v1/uploads/{upload_id} on_options",
        "/api/v1/uploads/{upload_id} on_options_upload",
        "/metrics on_get",  # guarded by its own token / network check (test_metrics)
    ]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_anonymous_gets_401_problem(anonymous: Client, method: str, path: str) -> None:
    resp = anonymous.request(method, path, json={})
    assert resp.status_code == 401
    assert resp.headers["content-type"] == "application/problem+json"
    problem = resp.json()
    assert problem["type"] == "urn:dicom-gw:problem:unauthenticated"
    assert problem["status"] == 401
    assert problem["request_id"] == resp.headers["x-request-id"]


def test_health_is_public_and_headers_are_set(anonymous: Client) -> None:
    resp = anonymous.get("/health/live")
    assert resp.status_code == 200
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in resp.headers["content-security-policy"]
    assert resp.headers["cache-control"] == "no-store"
    assert len(resp.headers["x-request-id"]) >= 8


def test_login_sets_a_strict_httponly_cookie(anonymous: Client) -> None:
    resp = anonymous.login("admin", ADMIN_PASSWORD)
    assert resp.status_code == 200
    assert resp.json()["user"]["role"] == "admin"
    cookie = resp.headers["set-cookie"].lower()
    assert "httponly" in cookie
    assert "samesite=strict" in cookie
    assert anonymous.get("/me").json()["username"] == "admin"


def test_wrong_password_and_unknown_user_look_the_same(anonymous: Client) -> None:
    wrong = anonymous.login("admin", "not the password")
    unknown = anonymous.login(f"nobody-{uuid.uuid4().hex[:6]}", "not the password")
    assert wrong.status_code == unknown.status_code == 401
    strip = {"request_id"}
    assert {k: v for k, v in wrong.json().items() if k not in strip} == {
        k: v for k, v in unknown.json().items() if k not in strip
    }


def test_repeated_failures_are_throttled_with_retry_after(
    user_factory: Callable[[str], tuple[Client, str]], session_gateway: Gateway
) -> None:
    _, name = user_factory("viewer")
    client = Client(session_gateway)
    for _ in range(3):  # the free failures of one account from one address
        assert client.login(name, "wrong password!").status_code == 401
    locked = client.login(name, f"pw-{name}-long")
    assert locked.status_code == 429
    assert int(locked.headers["retry-after"]) > 0
    assert locked.json()["type"] == "urn:dicom-gw:problem:too-many-requests"
    assert session_gateway.dsn is not None
    with psycopg.connect(session_gateway.dsn) as conn:
        outcomes = conn.execute(
            "SELECT outcome, event_id FROM audit_log WHERE actor = %s AND action = 'auth.login'",
            (name,),
        ).fetchall()
    assert outcomes.count(("failure", "110114")) == 4
    assert ("success", "110114") in outcomes  # the factory's login
    # The wait doubles with each failure, so the owner is back after it.
    time.sleep(int(locked.headers["retry-after"]))
    assert client.login(name, f"pw-{name}-long").status_code == 200


def login_from(gateway: Gateway, address: str, name: str, password: str) -> httpx.Response:
    """A login as from ``address`` (the API trusts the local proxy's X-Forwarded-For)."""
    return httpx.post(
        f"http://127.0.0.1:{gateway.api_port}/api/v1/auth/login",
        json={"username": name, "password": password},
        headers={"X-Forwarded-For": address},
    )


def test_an_attacker_elsewhere_cannot_lock_the_owner_out(
    user_factory: Callable[[str], tuple[Client, str]], session_gateway: Gateway
) -> None:
    _, name = user_factory("admin")
    right = f"pw-{name}-long"
    assert login_from(session_gateway, "203.0.113.9", name, right).status_code == 200
    # Guesses from many addresses, up to the account's limit (10 a window).
    for n in range(10):
        assert login_from(session_gateway, f"198.51.100.{n}", name, "guess").status_code == 401
    assert login_from(session_gateway, "198.51.100.99", name, "guess").status_code == 429
    # The right password from an address never used before waits too ...
    assert login_from(session_gateway, "192.0.2.50", name, right).status_code == 429
    # ... but the owner, from where they logged in before, gets in.
    assert login_from(session_gateway, "203.0.113.9", name, right).status_code == 200


def test_parallel_attempts_are_counted_before_any_is_checked(
    user_factory: Callable[[str], tuple[Client, str]], session_gateway: Gateway
) -> None:
    _, name = user_factory("viewer")
    with ThreadPoolExecutor(8) as pool:
        codes = list(
            pool.map(
                lambda _: login_from(session_gateway, "198.51.100.200", name, "guess").status_code,
                range(8),
            )
        )
    # The first three of one account from one address are free; the rest wait.
    assert sorted(codes) == [401] * 3 + [429] * 5


def test_user_unlock_forgets_the_failures(
    user_factory: Callable[[str], tuple[Client, str]], session_gateway: Gateway
) -> None:
    _, name = user_factory("viewer")
    for n in range(10):
        login_from(session_gateway, f"198.51.100.{n}", name, "guess")
    right = f"pw-{name}-long"
    assert login_from(session_gateway, "192.0.2.51", name, right).status_code == 429
    done = run_cli("user", "unlock", name, env=session_gateway.env())
    assert done.returncode == 0, done.stderr
    assert "failed login(s) forgotten" in done.stdout
    assert login_from(session_gateway, "192.0.2.51", name, right).status_code == 200


def test_state_changes_need_the_csrf_token(
    user_factory: Callable[[str], tuple[Client, str]],
) -> None:
    client, _ = user_factory("viewer")
    without = client.http.post("/auth/logout")
    assert without.status_code == 403
    assert without.json()["type"] == "urn:dicom-gw:problem:csrf"
    assert client.post("/auth/logout").status_code == 204


def test_logout_ends_the_session(user_factory: Callable[[str], tuple[Client, str]]) -> None:
    client, _ = user_factory("operator")
    assert client.get("/me").status_code == 200
    assert client.post("/auth/logout").status_code == 204
    assert client.get("/me").status_code == 401


@pytest.mark.parametrize("role", ["operator", "viewer", "auditor"])
def test_only_admins_manage_users(
    user_factory: Callable[[str], tuple[Client, str]], role: str
) -> None:
    client, _ = user_factory(role)
    assert client.get("/users").status_code == 403
    created = client.post("/users", json={"username": "x", "role": "admin", "password": "p" * 12})
    assert created.status_code == 403
    assert created.json()["type"] == "urn:dicom-gw:problem:forbidden"


def test_admin_manages_users_and_changes_end_sessions(
    admin: Client, user_factory: Callable[[str], tuple[Client, str]]
) -> None:
    client, name = user_factory("viewer")
    users = {u["username"]: u for u in admin.get("/users").json()["items"]}
    target = users[name]
    assert target["role"] == "viewer"
    changed = admin.patch(f"/users/{target['id']}", json={"role": "operator"})
    assert changed.status_code == 200
    assert changed.json()["role"] == "operator"
    assert client.get("/me").status_code == 401  # its session ended with the change
    bad = admin.patch(f"/users/{target['id']}", json={"role": "root"})
    assert bad.status_code == 422
    assert "unknown role" in bad.json()["detail"]
    dup = admin.post("/users", json={"username": name, "role": "viewer", "password": "x" * 12})
    assert dup.status_code == 409


def test_password_change_ends_other_sessions(
    user_factory: Callable[[str], tuple[Client, str]], session_gateway: Gateway
) -> None:
    first, name = user_factory("viewer")
    second = Client(session_gateway)
    assert second.login(name, f"pw-{name}-long").status_code == 200
    assert len(first.get("/me/sessions").json()["items"]) == 2
    wrong = first.post("/me/password", json={"current_password": "nope", "new_password": "n" * 16})
    assert wrong.status_code == 403
    done = first.post(
        "/me/password", json={"current_password": f"pw-{name}-long", "new_password": "n" * 16}
    )
    assert done.status_code == 204
    assert first.get("/me").status_code == 200
    assert second.get("/me").status_code == 401
    assert Client(session_gateway).login(name, "n" * 16).status_code == 200


def test_bodies_are_validated_with_the_field_named(admin: Client) -> None:
    resp = admin.post("/users", json={"username": "y", "role": "viewer"})
    assert resp.status_code == 422
    assert resp.json()["field"] == "password"
    resp = admin.post("/users", json={"username": "y", "role": "viewer", "password": 5})
    assert resp.json()["detail"] == "'password' must be a str"
    resp = admin.post("/users", content=b"{nope", headers={"content-type": "application/json"})
    assert resp.status_code == 422


def test_unknown_route_and_method_are_problems(admin: Client) -> None:
    missing = admin.get("/nope")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    wrong = admin.request("PUT", "/me")
    assert wrong.status_code == 405
    assert wrong.json()["type"] == "urn:dicom-gw:problem:method-not-allowed"
