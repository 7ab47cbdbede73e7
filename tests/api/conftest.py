"""API tests talk HTTP to a real gateway (Granian workers, real PostgreSQL)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.gateway import ADMIN_PASSWORD, Gateway


class Client:
    """An httpx client logged in (or not) to a gateway's API, sending the CSRF token."""

    def __init__(self, gateway: Gateway) -> None:
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{gateway.api_port}/api/v1")
        self.csrf: str | None = None

    def login(self, username: str, password: str) -> httpx.Response:
        resp = self.http.post("/auth/login", json={"username": username, "password": password})
        if resp.status_code == 200:
            self.csrf = resp.json()["csrf_token"]
        return resp

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, **kwargs: object
    ) -> httpx.Response:
        sent = {"X-CSRF-Token": self.csrf} if self.csrf else {}
        return self.http.request(method, path, headers=sent | (headers or {}), **kwargs)  # type: ignore[arg-type]

    def get(self, path: str, **kwargs: object) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: object) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def patch(self, path: str, **kwargs: object) -> httpx.Response:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: object) -> httpx.Response:
        return self.request("DELETE", path, **kwargs)


@pytest.fixture
def anonymous(session_gateway: Gateway) -> Iterator[Client]:
    client = Client(session_gateway)
    yield client
    client.http.close()


@pytest.fixture
def admin(session_gateway: Gateway) -> Iterator[Client]:
    client = Client(session_gateway)
    assert client.login("admin", ADMIN_PASSWORD).status_code == 200
    yield client
    client.http.close()


@pytest.fixture
def user_factory(
    admin: Client, session_gateway: Gateway
) -> Iterator[Callable[[str], tuple[Client, str]]]:
    """A new user of a role, logged in: (client, username)."""
    made: list[Client] = []

    def make(role: str) -> tuple[Client, str]:
        name = f"{role}-{uuid.uuid4().hex[:8]}"
        created = admin.post(
            "/users", json={"username": name, "role": role, "password": f"pw-{name}-long"}
        )
        assert created.status_code == 201, created.text
        client = Client(session_gateway)
        assert client.login(name, f"pw-{name}-long").status_code == 200
        made.append(client)
        return client, name

    yield make
    for client in made:
        client.http.close()
