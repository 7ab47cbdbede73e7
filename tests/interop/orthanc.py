"""A private Orthanc for interop tests: a DIMSE and DICOMweb peer of our own.

Each :func:`running_orthanc` starts Orthanc by PID (never the system service) with
its own configuration, storage and index under a temporary directory, on free
ports, with the DICOMweb plugin, and stops it on exit. Tests look at what it
stored through its REST API (:meth:`Orthanc.instances`, :meth:`Orthanc.file`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

HOST = "127.0.0.1"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
DICOMWEB_ROOT = "/dicom-web"
# Debian's orthanc-dicomweb links it here; Orthanc's own Linux builds use /usr/local.
DICOMWEB_PLUGINS = (
    Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"),
    Path("/usr/local/share/orthanc/plugins/libOrthancDicomWeb.so"),
)
ORTHANC_MISSING = (
    "Orthanc with its DICOMweb plugin is needed for the Orthanc interop tests: "
    "install the Debian packages (apt-get install -y orthanc orthanc-dicomweb)"
)


@dataclass(frozen=True)
class Orthanc:
    """A running Orthanc: where to send (DIMSE, STOW-RS) and what it stored."""

    dicom_port: int
    http_port: int
    ae_title: str
    log: Path
    """Orthanc's output, for the message of a failing test."""
    host: str = HOST

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb service base URL: STOW-RS POSTs go to ``{dicomweb_url}/studies``."""
        return self.http_url + DICOMWEB_ROOT

    def instances(self) -> dict[str, str]:
        """The stored instances: SOP Instance UID -> Orthanc's instance id."""
        answer = _get(f"{self.http_url}/instances", params={"expand": ""})
        return {entry["MainDicomTags"]["SOPInstanceUID"]: entry["ID"] for entry in answer.json()}

    def file(self, instance_id: str) -> bytes:
        """The Part 10 file Orthanc stored for an instance (its own File Meta)."""
        return _get(f"{self.http_url}/instances/{instance_id}/file").content


def _get(url: str, params: Mapping[str, str] | None = None) -> httpx.Response:
    answer = httpx.get(url, params=params, timeout=30)
    answer.raise_for_status()
    return answer


def require_orthanc() -> tuple[str, Path]:
    """Orthanc's executable and its DICOMweb plugin; skips without them, but fails
    under CI=true: a CI job that silently skipped these tests would report green."""
    executable = shutil.which("Orthanc")
    plugin = next((path for path in DICOMWEB_PLUGINS if path.is_file()), None)
    if executable is None or plugin is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(ORTHANC_MISSING, pytrace=False)
        pytest.skip(ORTHANC_MISSING)
    return executable, plugin


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_orthanc(
    tmp_dir: Path, ae_title: str = "ORTHANC", config: Mapping[str, object] | None = None
) -> Iterator[Orthanc]:
    """Start a private Orthanc in ``tmp_dir`` and stop it on exit.

    ``config`` adds or overrides Orthanc configuration keys (e.g. ``DicomModalities``
    for C-MOVE tests, ``UnknownSopClassAccepted``).
    """
    executable, plugin = require_orthanc()
    dicom_port, http_port = _free_port(), _free_port()
    settings: dict[str, object] = {
        "Name": "dicomgw-tests",
        "StorageDirectory": str(tmp_dir / "storage"),
        "IndexDirectory": str(tmp_dir / "index"),
        "DicomAet": ae_title,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "SaveJobs": False,
        "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": DICOMWEB_ROOT + "/", "EnableWado": False},
    }
    settings.update(config or {})
    config_path = tmp_dir / "orthanc.json"
    config_path.write_text(json.dumps(settings, indent=2))
    log = tmp_dir / "orthanc.log"
    with open(log, "wb") as out:
        # NOTE: Orthanc's DICOM server is DCMTK's: without TCP_NODELAY each C-STORE
        # response waits ~40 ms for a delayed ACK.
        proc = subprocess.Popen(
            [executable, str(config_path)],
            env=os.environ | {"TCP_NODELAY": "1"},
            cwd=tmp_dir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        orthanc = Orthanc(dicom_port, http_port, ae_title, log)
        _wait_ready(orthanc, proc)
        yield orthanc
    finally:
        _stop(proc)


def _wait_ready(orthanc: Orthanc, proc: subprocess.Popen[bytes]) -> None:
    """Until the REST API and the DICOMweb plugin answer; fails if Orthanc exits first."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(
                f"Orthanc exited with status {proc.returncode}: {_tail(orthanc.log)}",
                pytrace=False,
            )
        with contextlib.suppress(httpx.TransportError):
            plugins = httpx.get(f"{orthanc.http_url}/plugins", timeout=5)
            if plugins.status_code == 200:
                if "dicom-web" not in plugins.json():
                    pytest.fail(
                        f"Orthanc did not load its DICOMweb plugin: {_tail(orthanc.log)}",
                        pytrace=False,
                    )
                return
        time.sleep(0.1)
    pytest.fail(f"Orthanc's REST API did not answer within {READY_TIMEOUT_S:.0f} s", pytrace=False)


def _tail(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return " | ".join(lines[-5:]) or "no output"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM by PID; SIGKILL if it has not exited within STOP_TIMEOUT_S."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
