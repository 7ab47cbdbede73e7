"""Orthanc as a Query/Retrieve SCU of dicom-gw: its REST API's /modalities/{id}/query
(C-FIND) and /queries/{id}/retrieve (C-MOVE into Orthanc itself, which dicom-gw
reaches as an ordinary DIMSE destination)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.gateway import Gateway
from tests.interop.corpus import send_with_pynetdicom, small_images
from tests.interop.orthanc import running_orthanc

pytestmark = pytest.mark.slow  # an Orthanc and a gateway of its own


def test_orthanc_finds_and_moves_from_dicom_gw(
    gateway_factory: Callable[..., Gateway], tmp_path: Path
) -> None:
    items = small_images(tmp_path / "ct", 3, "CT")
    gateway = gateway_factory(DICOMGW_DIMSE__QUERY_AE_TITLES="[ORTHANC]")
    modalities = {"DicomModalities": {"gw": ["DICOMGW", "127.0.0.1", gateway.dimse_port]}}
    (tmp_path / "orthanc").mkdir()
    with running_orthanc(tmp_path / "orthanc", config=modalities) as orthanc:
        gateway.config_yaml = (
            "destinations:\n"
            f"  - {{name: orthanc, type: dimse, ae_title: ORTHANC, host: 127.0.0.1, "
            f"port: {orthanc.dicom_port}}}\n"
        )
        gateway.start()
        outcomes = send_with_pynetdicom(items, gateway.dimse_port)
        assert set(outcomes.values()) == {0}, outcomes
        api = httpx.Client(base_url=orthanc.http_url, timeout=60)
        # C-FIND, study level.
        query = api.post(
            "/modalities/gw/query",
            json={"Level": "Study", "Query": {"PatientID": "IOP-0001", "StudyDate": ""}},
        )
        assert query.status_code == 200, query.text
        path = query.json()["Path"]
        answers = api.get(f"{path}/answers", params={"expand": ""}).json()
        assert [a["0020,000d"]["Value"] for a in answers] == [items[0].study_instance_uid]
        assert answers[0]["0008,0020"]["Value"] == "20240229"
        # C-MOVE of that study into Orthanc.
        moved = api.post(
            f"{path}/answers/0/retrieve", json={"TargetAet": "ORTHANC", "Synchronous": True}
        )
        assert moved.status_code == 200, moved.text + orthanc.log.read_text()[-2000:]
        got = {
            api.get(f"/instances/{i}/simplified-tags").json()["SOPInstanceUID"]
            for i in api.get("/instances").json()
        }
        assert got == {item.sop_instance_uid for item in items}
