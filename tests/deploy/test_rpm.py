"""`make rpm` (rpm/dicom-gw.spec): the package builds from the committed tree and
holds the expected files, owners, modes, config files and scripts; its virtualenv
runs from /opt/dicom-gw."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tomllib
import uuid
from pathlib import Path
from typing import IO

import httpx
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomgw.config import SYSTEM_STATE_DIR
from tests.deploy.conftest import PREFIX, ROOT, require_tool
from tests.gateway import free_port

pytestmark = pytest.mark.slow

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
UNITS = [
    "dicom-gw.service",
    "dicom-gw.target",
    "dicom-gw-receiver.service",
    "dicom-gw-forwarder.service",
    "dicom-gw-api.service",
    "dicom-gw-tls-reload.path",
    "dicom-gw-tls-reload.service",
]
CONFIG = {
    "/etc/dicom-gw/dicom-gw.yaml": ("-rw-r-----", "root", "dicomgw"),
    "/etc/dicom-gw/dicom-gw.env": ("-rw-r-----", "root", "dicomgw"),
    "/etc/nginx/conf.d/dicom-gw.conf": ("-rw-r--r--", "root", "root"),
}
DIRECTORIES = {
    "/etc/dicom-gw": ("drwxr-x---", "root", "dicomgw"),
    "/var/lib/dicom-gw": ("drwxr-x--x", "dicomgw", "dicomgw"),
    "/var/lib/dicom-gw/tls": ("drwxr-x---", "dicomgw", "dicomgw"),
    "/var/lib/dicom-gw/acme": ("drwxr-xr-x", "dicomgw", "dicomgw"),
}
# Where the package may put files: nothing else on the system is its business.
TOP_LEVEL = (
    f"{PREFIX}",
    "/usr/bin/dicom-gw",
    "/usr/lib/systemd/system/dicom-gw",
    "/usr/share/doc/dicom-gw",
    "/etc/dicom-gw",
    "/etc/nginx/conf.d/dicom-gw.conf",
    "/var/lib/dicom-gw",
)
# The compiled core, the receiver's and the API's modules import from the package.
IMPORTS = "import sys, dicomgw._core, dicomgw.serve, dicomgw.api.app; print(sys.prefix)"
ATTRIBUTES = (
    "[%{FILENAMES}\t%{FILEMODES:perms}\t%{FILEUSERNAME}\t%{FILEGROUPNAME}\t%{FILEFLAGS:fflags}\n]"
)


def has_webui() -> bool:
    """Whether the committed tree (what make rpm packages) has the web UI."""
    return (
        subprocess.run(
            ["git", "-C", str(ROOT), "cat-file", "-e", "HEAD:webui/package.json"],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The RPM, built by `make rpm` into a temporary directory (payload compressed
    at zstd level 1: these tests read it, nobody ships it)."""
    require_tool("rpmbuild", "rpm")
    make = require_tool("make", "make")
    tmp = tmp_path_factory.mktemp("rpm")
    done = subprocess.run(
        [
            make,
            "-C",
            str(ROOT),
            "rpm",
            f"TOPDIR={tmp}/top",
            f"DIST={tmp}/dist",
            "RPMBUILD_FLAGS=--define '_binary_payload w1T.zstdio'",
        ],
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    built = sorted((tmp / "dist").glob("*.rpm"))
    assert [p.name for p in built] == [f"dicom-gw-{VERSION}-1.x86_64.rpm"]
    return built[0]


def rpm_query(package: Path, *options: str) -> str:
    done = subprocess.run(
        ["rpm", "-qp", *options, str(package)], capture_output=True, text=True, check=True
    )
    return done.stdout


def attributes(package: Path) -> dict[str, tuple[str, str, str, str]]:
    """path -> (mode, owner, group, flags: c = config, n = noreplace, d = doc)."""
    rows = [line.split("\t") for line in rpm_query(package, "--qf", ATTRIBUTES).splitlines()]
    return {path: (mode, owner, group, flags) for path, mode, owner, group, flags in rows}


def test_file_list(package: Path) -> None:
    files = rpm_query(package, "-l").splitlines()
    assert all(path.startswith(TOP_LEVEL) for path in files), [
        path for path in files if not path.startswith(TOP_LEVEL)
    ]
    expected = {
        f"{PREFIX}/bin/dicom-gw",
        f"{PREFIX}/bin/python3.11",
        f"{PREFIX}/pyvenv.cfg",
        f"{PREFIX}/share/dicom-gw/ffdhe2048.pem",
        "/usr/bin/dicom-gw",
        *(f"/usr/lib/systemd/system/{unit}" for unit in UNITS),
        "/usr/share/doc/dicom-gw/install.md",
        "/usr/share/doc/dicom-gw/tls.md",
        *CONFIG,
        *DIRECTORIES,
    }
    assert expected <= set(files), expected - set(files)
    site = f"{PREFIX}/lib/python3.11/site-packages"
    assert any(re.fullmatch(rf"{site}/dicomgw/_core\.cpython-311-.*\.so", p) for p in files)
    for module in ("granian", "asyncpg", "pgserver", "falcon", "dicomgw/api"):
        assert f"{site}/{module}/__init__.py" in files
    # Bytecode compiled at build time: /opt is read-only to the services.
    assert f"{site}/dicomgw/__pycache__/cli.cpython-311.pyc" in files
    webui = f"{PREFIX}/share/dicom-gw/webui/index.html"
    assert (webui in files) == has_webui()


def test_owners_modes_and_config_files(package: Path) -> None:
    found = attributes(package)
    for path, (mode, owner, group) in CONFIG.items():
        assert found[path] == (mode, owner, group, "cn"), path  # %config(noreplace)
    assert {path for path, row in found.items() if "c" in row[3]} == set(CONFIG)
    for path, (mode, owner, group) in DIRECTORIES.items():
        assert found[path][:3] == (mode, owner, group), path
    for unit in UNITS:
        assert found[f"/usr/lib/systemd/system/{unit}"][:3] == ("-rw-r--r--", "root", "root")
    app = {path: row for path, row in found.items() if path.startswith(PREFIX)}
    assert {(row[1], row[2]) for row in app.values()} == {("root", "root")}
    writable = [path for path, row in app.items() if row[0][8] == "w" and row[0][0] != "l"]
    assert writable == []
    assert found[f"{PREFIX}/bin/dicom-gw"][0] == "-rwxr-xr-x"


def scriptlets(package: Path) -> dict[str, str]:
    """'preinstall' etc. -> the script's text."""
    parts = re.split(
        r"^(\w+) scriptlet \(using /bin/sh\):\n", rpm_query(package, "--scripts"), flags=re.M
    )
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_scripts(package: Path) -> None:
    scripts = scriptlets(package)
    assert set(scripts) == {"preinstall", "postinstall", "preuninstall", "postuninstall"}
    for name, text in scripts.items():
        syntax = subprocess.run(
            ["sh", "-n"], input=text, capture_output=True, text=True, check=False
        )
        assert syntax.returncode == 0, f"{name}: {syntax.stderr}"

    pre = scripts["preinstall"]
    assert "getent group dicomgw >/dev/null || groupadd -r dicomgw" in pre
    assert "getent passwd dicomgw >/dev/null" in pre
    assert "useradd -r -g dicomgw -d /var/lib/dicom-gw -s /sbin/nologin" in pre

    post = scripts["postinstall"]
    assert "systemctl daemon-reload" in post
    assert "openssl req -x509" in post  # a certificate for nginx to start with
    # Migrations only on upgrade, and only if the configuration migrates at start.
    assert '[ "$1" -ge 2 ]' in post
    assert 'grep -q "^  upgrade_on_start: true"' in post
    assert f"{PREFIX}/bin/dicom-gw db upgrade" in post

    preun = scripts["preuninstall"]
    assert '[ "$1" -eq 0 ]' in preun  # erase only, not upgrade
    assert "disable --now" in preun
    postun = scripts["postuninstall"]
    assert '[ "$1" -ge 1 ]' in postun  # upgrade only
    assert "try-restart" in postun
    roles = (
        "dicom-gw.service",
        *(u for u in UNITS if u.startswith("dicom-gw-") and "tls" not in u),
    )
    for unit in roles:
        assert unit in preun
        assert unit in postun
    assert "dicom-gw-tls-reload.path" in preun
    assert "enable --now dicom-gw-tls-reload.path" in scripts["postinstall"]


def test_requires_only_what_the_virtualenv_does_not_hold(package: Path) -> None:
    requires = {line.split()[0] for line in rpm_query(package, "--requires").splitlines()}
    assert "/usr/bin/python3.11" in requires
    # No automatic requirements on the wheels' private libraries.
    assert not [r for r in requires if ".so" in r]
    provides = {line.split()[0] for line in rpm_query(package, "--provides").splitlines()}
    assert provides == {"dicom-gw", "dicom-gw(x86-64)"}


def require_root() -> str:
    """unshare, for a private mount namespace (which needs root)."""
    unshare = require_tool("unshare", "util-linux")
    if os.geteuid() != 0:
        message = "mounting in a private namespace needs root"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return unshare


@pytest.fixture(scope="module")
def installed(package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package installed (without its scripts) into a scratch root."""
    root = tmp_path_factory.mktemp("installed")
    subprocess.run(
        ["rpm", "-i", "--root", str(root), "--nodeps", "--noscripts", str(package)],
        capture_output=True,
        check=True,
        timeout=300,
    )
    return root


def test_the_virtualenv_runs_at_opt_dicom_gw(installed: Path) -> None:
    """Seen at /opt/dicom-gw in a private mount namespace: the entry point's
    shebang, sys.prefix and the packaged defaults."""
    unshare = require_root()
    root = installed
    assert (
        (root / PREFIX.lstrip("/") / "bin" / "dicom-gw")
        .read_text()
        .startswith(f"#!{PREFIX}/bin/python\n")
    )
    script = f"""
        set -e
        mount -t tmpfs none /opt
        mkdir {PREFIX}
        mount --bind {root}{PREFIX} {PREFIX}
        {PREFIX}/bin/dicom-gw version
        {PREFIX}/bin/python -c '{IMPORTS}'
        env -u DICOMGW_CONFIG -u DICOMGW_STATE_DIR {PREFIX}/bin/dicom-gw config show \
            | grep '^state_dir:'
        {PREFIX}/bin/dicom-gw config check {root}/etc/dicom-gw/dicom-gw.yaml
    """
    done = subprocess.run(
        [unshare, "--mount", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"dicom-gw {VERSION}",
        PREFIX,
        "state_dir: /var/lib/dicom-gw",
        f"{root}/etc/dicom-gw/dicom-gw.yaml: ok",
    ]


def test_installed_gateway_serves_on_a_read_only_system(
    package: Path, installed: Path, workdir: Path
) -> None:
    """`dicom-gw serve` from the package, as the unit runs it: as dicomgw (the
    package's own %pre creates the user), on a file system read-only but for
    /var/lib/dicom-gw (ProtectSystem=strict, ReadWritePaths), with the embedded
    PostgreSQL from the wheel; READY=1 once serving and STOPPING=1 on SIGTERM
    (Type=notify), the packaged web UI served, a C-ECHO answered."""
    unshare = require_root()
    subprocess.run(["sh", "-c", scriptlets(package)["preinstall"]], check=True, timeout=60)
    user = pwd.getpwnam("dicomgw")
    state = workdir / f"rpm-state-{uuid.uuid4().hex[:8]}"
    state.mkdir(mode=0o751)
    os.chown(state, user.pw_uid, user.pw_gid)
    config = state / "dicom-gw.yaml"
    shutil.copy(installed / "etc/dicom-gw/dicom-gw.yaml", config)
    os.chown(config, 0, user.pw_gid)
    dimse_port, api_port = free_port(), free_port()
    notify_name = f"dicomgw-test-{uuid.uuid4().hex}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DICOMGW_", "PYTHON"))},
        "DICOMGW_CONFIG": f"{SYSTEM_STATE_DIR}/dicom-gw.yaml",
        "DICOMGW_DIMSE__HOST": "127.0.0.1",
        "DICOMGW_DIMSE__PORT": str(dimse_port),
        "DICOMGW_API__PORT": str(api_port),
        "DICOMGW_ADMIN_PASSWORD": "test-admin-password",
        # NOTE: a test machine's disk may be over the 90% default.
        "DICOMGW_STORAGE__HIGH_WATERMARK_PERCENT": "100",
        "DICOMGW_STORAGE__LOW_WATERMARK_PERCENT": "99.9",
        "NOTIFY_SOCKET": f"@{notify_name}",
    }
    script = f"""
        set -e
        mount --bind /tmp /tmp
        mount -t tmpfs none /opt
        mkdir {PREFIX}
        mount --bind {installed}{PREFIX} {PREFIX}
        mount -o remount,bind,ro {PREFIX}
        mount -t tmpfs none /var/lib
        mkdir {SYSTEM_STATE_DIR}
        mount --bind {state} {SYSTEM_STATE_DIR}
        mount -o remount,bind,ro /
        exec setpriv --reuid=dicomgw --regid=dicomgw --init-groups {PREFIX}/bin/dicom-gw serve
    """
    log = (state.parent / f"{state.name}.log").open("w+")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(f"\0{notify_name}")
        notify.settimeout(120)
        proc = subprocess.Popen(
            [unshare, "--mount", "sh", "-c", script], env=env, stdout=log, stderr=log
        )
        try:
            assert notify.recv(4096) == b"READY=1", _tail(log)
            ui = httpx.get(f"http://127.0.0.1:{api_port}/", timeout=30)
            assert ui.status_code == 200
            assert (installed / PREFIX.lstrip("/") / "share/dicom-gw/webui/index.html").exists()
            assert (
                ui.text
                == (installed / PREFIX.lstrip("/") / "share/dicom-gw/webui/index.html").read_text()
            )
            ready = httpx.get(f"http://127.0.0.1:{api_port}/api/v1/health/ready", timeout=30)
            assert ready.status_code == 200, ready.text
            ae = AE(ae_title="RPMTEST")
            ae.add_requested_context(Verification)
            assoc = ae.associate("127.0.0.1", dimse_port, ae_title="DICOMGW")
            assert assoc.is_established
            assert assoc.send_c_echo().Status == 0x0000
            assoc.release()
            proc.send_signal(signal.SIGTERM)
            assert notify.recv(4096) == b"STOPPING=1"
            assert proc.wait(60) == 0, _tail(log)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
            log.close()
    # What it wrote, it wrote in the state directory.
    assert (state / "pg" / "PG_VERSION").exists()
    assert (state / "storage").is_dir()


def _tail(log: IO[str]) -> str:
    log.flush()
    log.seek(0)
    return log.read()[-3000:]
