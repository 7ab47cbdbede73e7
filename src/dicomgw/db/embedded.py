"""The embedded PostgreSQL: a private server in ``<state_dir>/pg`` when no DSN is set.

Binaries come from the ``pgserver`` wheel (PostgreSQL built for manylinux) or,
failing that, from a PostgreSQL installed on the system. The server listens on a
Unix socket only, in a directory that only its owner can enter, so no TCP port
is opened and no password is needed.

PostgreSQL refuses to run as root; when dicom-gw runs as root (a developer's
shell, CI) the server runs as ``database.embedded_run_as`` (created as a
system user if missing), which owns the data directory.

The process that owns the server restarts it if it dies (:meth:`keep_running`):
the OOM killer or a crash must not leave the gateway refusing every C-STORE
until someone restarts it by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import hashlib
import logging
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

from dicomgw.errors import DatabaseError

log = logging.getLogger(__name__)

PORT = 5432  # names the socket file only: no TCP listener
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 10.0
CHECK_ALIVE_S = 2.0
# A server that does not come back (a full disk, shared memory still held by the
# dead one's backends) is tried again after 2, 4, ... up to 60 s.
RESTART_BACKOFF_MAX_S = 60.0
# sockaddr_un.sun_path is 108 bytes including the NUL.
_MAX_SOCKET_PATH = 107


def find_bindir() -> Path:
    """Where initdb/pg_ctl/postgres are: the pgserver wheel first, then the system."""
    spec = find_spec("pgserver")
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
        if (candidate / "pg_ctl").exists():
            return candidate
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidate = Path(out.stdout.strip())
        if (candidate / "pg_ctl").exists():
            return candidate
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=_major_version)
    if debian:
        return debian[-1].parent
    raise DatabaseError(
        "no PostgreSQL binaries found for the embedded database: install the 'pgserver' "
        "Python package (a dependency of dicom-gw) or Debian's 'postgresql', "
        "or set database.dsn to an existing server"
    )


def _major_version(pg_ctl: Path) -> int:
    try:
        return int(pg_ctl.parent.parent.name)
    except ValueError:
        return 0


@dataclass(frozen=True)
class RunAs:
    """The system user the server runs as (None: the current user)."""

    user: str | None
    uid: int
    gid: int


def _run_as(user: str) -> RunAs:
    if os.geteuid() != 0:
        return RunAs(None, os.geteuid(), os.getegid())
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        _create_system_user(user)
        entry = pwd.getpwnam(user)
    return RunAs(user, entry.pw_uid, entry.pw_gid)


def _create_system_user(user: str) -> None:
    log.info("creating system user for the embedded PostgreSQL", extra={"user": user})
    nologin = "/usr/sbin/nologin" if Path("/usr/sbin/nologin").exists() else "/bin/false"
    done = subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home", "--shell", nologin, user],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise DatabaseError(
            f"dicom-gw runs as root, and PostgreSQL refuses to; creating the system user "
            f"'{user}' (database.embedded_run_as) failed: {done.stderr.strip()}"
        )


def _check_traversable(path: Path, who: RunAs) -> None:
    """Every parent of the data directory must be searchable by the server's user."""
    if who.user is None:
        return
    groups = {g.gr_gid for g in grp.getgrall() if who.user in g.gr_mem} | {who.gid}
    for parent in path.parents:
        st = parent.stat()
        mode = st.st_mode
        ok = (
            mode & stat.S_IXOTH
            or (st.st_uid == who.uid and mode & stat.S_IXUSR)
            or (st.st_gid in groups and mode & stat.S_IXGRP)
        )
        if not ok:
            raise DatabaseError(
                f"the embedded PostgreSQL runs as user '{who.user}', who cannot enter "
                f"'{parent}' (mode {stat.filemode(mode)}); put state_dir elsewhere or "
                f"allow search on that directory (chmod o+x)"
            )


def _share_state_dir(state_dir: Path, who: RunAs) -> None:
    """Let the server's user enter the state dir (0750) through its group.

    NOTE: only the state dir, which is ours; parents above it are never changed.
    """
    if who.user is None:
        return
    st = state_dir.stat()
    if st.st_uid != os.geteuid() or st.st_gid == who.gid:
        return
    os.chown(state_dir, -1, who.gid)
    state_dir.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXGRP)


def _socket_dir(data_dir: Path) -> Path:
    """A short path for the socket: inside the data dir when it fits, else in /tmp."""
    own = data_dir / "run"
    if len(str(own / f".s.PGSQL.{PORT}")) <= _MAX_SOCKET_PATH:
        return own
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"dicomgw-pg-{digest}"


@dataclass(frozen=True)
class PostmasterInfo:
    """postmaster.pid: pid, data dir, start time, port, socket dir, listen address, ..., status."""

    pid: int
    socket_dir: Path
    status: str

    @classmethod
    def read(cls, data_dir: Path) -> PostmasterInfo | None:
        try:
            lines = (data_dir / "postmaster.pid").read_text().splitlines()
        except (FileNotFoundError, PermissionError):
            return None
        if len(lines) < 5 or not lines[0].strip().isdigit():
            return None
        status = lines[7].strip() if len(lines) > 7 else ""
        return cls(int(lines[0]), Path(lines[4].strip()), status)

    def is_alive(self) -> bool:
        try:
            stat_line = Path(f"/proc/{self.pid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return False
        # Field 3 is the state; a zombie has exited and only waits to be reaped.
        return stat_line.rpartition(")")[2].split()[0] != "Z"

    def wait_exit(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.is_alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True


class EmbeddedPostgres:
    """Starts, attaches to and stops the private server of one state directory.

    ``start(adopt=True)`` is for the process that owns the state directory
    (``serve``, holding its lock): a server found running is an orphan of a
    crashed owner and is taken over, and stopped at exit. ``adopt=False`` (the
    CLI's one-shot commands) uses a running server as it is and stops only a
    server it started itself.
    """

    def __init__(self, data_dir: Path, run_as: str) -> None:
        self.data_dir = data_dir
        self._run_as_name = run_as
        self.owned = False
        self._dsn: str | None = None
        self._postmaster: PostmasterInfo | None = None
        # A restart (in a thread) and stop() never run pg_ctl at the same time.
        self._control = threading.Lock()
        self.restarts = 0

    @property
    def dsn(self) -> str:
        if self._dsn is None:
            raise DatabaseError("the embedded PostgreSQL is not started")
        return self._dsn

    def start(self, *, adopt: bool) -> str:
        who = _run_as(self._run_as_name)
        bindir = find_bindir()
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _share_state_dir(self.data_dir.parent, who)
        _check_traversable(self.data_dir, who)
        if who.user is not None:
            os.chown(self.data_dir, who.uid, who.gid)
        running = PostmasterInfo.read(self.data_dir)
        if running is not None and running.is_alive():
            log.info(
                "embedded PostgreSQL already running",
                extra={"pid": running.pid, "data_dir": str(self.data_dir), "adopted": adopt},
            )
            self.owned = adopt
            self._postmaster = running
            self._dsn = _dsn(running.socket_dir)
            return self._dsn
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(bindir, who)
        sock = _socket_dir(self.data_dir)
        sock.mkdir(mode=0o700, exist_ok=True)
        if who.user is not None:
            os.chown(sock, who.uid, who.gid)
        log_file = self.data_dir / "log" / "postgres.log"
        log_file.parent.mkdir(exist_ok=True)
        if who.user is not None:
            os.chown(log_file.parent, who.uid, who.gid)
        options = f"-c listen_addresses='' -k {sock} -p {PORT} -c unix_socket_permissions=0700"
        self._run(
            who,
            [
                str(bindir / "pg_ctl"),
                "start",
                "-D",
                str(self.data_dir),
                "-l",
                str(log_file),
                "-w",
                "-t",
                str(START_TIMEOUT_S),
                "-o",
                options,
            ],
            what=f"starting the embedded PostgreSQL (its log: {log_file})",
        )
        self.owned = True
        self._postmaster = PostmasterInfo.read(self.data_dir)
        self._dsn = _dsn(sock)
        log.info("embedded PostgreSQL started", extra={"data_dir": str(self.data_dir)})
        return self._dsn

    def stop(self) -> None:
        """Stop the server if this process owns it (fast shutdown: clean, no recovery)."""
        with self._control:
            self._stop()

    def _stop(self) -> None:
        if not self.owned:
            return
        who = _run_as(self._run_as_name)
        running = PostmasterInfo.read(self.data_dir)
        self._run(
            who,
            [str(find_bindir() / "pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast", "-w"],
            what="stopping the embedded PostgreSQL",
        )
        # pg_ctl returns once postmaster.pid is gone; the process may still be exiting.
        if running is not None and not running.wait_exit(STOP_TIMEOUT_S):
            log.warning("embedded PostgreSQL still exiting", extra={"pid": running.pid})
        self.owned = False
        log.info("embedded PostgreSQL stopped", extra={"data_dir": str(self.data_dir)})

    async def keep_running(
        self, on_restart: Callable[[], None] = lambda: None, *, check_s: float = CHECK_ALIVE_S
    ) -> None:
        """While this process owns the server, start it again whenever it has died.

        PostgreSQL recovers from its WAL on start, so every committed row is
        back; C-STOREs in the meantime are answered 0xA700 (nothing is
        acknowledged without its index row) and the peers send them again.
        """
        delay = check_s
        while True:
            await asyncio.sleep(delay)
            postmaster = self._postmaster
            if not self.owned or postmaster is None or postmaster.is_alive():
                delay = check_s
                continue
            log.error(
                "embedded PostgreSQL exited unexpectedly: restarting it",
                extra={"pid": postmaster.pid, "log": str(self.data_dir / "log" / "postgres.log")},
            )
            try:
                await asyncio.to_thread(self._restart)
            except (DatabaseError, OSError) as exc:
                delay = min(max(delay, check_s) * 2, RESTART_BACKOFF_MAX_S)
                log.error(
                    "embedded PostgreSQL did not start again",
                    extra={"error": str(exc), "retry_in_s": delay},
                )
                continue
            delay = check_s
            self.restarts += 1
            on_restart()
            log.warning(
                "embedded PostgreSQL restarted",
                extra={"pid": self._postmaster.pid if self._postmaster else None},
            )

    def _restart(self) -> None:
        with self._control:
            if self.owned:  # not stopped meanwhile
                self.start(adopt=True)

    def _initdb(self, bindir: Path, who: RunAs) -> None:
        log.info("initialising the embedded PostgreSQL", extra={"data_dir": str(self.data_dir)})
        self._run(
            who,
            [
                str(bindir / "initdb"),
                "-D",
                str(self.data_dir),
                "--username=postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
            ],
            what="initialising the embedded PostgreSQL",
        )

    @staticmethod
    def _run(who: RunAs, argv: list[str], what: str) -> None:
        kwargs: dict[str, object] = {}
        if who.user is not None:
            kwargs = {"user": who.uid, "group": who.gid, "extra_groups": []}
        with contextlib.chdir("/"):
            done = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().splitlines()
            raise DatabaseError(f"{what} failed: {detail[-1] if detail else 'no output'}")


def _dsn(socket_dir: Path) -> str:
    return f"postgresql://postgres@/postgres?host={socket_dir}&port={PORT}"
