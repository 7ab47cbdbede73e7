"""The API load test (loadtest/) stays runnable: run.py with a small index, a few
users and a few seconds, against a real gateway (on the session's PostgreSQL, to
save an initdb); no request may fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Every request name the locustfile uses.
NAMES = {
    "POST /auth/login",
    "GET /metrics",
    "GET /studies (patient_name)",
    "GET /studies (study_date)",
    "GET /studies (modality)",
    "GET /studies (accession_number)",
    "GET /studies (source_ae)",
    "GET /studies (newest)",
    "GET /studies/{uid}",
    "GET /studies/{uid}/series/{uid}/instances",
    *(f"GET /stats/volume ({span})" for span in ("1d", "7d", "30d", "90d")),
}
USERS = 4


def test_run_reports_every_request_and_no_failure(workdir: Path, empty_db: str) -> None:
    out = workdir / "loadtest.json"
    done = subprocess.run(
        [
            sys.executable, str(REPO / "loadtest" / "run.py"), "--instances", "2000",
            "--users", str(USERS), "--spawn-rate", str(USERS), "--duration", "5",
            "--wait", "0.05,0.2", "--dsn", empty_db, "--workdir", str(workdir / "loadtest"),
            "--out", str(out),
        ],
        env=os.environ | {"LOADTEST_SCRAPE_S": "1"}, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["dataset"]["instances"] >= 2000
    endpoints = {e["name"]: e for e in results["endpoints"]}
    assert set(endpoints) <= NAMES
    assert results["failures"] == []
    assert all(e["failures"] == 0 for e in endpoints.values())
    # One scraper; every other user logged in once, then searched and opened studies.
    assert endpoints["POST /auth/login"]["requests"] == USERS - 1
    assert endpoints["GET /metrics"]["requests"] >= 1
    assert endpoints["GET /studies/{uid}"]["requests"] >= 1
    assert results["total"]["requests"] >= 20
    assert "| `GET /studies/{uid}` |" in done.stdout
