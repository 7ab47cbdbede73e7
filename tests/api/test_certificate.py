"""/settings/certificate: the HTTPS certificate shown to admins and operators, and
uploaded (validated, installed, audited) by admins only."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest
from cryptography import x509

from tests.api.inprocess import api_config, logged_in, migrated
from tests.certs import make_pki, self_signed

PATH = "/settings/certificate"


@pytest.fixture
async def dsn(empty_db: str) -> str:
    await migrated(empty_db)
    return empty_db


async def audited(dsn: str) -> list[tuple[str, str, str]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT action, outcome, detail::text AS detail FROM audit_log "
            "WHERE action = 'tls.certificate.install' ORDER BY id"
        )
    finally:
        await conn.close()
    return [(r["action"], r["outcome"], r["detail"]) for r in rows]


async def test_an_admin_installs_a_certificate_with_its_chain(dsn: str, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    state = tmp_path / "state"
    async with logged_in(api_config(dsn, state), "admin") as api:
        before = await api.call("GET", PATH)
        assert before.status_code == 200
        assert before.json["certificates"] == [
            {"label": "https", "path": str(state / "tls" / "https.crt"), "installed": False}
        ]
        done = await api.call(
            "POST",
            PATH,
            json={
                "certificate": pki.server_cert.read_text(),
                "key": pki.server_key.read_text(),
                "chain": pki.ca.read_text(),
            },
        )
        assert done.status_code == 200, done.text
        assert done.json["certificate"]["subject"] == "CN=STORESCP"
        assert done.json["certificate"]["names"] == ["127.0.0.1", "localhost"]
        assert "dicom-gw-tls-reload.path" in done.json["reload"]
        installed = x509.load_pem_x509_certificates((state / "tls" / "https.crt").read_bytes())
        assert [c.subject.rfc4514_string() for c in installed] == [
            "CN=STORESCP",
            "CN=dicom-gw test CA",
        ]
        assert (state / "tls" / "https.key").read_bytes() == pki.server_key.read_bytes()
        shown = (await api.call("GET", PATH)).json
        [https] = shown["certificates"]
        assert https["installed"] and https["subject"] == "CN=STORESCP"
        assert https["issuer"] == "CN=dicom-gw test CA"
        # make_pki's certificates last a day: within tls.expiry_warning_days (30).
        assert 0.9 < https["days_left"] <= 1 and https["expires_soon"] is True
        assert shown["expiry_warning_days"] == 30
    [(_, outcome, detail)] = await audited(dsn)
    assert outcome == "success" and "CN=STORESCP" in detail


async def test_what_is_wrong_is_named_and_nothing_is_installed(dsn: str, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    expired = self_signed(tmp_path / "pki", "old", days=-1, started_days_ago=10)
    cert, key = pki.server_cert.read_text(), pki.server_key.read_text()
    state = tmp_path / "state"
    cases = [
        ({"certificate": cert, "key": pki.client_key.read_text()}, "key",
         "the key is not the private key of the certificate"),
        ({"certificate": cert, "key": key, "chain": pki.other_ca.read_text()}, "chain",
         "the chain is broken: 'STORESCP' is not issued by 'some other CA'"),
        ({"certificate": expired[0].read_text(), "key": expired[1].read_text()}, "certificate",
         "the certificate expired on"),
        ({"certificate": "not a certificate", "key": key}, "certificate",
         "the certificate holds no PEM certificate"),
        ({"certificate": cert, "key": cert}, "key", "the key holds no PEM private key"),
        ({"certificate": pki.client_cert.read_text(),
          "key": pki.encrypted_client_key.read_text()}, "key", "encrypted with a passphrase"),
    ]  # fmt: skip
    async with logged_in(api_config(dsn, state), "admin") as api:
        for body, field, message in cases:
            refused = await api.call("POST", PATH, json=body)
            assert refused.status_code == 422, refused.text
            assert refused.headers["content-type"] == "application/problem+json"
            assert refused.json["field"] == field
            assert message in refused.json["detail"]
        missing = await api.call("POST", PATH, json={"certificate": cert})
        assert (missing.status_code, missing.json["field"]) == (422, "key")
    assert not (state / "tls").exists()
    assert [outcome for _, outcome, _ in await audited(dsn)] == ["failure"] * len(cases)


@pytest.mark.parametrize(("role", "read", "write"), [("operator", 200, 403), ("viewer", 403, 403)])
async def test_only_admins_upload(
    dsn: str, tmp_path: Path, role: str, read: int, write: int
) -> None:
    cert, key = self_signed(tmp_path / "pki", "gw", days=90)
    async with logged_in(api_config(dsn, tmp_path / "state"), role) as api:
        assert (await api.call("GET", PATH)).status_code == read
        body = {"certificate": cert.read_text(), "key": key.read_text()}
        assert (await api.call("POST", PATH, json=body)).status_code == write
    assert not (tmp_path / "state" / "tls").exists()
