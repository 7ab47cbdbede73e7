"""WADO-RS metadata, frames and bulk data (PS3.18 10.4.1.1.2-4) against a running
gateway, with dicomweb-client as the client: metadata is the stored data set as
DICOM JSON with BulkDataURIs that resolve, frames are the stored pixel bytes (native
cut by offset, encapsulated as stored), and what would need conversion is 406."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, generate_uid

from tests.api.conftest import Client
from tests.gateway import Gateway
from tests.integration.scu import make_dataset, send

EXPLICIT_LE = "1.2.840.10008.1.2.1"
OCTETS = "application/octet-stream"


def _token(user_factory: Callable[[str], tuple[Client, str]], role: str) -> str:
    client, _ = user_factory(role)
    answer = client.post("/me/tokens", json={"name": role, "expires_in_days": 1})
    return str(answer.json()["token"])


@pytest.fixture
def client(
    session_gateway: Gateway, user_factory: Callable[[str], tuple[Client, str]]
) -> DICOMwebClient:
    return DICOMwebClient(
        url=f"http://127.0.0.1:{session_gateway.api_port}/dicom-web",
        headers={"Authorization": f"Bearer {_token(user_factory, 'operator')}"},
    )


def multi_frame(frames: int, study: str, series: str) -> Dataset:
    """A native 3-frame 16-bit image with a large non-pixel binary value."""
    ds = make_dataset(study_uid=study, series_uid=series, instance_number=2)
    ds.NumberOfFrames = frames
    ds.PixelData = b"".join(bytes([n + 1]) * (64 * 64 * 2) for n in range(frames))
    ds.add_new(0x00420011, "OB", bytes(range(256)) * 8)  # Encapsulated Document, 2 KiB
    return ds


def jpeg_instance(study: str, series: str) -> Dataset:
    """Two 'JPEG' frames the gateway never decodes: served as stored."""
    ds = make_dataset(study_uid=study, series_uid=series, instance_number=3)
    ds.NumberOfFrames = 2
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = encapsulate([b"\xff\xd8first frames\xff\xd9", b"\xff\xd8second\xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.preamble = b"\0" * 128  # dicomweb-client writes "as original": a Part 10 file
    return ds


@pytest.fixture
def stored(session_gateway: Gateway, client: DICOMwebClient) -> dict[str, Dataset]:
    """One series: a single-frame image and a 3-frame one over DIMSE, a JPEG one by STOW-RS."""
    study, series = generate_uid(), generate_uid()
    single = make_dataset(study_uid=study, series_uid=series, instance_number=1)
    multi = multi_frame(3, study, series)
    assert send(session_gateway.dimse_port, [single, multi]) == [0, 0]
    jpeg = jpeg_instance(study, series)
    client.store_instances([jpeg])
    return {"single": single, "multi": multi, "jpeg": jpeg}


def test_metadata_at_each_level_is_the_stored_data_set(
    client: DICOMwebClient, stored: dict[str, Dataset]
) -> None:
    single, multi = stored["single"], stored["multi"]
    study, series = single.StudyInstanceUID, single.SeriesInstanceUID
    whole = client.retrieve_series_metadata(study, series)
    assert [m["00080018"]["Value"][0] for m in whole] == [
        single.SOPInstanceUID,
        multi.SOPInstanceUID,
        stored["jpeg"].SOPInstanceUID,
    ]
    assert len(client.retrieve_study_metadata(study)) == 3
    one = client.retrieve_instance_metadata(study, series, multi.SOPInstanceUID)
    assert one["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "TEST^RECEIVER"}]}
    assert one["00280008"]["Value"] == [3]
    assert one["00083002"]["Value"] == [EXPLICIT_LE]  # AvailableTransferSyntaxUID
    # Large binary values are referred to, not inlined, and the URIs resolve.
    # (As the server wrote them: dicomweb-client's parsed metadata drops the port.)
    url = f"{client.base_url}/studies/{study}/series/{series}/instances/{multi.SOPInstanceUID}"
    [one] = httpx.get(f"{url}/metadata", headers=dict(client._session.headers)).json()
    assert set(one["7FE00010"]) == {"vr", "BulkDataURI"}
    document = one["00420011"]["BulkDataURI"]
    assert document.endswith(f"/instances/{multi.SOPInstanceUID}/bulkdata/00420011"), document
    assert document.startswith(client.base_url), document
    assert client.retrieve_bulkdata(document) == [multi[0x00420011].value]
    pixels = client.retrieve_bulkdata(one["7FE00010"]["BulkDataURI"], media_types=(OCTETS,))
    assert b"".join(pixels) == multi.PixelData


def test_metadata_is_revalidated_with_its_etag(
    session_gateway: Gateway, client: DICOMwebClient, stored: dict[str, Dataset]
) -> None:
    single = stored["single"]
    url = (
        f"http://127.0.0.1:{session_gateway.api_port}/dicom-web/studies/"
        f"{single.StudyInstanceUID}/series/{single.SeriesInstanceUID}/metadata"
    )
    headers = dict(client._session.headers)  # the token
    first = httpx.get(url, headers=headers)
    assert first.status_code == 200 and first.headers["content-type"] == "application/dicom+json"
    etag = first.headers["etag"]
    again = httpx.get(url, headers=headers | {"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    # A new instance in the series changes the answer, so the tag.
    more = make_dataset(
        study_uid=single.StudyInstanceUID, series_uid=single.SeriesInstanceUID, instance_number=9
    )
    assert send(session_gateway.dimse_port, [more]) == [0]
    changed = httpx.get(url, headers=headers | {"If-None-Match": etag})
    assert changed.status_code == 200 and len(changed.json()) == 4
    assert changed.headers["etag"] != etag


def test_native_frames_are_cut_from_the_stored_pixels(
    client: DICOMwebClient, stored: dict[str, Dataset]
) -> None:
    multi = stored["multi"]
    uids = multi.StudyInstanceUID, multi.SeriesInstanceUID, multi.SOPInstanceUID
    size = 64 * 64 * 2
    frames = client.retrieve_instance_frames(*uids, frame_numbers=[3, 1], media_types=(OCTETS,))
    assert frames == [multi.PixelData[2 * size :], multi.PixelData[:size]]
    [single] = client.retrieve_instance_frames(
        stored["single"].StudyInstanceUID,
        stored["single"].SeriesInstanceUID,
        stored["single"].SOPInstanceUID,
        frame_numbers=[1],
        media_types=(OCTETS,),
    )
    assert single == stored["single"].PixelData


def test_encapsulated_frames_come_as_stored(
    session_gateway: Gateway, client: DICOMwebClient, stored: dict[str, Dataset]
) -> None:
    jpeg = stored["jpeg"]
    uids = jpeg.StudyInstanceUID, jpeg.SeriesInstanceUID, jpeg.SOPInstanceUID
    frames = client.retrieve_instance_frames(
        *uids, frame_numbers=[2, 1], media_types=(("image/jpeg", JPEGBaseline8Bit),)
    )
    assert frames == [b"\xff\xd8second\xff\xd9", b"\xff\xd8first frames\xff\xd9"]
    # Explicit VR little endian frames of JPEG data would need decoding: 406.
    url = (
        f"http://127.0.0.1:{session_gateway.api_port}/dicom-web/studies/{uids[0]}"
        f"/series/{uids[1]}/instances/{uids[2]}/frames/1"
    )
    headers = dict(client._session.headers)
    refused = httpx.get(
        url,
        headers=headers
        | {"Accept": f'multipart/related; type="{OCTETS}"; transfer-syntax={EXPLICIT_LE}'},
    )
    assert refused.status_code == 406 and JPEGBaseline8Bit in refused.json()["detail"]
    stored_bytes = httpx.get(
        url, headers=headers | {"Accept": f'multipart/related; type="{OCTETS}"; transfer-syntax=*'}
    )
    assert stored_bytes.status_code == 200
    assert f"transfer-syntax={JPEGBaseline8Bit}" in stored_bytes.text


def test_bad_frame_requests(
    session_gateway: Gateway, client: DICOMwebClient, stored: dict[str, Dataset]
) -> None:
    multi = stored["multi"]
    base = (
        f"http://127.0.0.1:{session_gateway.api_port}/dicom-web/studies/{multi.StudyInstanceUID}"
        f"/series/{multi.SeriesInstanceUID}/instances"
    )
    headers = dict(client._session.headers)
    instance = f"{base}/{multi.SOPInstanceUID}"
    assert httpx.get(f"{instance}/frames/4", headers=headers).status_code == 404
    assert httpx.get(f"{instance}/frames/0", headers=headers).status_code == 400
    assert httpx.get(f"{instance}/frames/1,x", headers=headers).status_code == 400
    assert httpx.get(f"{base}/{generate_uid()}/frames/1", headers=headers).status_code == 404
    assert httpx.get(f"{instance}/bulkdata/00100010", headers=headers).status_code == 404
    assert httpx.get(f"{instance}/bulkdata/zz", headers=headers).status_code == 404
    assert httpx.get(f"{instance}/metadata").status_code == 401
