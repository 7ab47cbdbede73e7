"""The receivers under test: how to start each one, where it stores, what to measure.

Each run starts a receiver fresh, by PID, in its own work directory (mode 0755:
dicomgw's embedded PostgreSQL runs as user ``dicomgw`` and must enter it), on a
free port, with the same maximum receive PDU for all.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from measure import Groups, stat_fields, trees

HOST = "127.0.0.1"
CALLING_AE = "BENCH"
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
# DCMTK reads TCP_NODELAY from the environment; without it small PDUs stall on Nagle.
DCMTK_ENV = os.environ | {"TCP_NODELAY": "1"}


class ReceiverFailed(Exception):
    """The receiver did not start, refused the association or lost instances."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def count_files(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


# DCMTK's "E: ..." / "F: ...", Orthanc's glog "E1122 16:51:23.187612 ...", Python's last line.
_ERROR_LINE = re.compile(r"^(?:[EF]:|[EF]\d{4} )")


def last_error(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if _ERROR_LINE.match(line)] or lines
    return errors[-1][:200] if errors else "no output"


def _output(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    return (done.stdout + done.stderr).strip()


@dataclass
class Running:
    receiver: Receiver
    proc: subprocess.Popen[bytes]
    port: int
    workdir: Path

    @property
    def log(self) -> Path:
        return self.workdir / "receiver.log"


class Receiver:
    name = ""
    ae = ""
    fsync = False
    """Whether it fsyncs each stored instance before acknowledging it."""

    def command(self, workdir: Path, port: int, pdu: int) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def storage(self, workdir: Path) -> Path:
        return workdir / "storage"

    def groups(self, run: Running) -> Groups:
        return {self.name: [run.proc.pid]}

    def received(self, run: Running) -> int:
        """Instances it has taken in (files stored, unless it stores none)."""
        return count_files(self.storage(run.workdir))

    def version(self) -> str:
        raise NotImplementedError


class StoreScp(Receiver):
    name, ae = "storescp", "STORESCP"

    def command(self, workdir: Path, port: int, pdu: int) -> tuple[list[str], dict[str, str]]:
        # +B writes the received stream as is; +xa accepts every transfer syntax;
        # --fork gives each association its own process, so 4 senders run in parallel.
        argv = [
            "storescp", "--fork", "-aet", self.ae, "-od", str(self.storage(workdir)), "+B",
            "+xa", "-pdu", str(pdu), "-dhl", str(port)
        ]  # fmt: skip
        return argv, DCMTK_ENV

    def version(self) -> str:
        match = re.search(r"v(\d\S*)", _output(["storescp", "--version"]))
        return match.group(1) if match else "unknown"


class StoreScpSink(StoreScp):
    """storescp --ignore: receives every data set and answers Success, stores nothing.

    The forwarding benchmark's fast sink. -v logs one line per C-STORE request,
    which is how the instances it received are counted.
    """

    name, ae = "storescp-ignore", "SINK"

    def command(self, workdir: Path, port: int, pdu: int) -> tuple[list[str], dict[str, str]]:
        argv = [
            "storescp", "--fork", "-v", "--ignore", "-aet", self.ae, "+xa", "-pdu", str(pdu),
            "-dhl", str(port)
        ]  # fmt: skip
        return argv, DCMTK_ENV

    def received(self, run: Running) -> int:
        return run.log.read_text(errors="replace").count("Received Store Request")


class PynetdicomScp(Receiver):
    name, ae = "pynetdicom", "PYNETDICOM"

    def __init__(self, python: str) -> None:
        self.python = python

    def command(self, workdir: Path, port: int, pdu: int) -> tuple[list[str], dict[str, str]]:
        argv = [
            self.python, str(BENCH_DIR / "pynetdicom_scp.py"), "--port", str(port), "--dir",
            str(self.storage(workdir)), "--ae", self.ae, "--pdu", str(pdu)
        ]  # fmt: skip
        return argv, dict(os.environ)

    def version(self) -> str:
        return _output([self.python, "-c", "import pynetdicom; print(pynetdicom.__version__)"])


class Orthanc(Receiver):
    name, ae, fsync = "orthanc", "ORTHANC", True  # SyncStorageArea defaults to true

    def command(self, workdir: Path, port: int, pdu: int) -> tuple[list[str], dict[str, str]]:
        config = {
            "Name": "dicomgw-bench",
            "StorageDirectory": str(self.storage(workdir)),
            "IndexDirectory": str(workdir / "index"),
            "DicomAet": self.ae,
            "DicomPort": port,
            "HttpPort": free_port(),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "MaximumPduLength": pdu,
            "SaveJobs": False,
            "Plugins": [],
        }
        path = workdir / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        # Orthanc's DICOM server is DCMTK's: without TCP_NODELAY each C-STORE
        # response waits ~40 ms for a delayed ACK.
        return ["Orthanc", str(path)], DCMTK_ENV

    def version(self) -> str:
        return _output(["Orthanc", "--version"]).splitlines()[0].removeprefix("Orthanc ")


class DicomGw(Receiver):
    name, ae = "dicomgw", "DICOMGW"

    def __init__(
        self, python: str, *, fsync: bool = True, env: Mapping[str, str] | None = None
    ) -> None:
        """``fsync``: storage.fsync (its default is true); ``env``: more ``DICOMGW_*``
        settings, e.g. ``DICOMGW_CONFIG`` naming a file with destinations and routes."""
        self.python = python
        self.fsync = fsync
        self.env = dict(env or {})

    def command(self, workdir: Path, port: int, pdu: int) -> tuple[list[str], dict[str, str]]:
        env = os.environ | {
            "DICOMGW_STATE_DIR": str(workdir),
            "DICOMGW_DIMSE__HOST": HOST,
            "DICOMGW_DIMSE__PORT": str(port),
            "DICOMGW_DIMSE__AE_TITLE": self.ae,
            "DICOMGW_DIMSE__MAX_PDU": str(pdu),
            "DICOMGW_API__PORT": str(free_port()),
            "DICOMGW_LOGGING__LEVEL": "WARNING",
            "DICOMGW_STORAGE__FSYNC": "true" if self.fsync else "false",
        }
        return [self.python, "-m", "dicomgw.cli", "serve"], env | self.env

    def storage(self, workdir: Path) -> Path:
        return workdir / "storage" / "objects"

    def groups(self, run: Running) -> Groups:
        # pg_ctl detaches the postmaster: find it by its data directory.
        data_dir = f"-D {self.pg_dir(run)}"
        postmasters = []
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ")
                except OSError:
                    continue
                if b"postgres" in cmdline.split(b" ", 1)[0] and data_dir.encode() in cmdline:
                    postmasters.append(int(entry.name))
        return {"dicomgw": [run.proc.pid], "postgresql": postmasters}

    @staticmethod
    def pg_dir(run: Running) -> Path:
        """The embedded PostgreSQL's data directory (its postmaster.pid names the socket)."""
        return run.workdir / "pg"

    def version(self) -> str:
        return _output([self.python, "-c", "import dicomgw; print(dicomgw.__version__)"])


def make(name: str, pynetdicom_python: str, dicomgw_python: str) -> Receiver:
    receivers: dict[str, Callable[[], Receiver]] = {
        "storescp": StoreScp,
        "orthanc": Orthanc,
        "pynetdicom": lambda: PynetdicomScp(pynetdicom_python),
        "dicomgw": lambda: DicomGw(dicomgw_python),
    }
    if name not in receivers:
        raise SystemExit(f"unknown receiver {name!r}: choose from {', '.join(receivers)}")
    return receivers[name]()


def start(receiver: Receiver, workdir: Path, pdu: int) -> Running:
    receiver.storage(workdir).mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv, env = receiver.command(workdir, port, pdu)
    with open(workdir / "receiver.log", "wb") as log:
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Running(receiver, proc, port, workdir)


def echo(run: Running) -> subprocess.CompletedProcess[str]:
    argv = ["echoscu", "-aet", CALLING_AE, "-aec", run.receiver.ae, "-to", "5", HOST, str(run.port)]
    return subprocess.run(argv, env=DCMTK_ENV, capture_output=True, text=True, check=False)


def wait_ready(run: Running) -> None:
    """Until a C-ECHO succeeds; ReceiverFailed if it exits, rejects or times out."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if run.proc.poll() is not None:
            raise ReceiverFailed(
                f"exited with status {run.proc.returncode}: "
                f"{last_error(run.log.read_text(errors='replace'))}"
            )
        done = echo(run)
        if done.returncode == 0:
            return
        out = done.stdout + done.stderr
        if "Association Rejected" in out:
            details = [line.removeprefix("F:").strip() for line in out.splitlines()[1:]]
            raise ReceiverFailed(f"C-ECHO association rejected ({'; '.join(details)})")
        time.sleep(0.2)
    raise ReceiverFailed(f"no C-ECHO answer within {READY_TIMEOUT_S:.0f} s")


def _alive(pid: int) -> bool:
    fields = stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def stop(run: Running, groups: Groups) -> None:
    """SIGTERM by PID, SIGKILL after STOP_TIMEOUT_S; then whatever of its process
    tree outlived it (a detached PostgreSQL, an orphaned worker) gets SIGTERM too."""
    tree = set().union(*trees(groups).values()) - {run.proc.pid}
    if run.proc.poll() is None:
        run.proc.send_signal(signal.SIGTERM)
        try:
            run.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            run.proc.kill()
            run.proc.wait()
            sys.stderr.write(f"bench: {run.receiver.name} ignored SIGTERM; killed\n")
    leftover = [pid for pid in tree if _alive(pid)]
    for pid in leftover:
        sys.stderr.write(f"bench: {run.receiver.name} left pid {pid} running; SIGTERM\n")
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while any(_alive(pid) for pid in leftover) and time.monotonic() < deadline:
        time.sleep(0.1)
