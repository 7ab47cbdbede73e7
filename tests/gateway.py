"""A real ``dicom-gw serve`` in a subprocess, for tests that talk to it over the wire."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.cli import CLI, cli_env

ADMIN_PASSWORD = "test-admin-password"
"""The first admin's password in test gateways (DICOMGW_ADMIN_PASSWORD)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_listening(port: int, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"dicom-gw serve exited early ({proc.returncode}): {err[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise AssertionError(f"port {port} not listening after {timeout}s")


@dataclass
class Gateway:
    state_dir: Path
    dsn: str | None
    ae_title: str = "DICOMGW"
    dimse_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    extra_env: dict[str, str] = field(default_factory=dict)
    config_yaml: str | None = None
    """Written to <state_dir>/dicom-gw.yaml and used as the config file."""
    proc: subprocess.Popen[str] | None = None
    log_path: Path | None = None

    @property
    def storage(self) -> Path:
        return self.state_dir / "storage"

    def env(self) -> dict[str, str]:
        defaults = {
            "DICOMGW_DIMSE__HOST": "127.0.0.1",
            "DICOMGW_DIMSE__PORT": str(self.dimse_port),
            "DICOMGW_DIMSE__AE_TITLE": self.ae_title,
            "DICOMGW_API__PORT": str(self.api_port),
            "DICOMGW_DIMSE__ACSE_TIMEOUT_S": "5",
            # NOTE: a test machine's disk may well be over the 90% default; only
            # the watermark tests mean to be refused.
            "DICOMGW_STORAGE__HIGH_WATERMARK_PERCENT": "100",
            "DICOMGW_STORAGE__LOW_WATERMARK_PERCENT": "99.9",
            "DICOMGW_ADMIN_PASSWORD": ADMIN_PASSWORD,
        }
        env = cli_env(self.state_dir, **{**defaults, **self.extra_env})
        if self.config_yaml is not None:
            path = self.state_dir / "dicom-gw.yaml"
            path.write_text(self.config_yaml)
            env["DICOMGW_CONFIG"] = str(path)
        if self.dsn:
            env["DICOMGW_DATABASE__DSN"] = self.dsn
        return env

    def start(self) -> None:
        self.log_path = self.state_dir / "serve.log"
        log = self.log_path.open("a")
        self.proc = subprocess.Popen(
            [*CLI, "serve"], env=self.env(), stdout=log, stderr=log, text=True
        )
        wait_listening(self.dimse_port, self.proc)
        wait_listening(self.api_port, self.proc)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(60)
        self.proc = None
        return code

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(30)
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path else ""

    def objects(self) -> list[Path]:
        return sorted((self.storage / "objects").rglob("*.dcm"))


@contextlib.contextmanager
def running(gateway: Gateway) -> Iterator[Gateway]:
    gateway.start()
    try:
        yield gateway
    finally:
        if gateway.proc is not None:
            gateway.stop()
