"""Run the real ``dicom-gw`` command in a subprocess, as an operator would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CLI = [sys.executable, "-m", "dicomgw.cli"]


def cli_env(state_dir: Path | None = None, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMGW_")}
    env["DICOMGW_LOGGING__JSON"] = "true"
    if state_dir is not None:
        env["DICOMGW_STATE_DIR"] = str(state_dir)
    env.update(overrides)
    return env


def run_cli(
    *args: str, env: dict[str, str], stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
