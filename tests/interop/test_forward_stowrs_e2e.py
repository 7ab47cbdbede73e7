"""End to end over DICOMweb: storescu -> dicom-gw -> STOW-RS -> Orthanc, configured
from the YAML file alone."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import psycopg

from tests.gateway import Gateway
from tests.interop.corpus import small_images, storescu
from tests.interop.orthanc import running_orthanc


def jobs_by_state(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT state, count(*) FROM forward_jobs GROUP BY state").fetchall()
    return {state: n for state, n in rows}


def stored_files(gateway: Gateway) -> dict[str, Path]:
    """SOP Instance UID -> the stored Part 10 file."""
    assert gateway.dsn is not None
    with psycopg.connect(gateway.dsn) as conn:
        rows = conn.execute("SELECT sop_instance_uid, file_path FROM instances").fetchall()
    return {uid: gateway.storage / path for uid, path in rows}


def wait_for_jobs(dsn: str, expected: dict[str, int], timeout: float = 60) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        states = jobs_by_state(dsn)
        if states == expected or time.monotonic() > deadline:
            return states
        time.sleep(0.2)


def test_received_instances_reach_orthanc_unchanged(
    gateway_factory: Callable[..., Gateway], dcmtk: Path, tmp_path: Path
) -> None:
    (tmp_path / "orthanc").mkdir()
    with running_orthanc(tmp_path / "orthanc") as orthanc:
        config = f"""
destinations:
  - name: cloud
    type: stowrs
    url: {orthanc.dicomweb_url}
    instances_per_request: 4
routes:
  - name: everything-to-cloud
    match: {{}}
    destinations: [cloud]
"""
        gateway = gateway_factory(config)
        gateway.start()
        items = small_images(tmp_path / "in", 10)
        run = storescu(dcmtk, [i.path for i in items], gateway.dimse_port)
        assert run.returncode == 0, run.stderr
        assert gateway.dsn is not None
        assert wait_for_jobs(gateway.dsn, {"done": 10}) == {"done": 10}, gateway.log()
        at_orthanc = orthanc.instances()
        files = stored_files(gateway)
        for item in items:
            # STOW-RS sends the stored Part 10 file; Orthanc 1.10 keeps it as sent.
            sent = orthanc.file(at_orthanc[item.sop_instance_uid])
            assert sent == files[item.sop_instance_uid].read_bytes()
