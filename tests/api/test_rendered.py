"""DICOMweb rendered images and thumbnails (PS3.18 10.4.1.1.5-6) of stored
instances: decoded in the decode pool, windowed, sized, as JPEG or PNG; bad
parameters and pixel data that cannot be decoded get a problem, and the pool
keeps serving."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

from tests.api.conftest import Client
from tests.gateway import ADMIN_PASSWORD, Gateway
from tests.integration.scu import make_dataset

SC = "1.2.840.10008.5.1.4.1.1.7"


def as_stored(ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> Dataset:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.preamble = b"\0" * 128
    return ds


def ramp(study: str, series: str, n: int, *, photometric: str = "MONOCHROME2") -> Dataset:
    """64 x 64, 12-bit: each row's value is row * 64 (0 to 4032), windowed 2048/4096."""
    ds = make_dataset(study_uid=study, series_uid=series, instance_number=n)
    ds.BitsStored, ds.HighBit = 12, 11
    ds.PhotometricInterpretation = photometric
    ds.PixelData = np.repeat(np.arange(64, dtype=np.uint16) * 64, 64).astype("<u2").tobytes()
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    return as_stored(ds)


def colour(study: str, series: str) -> Dataset:
    ds = make_dataset(study_uid=study, series_uid=series, instance_number=5)
    ds.SOPClassUID = SC
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[..., 0] = 200
    pixels[32:, :, 2] = 90
    ds.PixelData = pixels.tobytes()
    return as_stored(ds)


def jpeg(study: str, series: str) -> Dataset:
    photo = io.BytesIO()
    Image.new("RGB", (48, 40), (10, 200, 30)).save(photo, "JPEG", quality=95)
    ds = make_dataset(study_uid=study, series_uid=series, instance_number=6)
    ds.SOPClassUID = SC
    ds.Rows, ds.Columns = 40, 48
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL_422", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = encapsulate([photo.getvalue()])
    ds["PixelData"].VR = "OB"
    return as_stored(ds, JPEGBaseline8Bit)


def multi(study: str, series: str) -> Dataset:
    ds = make_dataset(study_uid=study, series_uid=series, instance_number=7)
    ds.NumberOfFrames = 3
    ds.PixelData = b"".join(
        np.full((64, 64), 1000 * f, np.uint16).astype("<u2").tobytes() for f in range(3)
    )
    ds.WindowCenter, ds.WindowWidth = 1000, 2000
    return as_stored(ds)


def broken(study: str, series: str) -> Dataset:
    ds = make_dataset(study_uid=study, series_uid=series, instance_number=8)
    ds.PixelData = b"\x00\x01" * 100  # far short of 64 x 64 x 2 bytes
    return as_stored(ds)


@pytest.fixture(scope="module")
def token(session_gateway: Gateway) -> str:
    """An API token of a new operator (who may store, and read)."""
    admin = Client(session_gateway)
    assert admin.login("admin", ADMIN_PASSWORD).status_code == 200
    name = f"render-{uuid.uuid4().hex[:8]}"
    made = admin.post(
        "/users", json={"username": name, "role": "operator", "password": f"pw-{name}-x"}
    )
    assert made.status_code == 201, made.text
    operator = Client(session_gateway)
    assert operator.login(name, f"pw-{name}-x").status_code == 200
    answer = operator.post("/me/tokens", json={"name": "render", "expires_in_days": 1})
    admin.http.close()
    operator.http.close()
    return str(answer.json()["token"])


@pytest.fixture(scope="module")
def stored(session_gateway: Gateway, token: str) -> dict[str, Dataset]:
    web = DICOMwebClient(
        url=f"http://127.0.0.1:{session_gateway.api_port}/dicom-web",
        headers={"Authorization": f"Bearer {token}"},
    )
    study, series, other = generate_uid(), generate_uid(), generate_uid()
    made = {
        "ramp": ramp(study, series, 1),
        "mono1": ramp(study, series, 2, photometric="MONOCHROME1"),
        "ramp3": ramp(study, series, 3),
        "colour": colour(study, other),
        "jpeg": jpeg(study, other),
        "multi": multi(study, other),
        "broken": broken(study, other),
    }
    web.store_instances(list(made.values()))
    return made


@pytest.fixture(scope="module")
def reader(session_gateway: Gateway, token: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=f"http://127.0.0.1:{session_gateway.api_port}/dicom-web",
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    ) as client:
        yield client


def url(ds: Dataset, tail: str = "rendered") -> str:
    return (
        f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/{tail}"
    )


def image(answer: httpx.Response) -> np.ndarray:
    assert answer.status_code == 200, answer.text
    return np.asarray(Image.open(io.BytesIO(answer.content)))


def test_a_grey_image_is_windowed_to_8_bits_and_monochrome1_is_inverted(
    reader: httpx.Client, stored: dict[str, Dataset]
) -> None:
    png = reader.get(url(stored["ramp"]), headers={"Accept": "image/png"})
    assert png.headers["content-type"] == "image/png"
    pixels = image(png)
    assert pixels.shape == (64, 64)
    # Window 2048/4096 spans 0..4095: row r (value 64 r) is about 64 r / 4095 * 255.
    assert abs(int(pixels[0, 0]) - 0) <= 1
    assert abs(int(pixels[32, 0]) - round(2048 / 4095 * 255)) <= 2
    assert int(pixels[63, 5]) > 245
    inverted = image(reader.get(url(stored["mono1"]), headers={"Accept": "image/png"}))
    assert np.array_equal(inverted, 255 - pixels)
    # The request's window: 1024/1024 puts row 8 (512) at black, row 24 (1536) at white.
    windowed = image(
        reader.get(url(stored["ramp"]), params={"window": "1024,1024,linear"},
                   headers={"Accept": "image/png"})
    )  # fmt: skip
    assert windowed[7, 0] == 0 and windowed[25, 0] == 255


def test_jpeg_by_default_sized_to_the_viewport_and_thumbnails(
    reader: httpx.Client, stored: dict[str, Dataset]
) -> None:
    answer = reader.get(url(stored["ramp"]), params={"viewport": "32,16", "quality": "80"})
    assert answer.headers["content-type"] == "image/jpeg"
    assert image(answer).shape == (16, 16)  # the aspect ratio is kept
    ds = stored["ramp"]
    for path in (
        url(ds, "thumbnail"),
        url(ds, "frames/1/thumbnail"),
        f"/studies/{ds.StudyInstanceUID}/thumbnail",
        f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/thumbnail",
    ):
        thumb = image(reader.get(path))
        assert max(thumb.shape[:2]) <= 128, path
    etag = reader.get(url(ds)).headers["ETag"]
    assert reader.get(url(ds), headers={"If-None-Match": etag}).status_code == 304


def test_colour_native_and_jpeg_compressed_come_out_in_their_colours(
    reader: httpx.Client, stored: dict[str, Dataset]
) -> None:
    rgb = image(reader.get(url(stored["colour"]), headers={"Accept": "image/png"}))
    assert tuple(rgb[0, 0]) == (200, 0, 0) and tuple(rgb[63, 0]) == (200, 0, 90)
    photo = image(reader.get(url(stored["jpeg"]), headers={"Accept": "image/png"}))
    assert photo.shape == (40, 48, 3)
    assert np.abs(photo[20, 20].astype(int) - (10, 200, 30)).max() < 12


def test_frames_of_a_multi_frame_instance(reader: httpx.Client, stored: dict[str, Dataset]) -> None:
    frames = [
        image(
            reader.get(
                url(stored["multi"], f"frames/{n}/rendered"), headers={"Accept": "image/png"}
            )
        )
        for n in (1, 2, 3)
    ]
    # Window 1000/2000 spans 0..1999: 0 -> 0, 1000 -> mid grey, 2000 -> white.
    assert [int(f[10, 10]) for f in frames] == [0, 128, 255]
    missing = reader.get(url(stored["multi"], "frames/4/rendered"))
    assert missing.status_code == 404
    assert missing.json()["type"].endswith(":not-rendered")


def test_bad_requests_and_undecodable_pixels_get_a_problem_and_the_pool_goes_on(
    reader: httpx.Client, stored: dict[str, Dataset]
) -> None:
    ds = stored["ramp"]
    assert reader.get(url(ds), headers={"Accept": "text/html"}).status_code == 406
    for params in (
        {"viewport": "0,10"},
        {"quality": "0"},
        {"window": "1,2,sigmoid"},
        {"window": "x"},
    ):
        answer = reader.get(url(ds), params=params)
        assert answer.status_code == 422, (params, answer.text)
    assert reader.get(url(ds, "frames/0/rendered")).status_code == 400
    bad = reader.get(url(stored["broken"]))
    assert bad.status_code == 422
    assert "cannot be decoded" in bad.json()["detail"]
    assert image(reader.get(url(ds))).shape == (64, 64)
