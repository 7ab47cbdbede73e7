"""Fixtures of the deployment tests: the tools they drive (systemd-analyze, nginx,
rpmbuild), found on the PATH or a clear skip, which fails under CI=true."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PREFIX = "/opt/dicom-gw"
"""Where the package installs the application (a virtualenv)."""


def require_tool(name: str, package: str) -> str:
    """The tool's path; skips without it, but fails under CI=true: a CI job that
    silently skipped the deployment tests would report green."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        message = f"'{name}' not found: install the Debian package '{package}'"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return found


def substituted(text: str, replacements: dict[str, str]) -> str:
    """``text`` with each key replaced; a key that does not occur is an error, so
    that a test copy cannot silently drift from the file it is made from."""
    for old, new in replacements.items():
        if old not in text:
            raise AssertionError(f"{old!r} not found: the test's substitutions are stale")
        text = text.replace(old, new)
    return text
