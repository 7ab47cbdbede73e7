"""deploy/nginx/dicom-gw.conf: `nginx -t` passes with a test certificate, and a live
nginx in front of a running gateway serves HTTPS the way docs/tls.md says."""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import ssl
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from dicomgw.api.auth import SECURE_SESSION_COOKIE
from tests.conftest import _create_database, with_database
from tests.deploy.nginx import ACME_TOKEN, ASSET, INDEX_HTML, Site, check, running
from tests.gateway import ADMIN_PASSWORD, Gateway
from tests.gateway import running as gateway_running
from tests.integration.scu import files_with_uid, make_dataset

GATEWAY_CONFIG = """\
api:
  behind_https: true
  trusted_proxies: [127.0.0.1]
  metrics_networks: [127.0.0.1/32]
"""
HSTS = "max-age=63072000"
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


@pytest.fixture(scope="module")
def gateway(workdir: Path, pg_server: str) -> Iterator[Gateway]:
    name = f"gw_{uuid.uuid4().hex[:8]}"
    asyncio.run(_create_database(pg_server, name))
    state = workdir / f"nginx-gateway-{name}"
    state.mkdir(mode=0o755)
    with gateway_running(
        Gateway(state, with_database(pg_server, name), config_yaml=GATEWAY_CONFIG)
    ) as running_gateway:
        yield running_gateway


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, gateway: Gateway) -> Iterator[Site]:
    made = Site(tmp_path_factory.mktemp("nginx"), gateway.api_port)
    made.write()
    with running(made):
        yield made


@pytest.fixture
def https(site: Site) -> Iterator[httpx.Client]:
    context = ssl.create_default_context()
    site.ca.configure_trust(context)
    with httpx.Client(base_url=site.https, verify=context, timeout=30) as client:
        yield client


def test_nginx_t_passes_with_a_test_certificate(tmp_path: Path) -> None:
    site = Site(tmp_path, api_port=8080)
    site.write()
    done = check(site)
    assert done.returncode == 0, done.stderr
    assert "test is successful" in done.stderr
    assert "[warn]" not in done.stderr, done.stderr


def test_nginx_t_fails_without_the_certificate(tmp_path: Path) -> None:
    """Until a certificate is installed nginx refuses the site (the RPM installs a
    self-signed one so that it starts)."""
    site = Site(tmp_path, api_port=8080)
    site.write()
    (site.state_dir / "tls" / "https.crt").unlink()
    done = check(site)
    assert done.returncode != 0
    assert "https.crt" in done.stderr


def test_ui_over_https_with_hsts_and_security_headers(https: httpx.Client) -> None:
    index = https.get("/")
    assert index.status_code == 200
    assert index.text == INDEX_HTML
    assert index.headers["cache-control"] == "no-cache"
    assert index.headers.get_list("strict-transport-security") == [HSTS]
    for name, value in SECURITY_HEADERS.items():
        assert index.headers.get_list(name) == [value]
    assert "frame-ancestors 'none'" in index.headers["content-security-policy"]

    # A path of the UI's own router gets index.html; a missing asset does not.
    routed = https.get("/studies/1.2.3")
    assert (routed.status_code, routed.text) == (200, INDEX_HTML)
    assert https.get("/assets/gone-0000.js").status_code == 404

    asset = https.get(f"/{ASSET}", headers={"Accept-Encoding": "gzip"})
    assert asset.status_code == 200
    assert asset.headers["content-encoding"] == "gzip"
    assert asset.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert asset.text.startswith("console.log")


def test_api_through_nginx_has_each_header_once(https: httpx.Client) -> None:
    """The API sets the same headers itself (behind_https: HSTS too); nginx hides
    them and adds its own, so none is doubled."""
    live = https.get("/api/v1/health/live")
    assert live.status_code == 200
    assert live.headers.get_list("strict-transport-security") == [HSTS]
    for name, value in SECURITY_HEADERS.items():
        assert live.headers.get_list(name) == [value]
    assert live.headers.get_list("content-security-policy") == [
        live.headers["content-security-policy"]
    ]
    assert live.headers["cache-control"] == "no-store"  # the API's, not the UI's


def test_the_api_sees_the_address_nginx_saw_not_a_forged_one(
    gateway: Gateway, https: httpx.Client
) -> None:
    """nginx replaces X-Forwarded-For; the API (trusted_proxies: [127.0.0.1])
    records the address it names. Sent straight to the API from 127.0.0.1 the same
    header is believed, which shows that the check can tell."""
    forged = {"X-Forwarded-For": "203.0.113.9"}
    with httpx.Client(base_url=f"http://127.0.0.1:{gateway.api_port}", timeout=30) as direct:
        login = direct.post(
            "/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}
        )
        assert login.status_code == 200
        # NOTE: sent by hand: the cookie is Secure (behind_https), httpx keeps it off http.
        cookie = {"Cookie": f"{SECURE_SESSION_COOKIE}={login.cookies[SECURE_SESSION_COOKIE]}"}
        through = https.get("/api/v1/audit", params={"limit": 1}, headers=cookie | forged)
        straight = direct.get("/api/v1/audit", params={"limit": 1}, headers=cookie | forged)
        assert through.status_code == straight.status_code == 200
        rows = direct.get(
            "/api/v1/audit", params={"action": "audit.search", "limit": 20}, headers=cookie
        ).json()["items"]
    address = {row["request_id"]: row["source_ip"] for row in rows}
    assert address[through.headers["x-request-id"]] == "127.0.0.1"
    assert address[straight.headers["x-request-id"]] == "203.0.113.9"


def _handshake(port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        return context.wrap_socket(sock, server_hostname="127.0.0.1")
    except BaseException:
        sock.close()
        raise


def _client(site: Site, version: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.create_default_context()
    site.ca.configure_trust(context)
    context.minimum_version = context.maximum_version = version
    return context


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_1_2_and_1_3_are_served(site: Site, version: ssl.TLSVersion) -> None:
    with _handshake(site.https_port, _client(site, version)) as tls:
        assert tls.version() == version.name.replace("v1_", "v1.")


def test_tls_1_2_gets_no_session_ticket(site: Site) -> None:
    with _handshake(site.https_port, _client(site, ssl.TLSVersion.TLSv1_2)) as tls:
        assert tls.session is not None
        assert not tls.session.has_ticket


TLS11_DEPRECATED = pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1:DeprecationWarning")


def _tls11_client() -> ssl.SSLContext:
    """A client that really offers TLS 1.1 (OpenSSL 3 refuses to by default)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
    return context


@contextlib.contextmanager
def _tls11_server(site: Site) -> Iterator[int]:
    """A TLS 1.1 server, to show that the client above can complete a handshake."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
    tls = site.state_dir / "tls"
    context.load_cert_chain(tls / "https.crt", tls / "https.key")
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def accept() -> None:
            conn, _ = listener.accept()
            with contextlib.suppress(OSError), context.wrap_socket(conn, server_side=True):
                pass

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        yield listener.getsockname()[1]
        thread.join(10)


@TLS11_DEPRECATED
def test_tls_1_1_is_refused(site: Site) -> None:
    with _tls11_server(site) as port, _handshake(port, _tls11_client()) as control:
        assert control.version() == "TLSv1.1"
    with pytest.raises(ssl.SSLError, match=r"(?i)protocol version|unsupported protocol"):
        _handshake(site.https_port, _tls11_client()).close()


def test_http_redirects_to_https_except_acme_challenges(site: Site) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{site.http_port}", timeout=30) as http:
        moved = http.get("/studies?x=1")
        assert moved.status_code == 301
        assert moved.headers["location"] == "https://127.0.0.1/studies?x=1"
        challenge = http.get(f"/.well-known/acme-challenge/{ACME_TOKEN}")
        assert challenge.status_code == 200
        assert challenge.text == f"{ACME_TOKEN}.key-authorization\n"
        assert http.get("/.well-known/acme-challenge/other").status_code == 404


def test_metrics_are_not_exposed(site: Site, gateway: Gateway, https: httpx.Client) -> None:
    direct = httpx.get(f"http://127.0.0.1:{gateway.api_port}/metrics", timeout=30)
    assert direct.status_code == 200  # the API answers this address...
    assert "dicomgw_" in direct.text
    for path in ("/metrics", "/metrics/", "/metrics?x=1"):
        through = https.get(path)  # ...nginx does not pass it on
        assert through.status_code == 404
        assert "dicomgw_" not in through.text


def _refused_on_length(site: Site, path: str, length: int) -> bytes:
    """The status line nginx answers a POST announcing ``length`` bytes, before any is sent."""
    context = ssl.create_default_context()
    site.ca.configure_trust(context)
    with _handshake(site.https_port, context) as tls:
        tls.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
            + f"Content-Length: {length}\r\n\r\n".encode()
        )
        return tls.recv(4096).split(b"\r\n", 1)[0]


def test_bodies_are_small_except_where_stow_rs_streams(site: Site, https: httpx.Client) -> None:
    two_mb = b"\0" * (2 * 1024 * 1024)
    api = https.post("/api/v1/users", content=two_mb, headers={"Content-Type": "application/json"})
    assert api.status_code == 413
    assert _refused_on_length(site, "/api/v1/auth/login", 2 * 1024 * 1024).split()[1] == b"413"
    # STOW-RS takes up to 8 GiB, streamed on to the API (which refuses this
    # unauthenticated one) rather than spooled to nginx's disk first.
    log = site.dir / "error.log"
    before = log.read_text()
    stow = https.post(
        "/dicom-web/studies",
        content=two_mb,
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'},
    )
    # NOTE: the API answers without reading the body and closes; nginx, still
    # sending, may then answer 502 instead of the API's 401.
    assert stow.status_code in (401, 502)
    assert "buffered to a temporary file" not in log.read_text()[len(before) :]
    assert _refused_on_length(site, "/dicom-web/studies", 8 * 1024**3 + 1).split()[1] == b"413"


def test_stow_rs_through_nginx(site: Site, https: httpx.Client, gateway: Gateway) -> None:
    login = https.post("/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
    assert login.status_code == 200, login.text
    token = https.post(
        "/api/v1/me/tokens",
        json={"name": "stow", "expires_in_days": 1},
        headers={"X-CSRF-Token": login.json()["csrf_token"]},
    ).json()["token"]
    ds = make_dataset()
    ds.preamble = bytes(128)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    encoded = io.BytesIO()
    pydicom.dcmwrite(encoded, ds, enforce_file_format=True)
    body = b"--b\r\nContent-Type: application/dicom\r\n\r\n" + encoded.getvalue() + b"\r\n--b--\r\n"
    stored = https.post(
        "/dicom-web/studies",
        content=body,
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": 'multipart/related; type="application/dicom"; boundary=b',
        },
    )
    assert stored.status_code == 200, stored.text
    assert stored.headers["content-type"] == "application/dicom+json"
    assert files_with_uid(gateway.storage, ds.SOPInstanceUID)


def test_uploads_through_nginx_are_streamed_not_spooled(
    site: Site, https: httpx.Client, gateway: Gateway
) -> None:
    """A tus PATCH and a session chunk larger than the API's 1 MB, through nginx
    as shipped: passed on as they arrive, never buffered to nginx's disk."""
    login = https.post("/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
    assert login.status_code == 200, login.text
    csrf = {"X-CSRF-Token": login.json()["csrf_token"]}
    ds = make_dataset()
    ds.Rows = ds.Columns = 1024
    ds.PixelData = bytes(1024 * 1024 * 2)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    encoded = io.BytesIO()
    pydicom.dcmwrite(encoded, ds, enforce_file_format=True)
    data = encoded.getvalue()
    log = site.dir / "error.log"
    before = log.read_text()
    tus = {"Tus-Resumable": "1.0.0"} | csrf
    created = https.post("/api/v1/uploads", headers=tus | {"Upload-Length": str(len(data))})
    assert created.status_code == 201, created.text
    sent = https.patch(
        created.headers["Location"],
        content=data,
        headers=tus | {"Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
    )
    assert sent.status_code == 204, sent.text
    assert sent.headers["Upload-Offset"] == str(len(data))
    session = https.post(
        "/api/v1/upload/init",
        json={"files": [{"name": "a.dcm", "size": len(data)}]},
        headers=csrf,
    )
    assert session.status_code == 201, session.text
    chunk = session.json()["chunk_size"]
    put = https.put(
        f"/api/v1/upload/{session.json()['upload_id']}/chunk",
        params={"file": 0, "index": 0},
        content=data[:chunk],
        headers=csrf | {"Content-Type": "application/octet-stream"},
    )
    assert put.status_code == 204, put.text
    assert "buffered to a temporary file" not in log.read_text()[len(before) :]


def test_login_is_rate_limited(https: httpx.Client) -> None:
    """10 a minute per address with a burst of 5: the 7th at once (or sooner) is
    nginx's 429. Each attempt names another user, so the API's own throttle (per
    user, and 20 per address) is not what answers."""
    statuses = []
    for _ in range(10):
        answer = https.post(
            "/api/v1/auth/login",
            json={"username": f"nobody-{uuid.uuid4().hex[:8]}", "password": "wrong"},
        )
        statuses.append(answer.status_code)
        if answer.status_code == 429:
            assert "application/problem+json" not in answer.headers.get("content-type", "")
            break
    # NOTE: other tests may have spent some of the burst already.
    assert 3 <= len(statuses) <= 7
    assert statuses == [401] * (len(statuses) - 1) + [429]
