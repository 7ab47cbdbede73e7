"""QIDO-RS (PS3.18 10.6) against a running gateway, with dicomweb-client as the
client: every search level, PS3.4 matching (values, wildcards, ranges, UID
lists, fuzzy names), paging with the server's Warning, bad queries named, who
may search. Each test makes studies of its own patient and searches within it."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import generate_uid

from tests.api.conftest import Client
from tests.gateway import Gateway
from tests.integration.scu import make_dataset, send


@pytest.fixture
def token(user_factory: Callable[[str], tuple[Client, str]]) -> Iterator[str]:
    """An API token of a new viewer: searching is reading."""
    client, _ = user_factory("viewer")
    made = client.post("/me/tokens", json={"name": "qido", "expires_in_days": 1})
    assert made.status_code == 201, made.text
    yield made.json()["token"]


def dicomweb(gateway: Gateway, token: str) -> DICOMwebClient:
    return DICOMwebClient(
        url=f"http://127.0.0.1:{gateway.api_port}/dicom-web",
        headers={"Authorization": f"Bearer {token}"},
    )


@pytest.fixture
def patient(session_gateway: Gateway) -> tuple[str, list[str], list[str]]:
    """A patient of this test: two studies (2 series of 2 CT, and 1 MR), sent over
    DIMSE; (PatientID, study UIDs, series UIDs)."""
    patient_id = f"QIDO-{uuid.uuid4().hex[:10]}"
    studies, series = [generate_uid(), generate_uid()], [generate_uid() for _ in range(3)]
    datasets = []
    for n, (study, one_series, modality, date) in enumerate(
        [
            (studies[0], series[0], "CT", "20240105"),
            (studies[0], series[0], "CT", "20240105"),
            (studies[0], series[1], "CT", "20240105"),
            (studies[0], series[1], "CT", "20240105"),
            (studies[1], series[2], "MR", "20240320"),
        ]
    ):
        ds = make_dataset(
            study_uid=study, series_uid=one_series, patient_name="SMITH^ANNA", instance_number=n
        )
        ds.PatientID, ds.Modality, ds.StudyDate = patient_id, modality, date
        ds.AccessionNumber = f"ACC{n // 4}"
        datasets.append(ds)
    send(session_gateway.dimse_port, datasets)
    return patient_id, studies, series


def values(results: list[dict[str, object]], tag: str) -> list[object]:
    return [r[tag]["Value"][0] for r in results if "Value" in r[tag]]  # type: ignore[index]


def test_studies_series_and_instances(
    session_gateway: Gateway, token: str, patient: tuple[str, list[str], list[str]]
) -> None:
    patient_id, studies, series = patient
    client = dicomweb(session_gateway, token)
    found = client.search_for_studies(search_filters={"PatientID": patient_id})
    assert values(found, "0020000D") == studies
    first = found[0]
    assert first["00100010"]["Value"] == [{"Alphabetic": "SMITH^ANNA"}]
    assert first["00201206"]["Value"] == [2]  # NumberOfStudyRelatedSeries
    assert first["00201208"]["Value"] == [4]  # NumberOfStudyRelatedInstances
    assert first["00080061"]["Value"] == ["CT"]  # ModalitiesInStudy
    assert first["00081190"]["Value"][0].endswith(f"/dicom-web/studies/{studies[0]}")
    in_study = client.search_for_series(study_instance_uid=studies[0])
    assert sorted(values(in_study, "0020000E")) == sorted(series[:2])
    instances = client.search_for_instances(
        study_instance_uid=studies[0], series_instance_uid=series[1]
    )
    assert len(instances) == 2
    assert all(i["00081190"]["Value"][0].count("/instances/") == 1 for i in instances)
    everywhere = client.search_for_instances(search_filters={"PatientID": patient_id})
    assert len(everywhere) == 5


@pytest.mark.parametrize(
    ("filters", "studies"),
    [
        ({"StudyDate": "20240105"}, [0]),
        ({"StudyDate": "20240301-"}, [1]),
        ({"StudyDate": "-20240131"}, [0]),
        ({"StudyDate": "20240101-20241231"}, [0, 1]),
        ({"ModalitiesInStudy": "MR"}, [1]),
        ({"AccessionNumber": "ACC?"}, [0, 1]),
        ({"AccessionNumber": "ACC1"}, [1]),
        ({"PatientName": "smith*"}, [0, 1]),
        ({"PatientName": "*ANN*"}, [0, 1]),
        ({"PatientName": "JONES*"}, []),
    ],
)
def test_matching(
    session_gateway: Gateway,
    token: str,
    patient: tuple[str, list[str], list[str]],
    filters: dict[str, str],
    studies: list[int],
) -> None:
    patient_id, uids, _ = patient
    client = dicomweb(session_gateway, token)
    found = client.search_for_studies(search_filters={"PatientID": patient_id} | filters)
    assert values(found, "0020000D") == [uids[n] for n in studies]


def test_uid_lists_and_fuzzy_names(
    session_gateway: Gateway, token: str, patient: tuple[str, list[str], list[str]]
) -> None:
    patient_id, uids, _ = patient
    client = dicomweb(session_gateway, token)
    listed = client.search_for_studies(search_filters={"StudyInstanceUID": ",".join(uids)})
    assert values(listed, "0020000D") == uids
    fuzzy = client.search_for_studies(
        search_filters={"PatientID": patient_id, "PatientName": "ann"}, fuzzymatching=True
    )
    assert values(fuzzy, "0020000D") == uids


def test_paging_and_the_servers_warning(
    session_gateway: Gateway, token: str, patient: tuple[str, list[str], list[str]]
) -> None:
    patient_id, _, _ = patient
    url = f"http://127.0.0.1:{session_gateway.api_port}/dicom-web/instances"
    headers = {"Authorization": f"Bearer {token}"}
    pages = [
        httpx.get(url, params={"PatientID": patient_id, "limit": 2, "offset": n}, headers=headers)
        for n in (0, 2, 4)
    ]
    assert [len(p.json()) for p in pages] == [2, 2, 1]
    uids = [i["00080018"]["Value"][0] for p in pages for i in p.json()]
    assert len(set(uids)) == 5
    # A limit the client chose is no cut of the server's: no Warning.
    assert "warning" not in pages[0].headers
    capped = httpx.get(url, params={"PatientID": patient_id, "limit": 5000}, headers=headers)
    assert capped.status_code == 200
    assert "warning" not in capped.headers  # 5 matches, within the server's 1000


def test_bad_queries_are_named(session_gateway: Gateway, token: str) -> None:
    url = f"http://127.0.0.1:{session_gateway.api_port}/dicom-web/studies"
    headers = {"Authorization": f"Bearer {token}"}
    for params, key in [
        ({"Colour": "red"}, "Colour"),
        ({"StudyDate": "2024-01-05"}, "StudyDate"),
        ({"StudyDate": "20241301"}, "StudyDate"),
        ({"StudyInstanceUID": "1.2.abc"}, "StudyInstanceUID"),
        ({"Modality": "CT"}, "Modality"),  # a series attribute at the study level
        ({"limit": "-1"}, "limit"),
    ]:
        answer = httpx.get(url, params=params, headers=headers)
        assert answer.status_code == 400, (params, answer.text)
        assert answer.json()["field"] == key
    xml = httpx.get(url, headers=headers | {"Accept": "application/dicom+xml"})
    assert xml.status_code == 406
    # Attributes not held are left out of the answer, not refused.
    extra = httpx.get(url, params={"includefield": "StudyID,00081080", "limit": 1}, headers=headers)
    assert extra.status_code == 200


def test_who_may_search(
    session_gateway: Gateway, user_factory: Callable[[str], tuple[Client, str]]
) -> None:
    url = f"http://127.0.0.1:{session_gateway.api_port}/dicom-web/studies"
    assert httpx.get(url).status_code == 401
    auditor, _ = user_factory("auditor")
    made = auditor.post("/me/tokens", json={"name": "a", "expires_in_days": 1}).json()["token"]
    assert httpx.get(url, headers={"Authorization": f"Bearer {made}"}).status_code == 403
