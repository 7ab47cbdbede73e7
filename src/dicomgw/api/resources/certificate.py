"""The HTTPS certificate in ``tls.dir`` (the web UI's Settings page): what is
installed and when it expires, and an upload that validates and installs a new
one as ``dicom-gw tls install`` does (dicomgw.certificates).

The API runs unprivileged and reloads nothing: nginx takes the new files when it
is reloaded (the packaged dicom-gw-tls-reload.path does that when https.crt
changes), and the DICOM TLS listener on SIGHUP.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import falcon
import falcon.asgi

from dicomgw import audit
from dicomgw.api.auditing import audit_request
from dicomgw.api.auth import allow
from dicomgw.api.context import PREFIX, ApiContext, App
from dicomgw.api.problems import Problem, invalid
from dicomgw.api.validation import body_of
from dicomgw.certificates import (
    CertificateError,
    info,
    install,
    read_certificates,
    validate_pem,
    watched,
)
from dicomgw.config import Config

NGINX_RELOAD = (
    "nginx reloads when the file changes (dicom-gw-tls-reload.path), or run systemctl reload nginx"
)
DICOM_RELOAD = (
    "so does the DICOM TLS listener (the same unit reloads it; by hand: systemctl reload "
    "dicom-gw or dicom-gw-receiver)"
)


def _reload(config: Config) -> str:
    """What makes the servers present the new certificate."""
    if config.dimse.tls_port is not None and not config.dimse.tls_cert_file:
        return f"{NGINX_RELOAD}; {DICOM_RELOAD}"
    return NGINX_RELOAD


def _described(config: Config, label: str, path: Path) -> dict[str, Any]:
    found: dict[str, Any] = {"label": label, "path": str(path), "installed": path.exists()}
    if not found["installed"]:
        return found
    try:
        cert = info(read_certificates(path, "certificate")[0])
    except CertificateError as exc:
        return found | {"problem": str(exc)}
    days = cert.days_left()
    return found | {
        "subject": cert.subject,
        "names": list(cert.names),
        "issuer": cert.issuer,
        "not_before": cert.not_before.isoformat(),
        "not_after": cert.not_after.isoformat(),
        "days_left": round(days, 1),
        "expires_soon": days < config.tls.expiry_warning_days,
    }


class CertificateResource:
    def __init__(self, api: ApiContext) -> None:
        self._config = api.config
        self._pools = api.pools

    @allow("operator")
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        config = self._config
        resp.media = {
            "certificates": [
                _described(config, label, path) for label, path in watched(config).items()
            ],
            "expiry_warning_days": config.tls.expiry_warning_days,
            "reload": _reload(config),
        }

    @allow("admin")
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        body = await body_of(req, {"certificate": str, "key": str}, {"chain": str})
        chain = body.get("chain") or None
        try:
            chain_pem, key_pem = validate_pem(
                body["certificate"].encode(), body["key"].encode(), chain and chain.encode()
            )
        except CertificateError as exc:
            async with self._pools.pool.acquire() as conn:
                await audit_request(conn, req, "tls.certificate.install", "https",
                                    {"problem": str(exc)}, event_id=audit.SECURITY_ALERT,
                                    outcome="failure")  # fmt: skip
            raise invalid(str(exc), **({"field": exc.part} if exc.part else {})) from None
        try:
            cert_path, _ = await asyncio.to_thread(install, self._config, chain_pem, key_pem)
        except CertificateError as exc:
            # NOTE: the upload was fine; tls.dir is not writable by the gateway's user.
            raise Problem(500, "certificate-install", "Cannot install the certificate",
                          str(exc)) from None  # fmt: skip
        installed = _described(self._config, "https", cert_path)
        async with self._pools.pool.acquire() as conn:
            await audit_request(
                conn,
                req,
                "tls.certificate.install",
                "https",
                {k: installed.get(k) for k in ("subject", "names", "not_after")},
                event_id=audit.SECURITY_ALERT,
            )
        resp.media = {"certificate": installed, "reload": _reload(self._config)}


def add_routes(app: App, api: ApiContext) -> None:
    app.add_route(f"{PREFIX}/settings/certificate", CertificateResource(api))
