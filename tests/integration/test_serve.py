"""``dicom-gw serve`` end to end: embedded PostgreSQL, DIMSE and API ports, one
instance per state dir, clean stop."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE

from dicomgw.db.embedded import PostmasterInfo
from tests.cli import CLI, cli_env, run_cli
from tests.gateway import free_port, wait_listening

VERIFICATION = "1.2.840.10008.1.1"


def get_json(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@contextlib.contextmanager
def serving(env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([*CLI, "serve"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(int(env["DICOMGW_DIMSE__PORT"]), proc)
        wait_listening(int(env["DICOMGW_API__PORT"]), proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def serve_env(state_dir: Path, **extra: str) -> dict[str, str]:
    ports = {
        "DICOMGW_DIMSE__HOST": "127.0.0.1",
        "DICOMGW_DIMSE__PORT": str(free_port()),
        "DICOMGW_API__PORT": str(free_port()),
        # NOTE: readiness includes the disk watermark; the test machine's disk
        # may be fuller than the 90% default.
        "DICOMGW_STORAGE__HIGH_WATERMARK_PERCENT": "100",
        "DICOMGW_STORAGE__LOW_WATERMARK_PERCENT": "99.9",
    }
    return cli_env(state_dir, **{**ports, **extra})


def test_serve_on_embedded_defaults(state_dir: Path) -> None:
    env = serve_env(state_dir)
    with serving(env) as proc:
        status, body = get_json(f"http://127.0.0.1:{env['DICOMGW_API__PORT']}/api/v1/health/live")
        assert (status, body) == (200, {"status": "ok"})
        status, body = get_json(f"http://127.0.0.1:{env['DICOMGW_API__PORT']}/api/v1/health/ready")
        assert status == 200, body
        checks = body["checks"]
        assert set(checks) == {"database", "queue", "storage", "disk", "receiver"}
        assert all(check["ok"] for check in checks.values())
        assert checks["queue"]["oldest_due_s"] == 0
        assert checks["receiver"]["port"] == int(env["DICOMGW_DIMSE__PORT"])

        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(VERIFICATION)
        assoc = ae.associate("127.0.0.1", int(env["DICOMGW_DIMSE__PORT"]), ae_title="DICOMGW")
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()

        second = run_cli("serve", env=serve_env(state_dir))
        assert second.returncode == 1
        assert f"already running on state dir '{state_dir}' (pid {proc.pid})" in second.stderr

        for sub in ("incoming", "objects", "quarantine"):
            assert oct((state_dir / "storage" / sub).stat().st_mode & 0o777) == "0o750"
        postmaster = PostmasterInfo.read(state_dir / "pg")
        assert postmaster is not None and postmaster.is_alive()

    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    assert postmaster.wait_exit(10)
    logs = [
        json.loads(line)
        for line in (proc.stderr.read() if proc.stderr else "").splitlines()
        if line.startswith("{")
    ]
    assert any(entry["msg"] == "stopped" for entry in logs)


def test_serve_with_external_dsn_starts_no_database(state_dir: Path, empty_db: str) -> None:
    env = serve_env(state_dir, DICOMGW_DATABASE__DSN=empty_db)
    with serving(env):
        status, _ = get_json(f"http://127.0.0.1:{env['DICOMGW_API__PORT']}/api/v1/health/ready")
        assert status == 200
    assert not (state_dir / "pg").exists()


def test_not_ready_above_the_disk_watermark(state_dir: Path, empty_db: str) -> None:
    env = serve_env(
        state_dir,
        DICOMGW_DATABASE__DSN=empty_db,
        DICOMGW_STORAGE__HIGH_WATERMARK_PERCENT="0.002",
        DICOMGW_STORAGE__LOW_WATERMARK_PERCENT="0.001",
    )
    with serving(env):
        status, body = get_json(f"http://127.0.0.1:{env['DICOMGW_API__PORT']}/api/v1/health/ready")
    assert status == 503
    assert body["status"] == "unavailable"
    assert body["checks"]["disk"]["ok"] is False
    assert body["checks"]["database"]["ok"] is True


def test_dimse_port_in_use_is_a_clear_error(state_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        env = serve_env(state_dir, DICOMGW_DIMSE__PORT=str(busy.getsockname()[1]))
        done = run_cli("serve", env=env)
    assert done.returncode == 1
    assert "cannot listen on dimse.host 127.0.0.1 port" in done.stderr
    assert "Traceback" not in done.stderr
    # The embedded database it started is stopped again.
    info = PostmasterInfo.read(state_dir / "pg")
    assert info is None


def test_upgrade_on_start_off_refuses_an_old_schema(state_dir: Path) -> None:
    env = serve_env(state_dir, DICOMGW_DATABASE__UPGRADE_ON_START="false")
    done = run_cli("serve", env=env)
    assert done.returncode == 1
    assert "run 'dicom-gw db upgrade'" in done.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_stops_cleanly_on_signal(state_dir: Path, signum: int) -> None:
    env = serve_env(state_dir)
    with serving(env) as proc:
        proc.send_signal(signum)
        assert proc.wait(30) == 0
