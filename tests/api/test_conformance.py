"""The running API against its own OpenAPI description, with schemathesis.

A gateway of this module's own (``dicom-gw serve``, Granian, a real PostgreSQL)
gets generated requests, valid and invalid ones, for every operation of its
description (the package's openapi.yaml, which it serves at
/api/v1/openapi.yaml), as an admin. Any 5xx fails, and so does an answer whose
status, content type, headers or body the description does not give, or an
invalid request that is accepted.

The gateway is its own because the generated requests create, change and
delete users, destinations and rules. It holds a study (sent over DIMSE) whose
forward jobs are dead, so the study, queue and dry-run answers are checked on
real rows too. Credentials are chosen per operation so that no generated
request can lock the test out:

- ``/me/...`` and ``/auth/logout`` act on the caller's own account (log out,
  end sessions, revoke tokens, TOTP): they get a scratch admin's browser session
  (cookie and CSRF token), made again whenever it no longer works. The scratch
  admins log in from 127.0.0.2, as the generated logins' failures make the
  login throttle refuse 127.0.0.1.
- ``/metrics`` gets ``api.metrics_token``.
- Everything else gets an admin API token, which none of those requests can
  revoke (tokens belong to their user) or lock out (an admin cannot disable
  itself or drop its own role).

No operation is left out. Generated destinations have generated host names:
they are never probed or sent to (see ``_on_loopback``), as tests send nothing
beyond this host. What generated requests cannot reach on one's own account (a
right password or TOTP code, ending a session or token they just made) is done
once, in order, by test_own_account_successes_conform.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis import Case
from schemathesis.config import SchemathesisConfig

from dicomgw.api.auth import SESSION_COOKIE
from dicomgw.api.resources.openapi import spec_bytes
from tests.conftest import _create_database, with_database
from tests.gateway import ADMIN_PASSWORD, Gateway, free_port, running
from tests.interop.corpus import send_with_pynetdicom, small_images

# STOW-RS bodies: schemathesis cannot make multipart/related itself. Bytes that
# look like parts of one (a delimiter, headers, DICM where a Part 10 file has
# it) or like nothing: the gateway must answer each as its description says.
_PART = st.builds(
    lambda head, body: (
        b"\r\n--b\r\nContent-Type: application/dicom\r\n\r\n" + bytes(128) + b"DICM" + head + body
    ),
    st.binary(max_size=16),
    st.binary(max_size=256),
)
schemathesis.openapi.media_type(
    "multipart/related",
    st.one_of(
        st.binary(max_size=512),
        st.lists(_PART, max_size=3).map(lambda parts: b"".join(parts) + b"\r\n--b--\r\n"),
    ),
)

# tus PATCH bodies: bytes, as for application/octet-stream (DICOM-like or not).
schemathesis.openapi.media_type(
    "application/offset+octet-stream",
    st.one_of(st.binary(max_size=512), st.builds(lambda b: bytes(128) + b"DICM" + b, st.binary())),
)

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 10
"""Random requests per operation (the fuzzing phase). The coverage phase adds
every boundary and invalid case the schemas define, whatever this says; together
about 2,000 requests for the ~55 operations."""
METRICS_TOKEN = "conformance-metrics-token"
SCRATCH_SOURCE = "127.0.0.2"
LOOPBACK_HOSTS = frozenset({"localhost"})

CONFIG = SchemathesisConfig.from_dict(
    {
        "generation": {
            "max-examples": MAX_EXAMPLES,
            # The test sends the credentials; generated ones would only replace them.
            "with-security-parameters": False,
            "database": "none",
        },
        "phases": {
            "stateful": {"enabled": False},
            # Falcon answers every method a route lacks alike (405 with Allow): two are
            # enough to see it, instead of all eight for each of the ~55 operations.
            "coverage": {"unexpected-methods": ["DELETE", "TRACE"]},
        },
        "checks": {
            # NOTE: every other check is on. This one wants every request that the
            # schemas allow to succeed, which no description can promise for opaque
            # cursors and rules across fields ('fuzzy' needs 'patient_name', a bearer
            # STOW-RS destination needs a token); those are 422s, which the
            # description lists and the other checks hold to it.
            "positive_data_acceptance": {"enabled": False},
            # The tus protocol's own refusals of bad requests are these too: 410 an
            # expired upload, 412 another tus version, 413 past the upload's length,
            # 423 another request writing, 460 a checksum mismatch.
            "negative_data_rejection": {
                "expected-statuses": [
                    *("400", "401", "403", "404", "405", "406", "409", "415", "422"),
                    *("428", "429", "5xx", "410", "412", "413", "423", "460"),
                ]
            },
        },
    }
)


def _config_yaml(echo_port: int) -> str:
    # NOTE: nothing listens on echo_port; the jobs fail at once and go dead.
    return f"""
api:
  metrics_token: {METRICS_TOKEN}
forwarder:
  max_attempts: 1
destinations:
  - name: loopback
    type: dimse
    ae_title: NOBODY
    host: 127.0.0.1
    port: {echo_port}
routes:
  - name: everything
    match: {{}}
    destinations: [loopback]
"""


@dataclass
class Conformance:
    """The gateway under test and the credentials each operation is sent with."""

    gateway: Gateway
    token: str = ""
    loopback_id: int = 0
    scratch: tuple[str, str] | None = None
    """(session cookie, CSRF token) of the current scratch admin."""
    made: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.gateway.api_port}/api/v1"

    def admin_api(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base, headers={"Authorization": f"Bearer {self.token}"}, timeout=30
        )

    def scratch_session(self) -> tuple[str, str]:
        """A working session of a scratch admin (the last one, or a new one)."""
        if self.scratch is None or not self.works(self.scratch[0]):
            _, _, *session = self.new_scratch()
            self.scratch = (session[0], session[1])
        return self.scratch

    def works(self, cookie: str) -> bool:
        with httpx.Client(base_url=self.base, timeout=30) as probe:
            return probe.get("/me", headers={"Cookie": f"{SESSION_COOKIE}={cookie}"}).is_success

    def new_scratch(self) -> tuple[str, str, str, str]:
        """A new admin, logged in: (name, password, session cookie, CSRF token)."""
        self.made += 1
        name, password = f"scratch-{self.made}-{uuid.uuid4().hex[:6]}", "scratch-password-1"
        with self.admin_api() as api:
            made = api.post(
                "/users", json={"username": name, "role": "admin", "password": password}
            )
            assert made.status_code == 201, made.text
        return (name, password, *self.login(name, password))

    def login(self, name: str, password: str) -> tuple[str, str]:
        """(session cookie, CSRF token) of a new session of ``name``."""
        source = httpx.HTTPTransport(local_address=SCRATCH_SOURCE)
        with httpx.Client(base_url=self.base, transport=source, timeout=30) as browser:
            login = browser.post("/auth/login", json={"username": name, "password": password})
            assert login.status_code == 200, login.text
            return login.cookies[SESSION_COOKIE], login.json()["csrf_token"]

    def _on_loopback(self, case: Case) -> None:
        """Probes and new jobs go to destinations on this host only: a generated
        destination elsewhere is swapped for the config file's one, on 127.0.0.1."""
        destination_id = case.path_parameters.get("destination_id")
        with self.admin_api() as api:
            found = api.get(f"/destinations/{destination_id}")
        if found.status_code != 200:
            return  # the 404 is what is tested
        body = found.json()
        host = body.get("host") or urllib.parse.urlsplit(body.get("url", "")).hostname or ""
        if not _loopback(host):
            case.path_parameters["destination_id"] = self.loopback_id

    def check(self, case: Case) -> None:
        path = case.operation.path
        headers: dict[str, str] = {}
        cookies: dict[str, str] = {}
        if path == "/metrics":
            headers["Authorization"] = f"Bearer {METRICS_TOKEN}"
        elif path.startswith("/me") or path == "/auth/logout":
            cookie, csrf = self.scratch_session()
            cookies[SESSION_COOKIE] = cookie
            headers["X-CSRF-Token"] = csrf
        else:
            headers["Authorization"] = f"Bearer {self.token}"
        if path.startswith("/destinations/{destination_id}/") and case.method == "POST":
            self._on_loopback(case)
        # /metrics and /dicom-web/ are at the root (their own servers entries, which
        # schemathesis does not read).
        at_root = path == "/metrics" or path.startswith("/dicom-web/")
        base = self.base.removesuffix("/api/v1") if at_root else self.base
        case.call_and_validate(base, headers=headers, cookies=cookies, timeout=30)


def _loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _seed(conformance: Conformance, workdir: Path) -> None:
    """An admin API token, and a stored study whose forward jobs are dead."""
    gateway = conformance.gateway
    with httpx.Client(base_url=conformance.base, timeout=30) as browser:
        login = browser.post("/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
        assert login.status_code == 200, login.text
        made = browser.post(
            "/me/tokens",
            json={"name": "conformance"},
            headers={"X-CSRF-Token": login.json()["csrf_token"]},
        )
        assert made.status_code == 201, made.text
        conformance.token = made.json()["token"]
    items = small_images(workdir / f"conformance-{uuid.uuid4().hex[:6]}", 3)
    outcomes = send_with_pynetdicom(items, gateway.dimse_port)
    assert set(outcomes.values()) == {0}, outcomes
    with conformance.admin_api() as api:
        destinations = api.get("/destinations").json()["items"]
        conformance.loopback_id = next(d["id"] for d in destinations if d["name"] == "loopback")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            dead = api.get("/queue/jobs", params={"state": "dead"}).json()["items"]
            if len(dead) == len(items):
                return
            time.sleep(0.2)
    raise AssertionError(f"the seeded jobs did not go dead: {gateway.log()[-2000:]}")


@pytest.fixture(scope="module")
def conformance(workdir: Path, pg_server: str) -> Iterator[Conformance]:
    name = f"conf_{uuid.uuid4().hex[:8]}"
    asyncio.run(_create_database(pg_server, name))
    state = workdir / name
    state.mkdir(mode=0o755)
    gateway = Gateway(state, with_database(pg_server, name), config_yaml=_config_yaml(free_port()))
    with running(gateway):
        conformance = Conformance(gateway)
        _seed(conformance, workdir)
        yield conformance


# NOTE: loaded at import (not from the gateway, with schemathesis.pytest.from_fixture,
# which pytest 9.2 breaks); the gateway serves these same bytes (test_openapi.py).
schema = schemathesis.openapi.from_dict(yaml.safe_load(spec_bytes()), config=CONFIG)


# NOTE: derandomized: the same requests in every run, so a CI run is red only for
# a change, never for a new random draw. Explore with DICOMGW_CONFORMANCE_RANDOM=1.
@schema.parametrize()
@settings(
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=not os.environ.get("DICOMGW_CONFORMANCE_RANDOM"),
)
def test_every_operation_conforms(case: Case, conformance: Conformance) -> None:
    conformance.check(case)


def test_own_account_successes_conform(conformance: Conformance) -> None:
    """What the generated requests rarely or never reach on one's own account (a
    right current password or TOTP code; the session or token they end), each
    done once, in order, with its answer checked against the description."""
    name, password, cookie, csrf = conformance.new_scratch()
    other_cookie, _ = conformance.login(name, password)

    def send(method: str, path: str, body: object = None, **path_parameters: object) -> Any:
        case = schema[path][method].Case(
            path_parameters=path_parameters, **({} if body is None else {"body": body})
        )
        response = case.call_and_validate(
            conformance.base,
            headers={"X-CSRF-Token": csrf},
            cookies={SESSION_COOKIE: cookie},
            timeout=30,
        )
        return response.json() if response.content else None

    token = send("POST", "/me/tokens", {"name": "once", "expires_in_days": 1})
    assert [t["id"] for t in send("GET", "/me/tokens")["items"]] == [token["id"]]
    send("DELETE", "/me/tokens/{token_id}", token_id=token["id"])

    sessions = send("GET", "/me/sessions")["items"]
    assert len(sessions) == 2
    other = next(s["id"] for s in sessions if not s["current"])
    send("DELETE", "/me/sessions/{session_id}", session_id=other)
    assert not conformance.works(other_cookie)

    totp = pyotp.TOTP(send("POST", "/me/totp")["secret"])
    # Each code once, each step after the last (a replayed step is refused).
    send("POST", "/me/totp/confirm", {"code": totp.at(time.time() - 30)})
    send("POST", "/me/totp/recovery-codes", {"code": totp.now()})
    send("POST", "/me/totp/disable", {"code": totp.at(time.time() + 30)})

    send("POST", "/me/password", {"current_password": password, "new_password": "x" * 16})
    send("POST", "/auth/logout")
    assert not conformance.works(cookie)
