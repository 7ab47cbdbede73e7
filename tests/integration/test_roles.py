"""The roles run as separate processes, as the systemd units run them:
``receiver`` (which starts the embedded PostgreSQL when no DSN is set and
migrates), then ``forwarder`` and ``api`` on the same database. Each says
READY=1 to systemd once it serves and STOPPING=1 when told to stop."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.cli import CLI
from tests.gateway import ADMIN_PASSWORD
from tests.integration.scu import make_dataset, send
from tests.integration.test_serve import serve_env


class NotifySocket:
    """What systemd listens on: a Unix datagram socket named by NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.received: list[str] = []

    def wait_for(self, state: str, proc: subprocess.Popen[str], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while state not in self.received:
            if proc.poll() is not None:
                err = proc.stderr.read() if proc.stderr else ""
                raise AssertionError(f"exited ({proc.returncode}) before {state}: {err[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {state} within {timeout} s; got {self.received}")
            self.sock.settimeout(0.1)
            with contextlib.suppress(TimeoutError):
                self.received.append(self.sock.recv(4096).decode())

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def role(name: str, env: dict[str, str], state_dir: Path) -> Iterator[NotifySocket]:
    notify = NotifySocket(state_dir / f"notify-{name}.sock")
    proc = subprocess.Popen(
        [*CLI, name],
        env={**env, "NOTIFY_SOCKET": str(notify.path)},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        notify.wait_for("READY=1", proc)
        yield notify
        proc.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING=1", proc)
        assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()


def test_roles_in_separate_processes(state_dir: Path) -> None:
    env = serve_env(
        state_dir,
        DICOMGW_ADMIN_PASSWORD=ADMIN_PASSWORD,
        DICOMGW_API__METRICS_NETWORKS="[127.0.0.1]",
    )
    with role("receiver", env, state_dir):
        statuses = send(int(env["DICOMGW_DIMSE__PORT"]), [make_dataset(patient_name="ROLES^ONE")])
        assert statuses == [0x0000]
        with role("forwarder", env, state_dir), role("api", env, state_dir):
            api = httpx.Client(base_url=f"http://127.0.0.1:{env['DICOMGW_API__PORT']}")
            login = api.post(
                "/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}
            )
            assert login.status_code == 200, login.text
            found = api.get("/api/v1/studies", params={"patient_name": "ROLES^ONE"})
            assert found.status_code == 200 and len(found.json()["items"]) == 1
            # The receiver's counters reach the API's scrape through <state_dir>/metrics.
            metrics = api.get("/metrics").text
            assert 'dicomgw_instances_received_total{outcome="stored"} 1.0' in metrics
        # With the API gone the receiver still answers.
        assert send(int(env["DICOMGW_DIMSE__PORT"]), [make_dataset(patient_name="ROLES^TWO")]) == [
            0
        ]
