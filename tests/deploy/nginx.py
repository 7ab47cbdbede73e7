"""A private nginx running deploy/nginx/dicom-gw.conf, for the tests.

The site file is the real one with only its ports and paths substituted (on
127.0.0.1, in a temporary directory), inside a minimal nginx.conf standing in
for the system's /etc/nginx/nginx.conf. The certificate comes from a throwaway
CA (trustme), installed where ``dicom-gw tls install`` puts it.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import trustme

from tests.deploy.conftest import DEPLOY, PREFIX, require_tool, substituted
from tests.gateway import free_port

SITE = DEPLOY / "nginx" / "dicom-gw.conf"
INDEX_HTML = "<!doctype html><title>dicom-gw</title><div id=app></div>\n"
ASSET = "assets/index-3f9a1c2b.js"
ACME_TOKEN = "Tq3nR-example-token"

WRAPPER = """\
daemon off;
master_process off;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 256; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log {dir}/access.log;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    include {dir}/dicom-gw.conf;
}}
"""


@dataclass
class Site:
    dir: Path
    api_port: int
    ca: trustme.CA = field(default_factory=trustme.CA)
    http_port: int = field(default_factory=free_port)
    https_port: int = field(default_factory=free_port)

    @property
    def state_dir(self) -> Path:
        """Stands for /var/lib/dicom-gw."""
        return self.dir / "state"

    @property
    def share_dir(self) -> Path:
        """Stands for /opt/dicom-gw/share/dicom-gw."""
        return self.dir / "share"

    @property
    def conf(self) -> Path:
        return self.dir / "nginx.conf"

    @property
    def https(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    def write(self) -> None:
        """The site file, the wrapper, a certificate, a built UI and an ACME token."""
        tls = self.state_dir / "tls"
        tls.mkdir(parents=True)
        cert = self.ca.issue_cert("127.0.0.1", "localhost")
        cert.private_key_pem.write_to_path(str(tls / "https.key"))
        (tls / "https.crt").write_bytes(b"".join(pem.bytes() for pem in cert.cert_chain_pems))
        webui = self.share_dir / "webui"
        (webui / "assets").mkdir(parents=True)
        (webui / "index.html").write_text(INDEX_HTML)
        # Big enough for gzip (gzip_min_length).
        (webui / ASSET).write_text("console.log('dicom-gw');\n" * 200)
        shutil.copy(DEPLOY / "nginx" / "ffdhe2048.pem", self.share_dir)
        challenge = self.state_dir / "acme" / ".well-known" / "acme-challenge"
        challenge.mkdir(parents=True)
        (challenge / ACME_TOKEN).write_text(f"{ACME_TOKEN}.key-authorization\n")
        site = substituted(
            SITE.read_text(),
            {
                "listen 80;": f"listen 127.0.0.1:{self.http_port};",
                "    listen [::]:80;\n": "",
                "listen 443 ssl http2;": f"listen 127.0.0.1:{self.https_port} ssl http2;",
                "    listen [::]:443 ssl http2;\n": "",
                "server 127.0.0.1:8080;": f"server 127.0.0.1:{self.api_port};",
                "/var/lib/dicom-gw/": f"{self.state_dir}/",
                f"{PREFIX}/share/dicom-gw/": f"{self.share_dir}/",
            },
        )
        (self.dir / "dicom-gw.conf").write_text(site)
        self.conf.write_text(WRAPPER.format(dir=self.dir))

    def command(self, *args: str) -> list[str]:
        nginx = require_tool("nginx", "nginx")
        return [nginx, "-p", str(self.dir), "-c", str(self.conf), "-e", "stderr", *args]


def check(site: Site) -> subprocess.CompletedProcess[str]:
    """``nginx -t`` on the site."""
    return subprocess.run(
        site.command("-t"), capture_output=True, text=True, timeout=60, check=False
    )


@contextlib.contextmanager
def running(site: Site) -> Iterator[Site]:
    out = site.dir / "nginx.out"
    log = out.open("w")
    proc = subprocess.Popen(site.command(), stdout=log, stderr=log, text=True)
    try:
        for port in (site.https_port, site.http_port):
            _wait_listening(port, proc, out)
        yield site
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def _wait_listening(port: int, proc: subprocess.Popen[str], out: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"nginx exited ({proc.returncode}): {out.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise AssertionError(f"nginx not listening on {port} after 30 s: {out.read_text()[-2000:]}")
