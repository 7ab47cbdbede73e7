"""The systemd units in deploy/systemd: systemd-analyze verify passes on each, and
the role units share one hardening policy (only DIMSE listeners may bind port 104)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.deploy.conftest import DEPLOY, PREFIX, require_tool, substituted

UNITS = DEPLOY / "systemd"
SERVICES = [
    "dicom-gw-receiver.service",
    "dicom-gw-forwarder.service",
    "dicom-gw-api.service",
    "dicom-gw.service",
]
ROLE = {
    "dicom-gw-receiver.service": "receiver",
    "dicom-gw-forwarder.service": "forwarder",
    "dicom-gw-api.service": "api",
    "dicom-gw.service": "serve",
}
LISTENS_DIMSE = {"dicom-gw-receiver.service", "dicom-gw.service"}


def parse(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values (a key may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def hardening(path: Path) -> list[str]:
    """The unit's hardening block, from its marker comment to [Install]."""
    text = path.read_text()
    return text[text.index("# Hardening") : text.index("[Install]")].splitlines()


@pytest.fixture(scope="module")
def verifiable(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Copies of the units whose ExecStart points at an executable that exists
    (verify checks it) under a temporary prefix instead of /opt/dicom-gw."""
    tmp = tmp_path_factory.mktemp("systemd")
    (tmp / "prefix" / "bin").mkdir(parents=True)
    (tmp / "prefix" / "bin" / "dicom-gw").symlink_to("/bin/true")
    units = tmp / "units"
    units.mkdir()
    for unit in UNITS.iterdir():
        text = unit.read_text()
        if f"{PREFIX}/bin/" in text:
            text = substituted(text, {f"{PREFIX}/bin/": f"{tmp}/prefix/bin/"})
        (units / unit.name).write_text(text)
    return units


def verify(*units: Path) -> subprocess.CompletedProcess[str]:
    analyze = require_tool("systemd-analyze", "systemd")
    return subprocess.run(
        [analyze, "verify", "--man=no", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    "name",
    [*SERVICES, "dicom-gw.target", "dicom-gw-tls-reload.path", "dicom-gw-tls-reload.service"],
)
def test_verify_passes_without_a_warning(verifiable: Path, name: str) -> None:
    done = verify(verifiable / name)
    assert done.returncode == 0, done.stderr
    assert done.stdout + done.stderr == ""


@pytest.mark.parametrize("name", SERVICES)
def test_exposure_is_low(verifiable: Path, name: str) -> None:
    """systemd's own score of the sandbox (0 best, 10 none); 1.7-1.9 when written.
    It goes up if hardening is dropped."""
    analyze = require_tool("systemd-analyze", "systemd")
    done = subprocess.run(
        [analyze, "security", "--offline=yes", str(verifiable / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout)
    assert found, done.stdout + done.stderr
    assert float(found.group(1)) <= 2.0, done.stdout


def test_verify_reports_a_broken_unit(verifiable: Path) -> None:
    """verify exits 0 on unknown keys and bad values: the test above relies on its
    output, which this shows is not always empty."""
    broken = verifiable / "broken.service"
    broken.write_text(
        substituted(
            (verifiable / "dicom-gw-api.service").read_text(),
            {"ProtectSystem=strict": "ProtectSytem=strict", "Restart=on-failure": "Restart=x"},
        )
    )
    done = verify(broken)
    assert "Unknown key" in done.stderr
    assert "restart specifier" in done.stderr
    broken.unlink()


@pytest.mark.parametrize("name", SERVICES)
def test_service_runs_its_role_as_dicomgw_with_notify(name: str) -> None:
    service = parse(UNITS / name)["Service"]
    assert service["ExecStart"] == [
        f"{PREFIX}/bin/dicom-gw {ROLE[name]} --config /etc/dicom-gw/dicom-gw.yaml"
    ]
    assert service["User"] == service["Group"] == ["dicomgw"]
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["Restart"] == ["on-failure"]
    assert service["KillMode"] == ["mixed"]
    assert service["EnvironmentFile"] == ["-/etc/dicom-gw/dicom-gw.env"]
    assert int(service["TimeoutStopSec"][0]) >= 60
    assert int(service["LimitNOFILE"][0]) >= 65536


@pytest.mark.parametrize("name", SERVICES)
def test_restarts_never_give_up_and_each_role_is_bounded(name: str) -> None:
    unit = parse(UNITS / name)
    assert unit["Unit"]["StartLimitIntervalSec"] == ["0"]
    service = unit["Service"]
    assert service["Restart"] == ["on-failure"]
    for key in ("MemoryHigh", "MemoryMax", "TasksMax"):
        assert service[key] and service[key][0] not in ("", "infinity"), key


def test_every_service_has_the_same_hardening() -> None:
    blocks = {name: hardening(UNITS / name) for name in SERVICES}
    first = blocks[SERVICES[0]]
    assert all(block == first for block in blocks.values())
    service = parse(UNITS / SERVICES[0])["Service"]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ReadWritePaths": "/var/lib/dicom-gw",
        "PrivateTmp": "yes",
    }.items():
        assert service[key] == [value]


@pytest.mark.parametrize("name", SERVICES)
def test_only_dimse_listeners_may_bind_low_ports(name: str) -> None:
    service = parse(UNITS / name)["Service"]
    if name in LISTENS_DIMSE:
        assert service["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
        assert service["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    else:
        assert service["CapabilityBoundingSet"] == [""]
        assert "AmbientCapabilities" not in service


def test_split_roles_and_all_in_one_exclude_each_other() -> None:
    target = parse(UNITS / "dicom-gw.target")
    roles = [name for name in SERVICES if name != "dicom-gw.service"]
    assert target["Install"]["Also"] == [" ".join(roles)]
    for name in roles:
        unit = parse(UNITS / name)
        assert unit["Unit"]["PartOf"] == ["dicom-gw.target"]
        assert unit["Install"]["WantedBy"] == ["dicom-gw.target"]
    conflicts = parse(UNITS / "dicom-gw.service")["Unit"]["Conflicts"][0].split()
    assert sorted(conflicts) == sorted(["dicom-gw.target", *roles])
