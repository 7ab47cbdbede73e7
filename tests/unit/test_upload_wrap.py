"""uploads/wrap.py: images and PDFs made instances. Each is read back by pydicom
after a Part 10 header that pydicom writes, and its pixels decoded equal to what
was wrapped; bad files and bad form values are refused with the reason."""

from __future__ import annotations

import datetime as dt
import io
import random
import struct
import subprocess
import sys
import time
import zipfile
import zlib

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import generate_frames
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, generate_uid

from dicomgw.uploads import wrap as wrap_module
from dicomgw.uploads.wrap import (
    MAX_PIXELS,
    StudyForm,
    WrapError,
    Wrapped,
    jpeg_frame,
    sniff,
    wrap,
)

FORM = StudyForm(
    patient_name="Doe^Jane",
    patient_id="PID-1",
    study_instance_uid=generate_uid(),
    study_date="20261201",
    modality="XC",
    notes="left forearm\r\nafter the fall",
)


def wrapped(kind: str, data: bytes, form: StudyForm = FORM, filename: str = "x") -> Wrapped:
    return wrap(
        kind,  # type: ignore[arg-type]
        data,
        form,
        series_instance_uid="1.2.3.4",
        sop_instance_uid=generate_uid(),
        instance_number=7,
        filename=filename,
    )


def read(w: Wrapped) -> pydicom.Dataset:
    """``w`` after a preamble, DICM and File Meta written by pydicom, read by pydicom."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(w.sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(w.sop_instance_uid)
    meta.TransferSyntaxUID = UID(w.transfer_syntax_uid)
    meta.ImplementationClassUID = UID("1.2.3.4.5")
    out = DicomBytesIO()
    write_file_meta_info(out, meta)
    ds = pydicom.dcmread(io.BytesIO(bytes(128) + b"DICM" + out.getvalue() + w.dataset))
    assert (ds.SOPClassUID, ds.SOPInstanceUID) == (w.sop_class_uid, w.sop_instance_uid)
    return ds


def encoded(image: Image.Image, kind: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, kind, **options)
    return out.getvalue()


def noise(shape: tuple[int, ...], dtype: type = np.uint8, seed: int = 1) -> np.ndarray:
    top = 65535 if dtype is np.uint16 else 255
    return np.random.default_rng(seed).integers(0, top, shape, dtype=dtype)


# -- sniff -------------------------------------------------------------------------


def test_sniff_tells_each_kind() -> None:
    empty_zip = io.BytesIO()
    zipfile.ZipFile(empty_zip, "w").close()
    assert sniff(bytes(128) + b"DICM" + b"\x02\x00") == "dicom"
    assert sniff(b"PK\x03\x04\x14\x00") == "zip"
    assert sniff(empty_zip.getvalue()) == "zip"
    assert sniff(encoded(Image.new("L", (4, 4)), "JPEG")) == "jpeg"
    assert sniff(encoded(Image.new("L", (4, 4)), "PNG")) == "png"
    assert sniff(b"%PDF-1.7\n") == "pdf"


@pytest.mark.parametrize(
    "junk",
    [b"", b"GIF89a", b"MZ\x90\x00", bytes(132), b"\xff\xd8", b"%PDF", b"\x89PNG", b"PK\x01\x02"],
)
def test_sniff_tells_nothing_of_anything_else(junk: bytes) -> None:
    assert sniff(junk) is None


# -- common attributes -------------------------------------------------------------


def test_the_form_and_the_gateway_fill_the_common_attributes() -> None:
    form = StudyForm(
        patient_name="山田^太郎=やまだ^たろう",
        patient_id="ÄÖ-1",
        study_instance_uid="2.25.1234",
        study_date="20240229",
        study_time="101500",
        modality="ES",
        study_description="Endoskopie, Magen",
        accession_number="A123",
        referring_physician="Müller^Jörg^^Dr.",
    )
    ds = read(wrapped("pdf", b"%PDF-1.4\n%%EOF\n", form))
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert str(ds.PatientName) == "山田^太郎=やまだ^たろう"
    assert ds.PatientID == "ÄÖ-1"
    assert (ds.PatientBirthDate, ds.PatientSex, ds.StudyID) == ("", "", "")
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID) == ("2.25.1234", "1.2.3.4")
    assert (ds.StudyDate, ds.StudyTime) == ("20240229", "101500")
    assert ds.StudyDescription == "Endoskopie, Magen"
    assert (ds.AccessionNumber, str(ds.ReferringPhysicianName)) == ("A123", "Müller^Jörg^^Dr.")
    assert (ds.SeriesNumber, ds.InstanceNumber) == (1, 7)
    assert (ds.Manufacturer, ds.ConversionType) == ("dicom-gw", "WSD")
    assert ds.ContentDate == dt.date.today().strftime("%Y%m%d")
    assert len(ds.ContentTime) == 6


def test_a_study_without_a_date_is_dated_now_and_one_without_a_time_has_none() -> None:
    base = {"patient_name": "", "patient_id": "P", "study_instance_uid": "1.2"}
    ds = read(wrapped("pdf", b"%PDF-1.4\n", StudyForm(**base)))
    assert ds.StudyDate == dt.date.today().strftime("%Y%m%d")
    assert len(ds.StudyTime) == 6
    assert ds.PatientName == ""
    ds = read(wrapped("pdf", b"%PDF-1.4\n", StudyForm(**base, study_date="20200101")))
    assert (ds.StudyDate, ds.StudyTime) == ("20200101", "")


# -- JPEG --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "subsampling", "photometric"),
    [("L", -1, "MONOCHROME2"), ("RGB", 2, "YBR_FULL_422"), ("RGB", 0, "YBR_FULL")],
)
def test_a_baseline_jpeg_is_encapsulated_as_it_is_and_decodes(
    mode: str, subsampling: int, photometric: str
) -> None:
    source = Image.fromarray(noise((48, 65, 3) if mode == "RGB" else (48, 65)))
    data = encoded(source, "JPEG", quality=95, subsampling=subsampling)
    w = wrapped("jpeg", data)
    assert (w.sop_class_uid, w.transfer_syntax_uid) == (
        "1.2.840.10008.5.1.4.1.1.7",
        "1.2.840.10008.1.2.4.50",
    )
    ds = read(w)
    assert (ds.Rows, ds.Columns) == (48, 65)
    assert ds.SamplesPerPixel == len(mode)
    assert ds.PhotometricInterpretation == photometric
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (8, 8, 7, 0)
    assert (ds.Modality, ds.ConversionType, ds.LossyImageCompression) == ("XC", "WSD", "01")
    assert ds.ImageComments == "left forearm\r\nafter the fall"
    assert ds["PixelData"].VR == "OB"
    # One fragment after an empty Basic Offset Table: the JPEG, padded to even length.
    [fragment] = generate_frames(ds.PixelData, number_of_frames=1)
    assert fragment == data + b"\x00" * (len(data) % 2)
    decoded = ds.pixel_array.astype(int)
    assert decoded.shape == np.asarray(source).shape
    assert np.abs(decoded - np.asarray(Image.open(io.BytesIO(data)))).mean() < 1


def test_an_extended_8_bit_jpeg_takes_its_own_transfer_syntax() -> None:
    data = encoded(Image.fromarray(noise((16, 16))), "JPEG")
    sof0 = data.index(b"\xff\xc0")
    extended = data[:sof0] + b"\xff\xc1" + data[sof0 + 2 :]  # the same stream, as SOF1
    w = wrapped("jpeg", extended)
    assert w.transfer_syntax_uid == "1.2.840.10008.1.2.4.51"
    assert read(w).pixel_array.shape == (16, 16)


def test_an_adobe_rgb_jpeg_is_rgb_and_what_follows_the_image_is_left_out() -> None:
    data = encoded(Image.fromarray(noise((8, 8, 3))), "JPEG", subsampling=0)
    adobe = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"  # APP14, transform 0
    data = data[:2] + adobe + data[2:]
    ds = read(wrapped("jpeg", data + b"\x00\x00\x00\x18ftypmp42 an appended video"))
    assert ds.PhotometricInterpretation == "RGB"
    [fragment] = generate_frames(ds.PixelData, number_of_frames=1)
    assert fragment.rstrip(b"\x00") == data


def test_a_progressive_jpeg_is_refused_saying_what_to_do() -> None:
    data = encoded(Image.fromarray(noise((32, 32, 3))), "JPEG", progressive=True)
    with pytest.raises(WrapError, match=r"^progressive JPEG .*; save as baseline$"):
        wrapped("jpeg", data)


def test_a_cmyk_jpeg_is_refused() -> None:
    with pytest.raises(WrapError, match="4 components"):
        wrapped("jpeg", encoded(Image.new("CMYK", (8, 8)), "JPEG"))


def test_a_jpeg_cut_anywhere_is_refused() -> None:
    data = encoded(Image.fromarray(noise((24, 24, 3))), "JPEG")
    assert jpeg_frame(data).end == len(data)
    for n in range(len(data)):
        with pytest.raises(WrapError):
            jpeg_frame(data[:n])


def test_damaged_jpegs_raise_only_wrap_errors() -> None:
    data = encoded(Image.fromarray(noise((24, 24, 3))), "JPEG")
    rng = random.Random(5)
    for _ in range(3000):
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            damaged[rng.randrange(2, len(data))] = rng.randrange(256)
        try:
            frame = jpeg_frame(bytes(damaged))
        except WrapError:
            continue
        assert frame.end <= len(damaged)


# -- PNG ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"])
def test_a_png_is_decoded_to_the_same_pixels(mode: str) -> None:
    if mode == "I;16":
        source = Image.fromarray(noise((20, 31), np.uint16))
    else:
        source = Image.fromarray(noise((20, 31, 4)), "RGBA").convert(mode)
    w = wrapped("png", encoded(source, "PNG"))
    assert (w.sop_class_uid, w.transfer_syntax_uid) == (
        "1.2.840.10008.5.1.4.1.1.7",
        "1.2.840.10008.1.2.1",
    )
    ds = read(w)
    assert (ds.Rows, ds.Columns) == (20, 31)
    assert ds.PixelRepresentation == 0
    if mode == "I;16":
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (16, 16, 15)
        assert ds["PixelData"].VR == "OW"
        assert ds.pixel_array.dtype == np.uint16
        expected = np.asarray(source)
    elif mode in ("1", "L", "LA"):
        assert (ds.PhotometricInterpretation, ds.SamplesPerPixel) == ("MONOCHROME2", 1)
        expected = np.asarray(source.convert("L"))
    else:
        assert (ds.PhotometricInterpretation, ds.SamplesPerPixel) == ("RGB", 3)
        assert ds.PlanarConfiguration == 0
        expected = np.asarray(source.convert("RGB"))
    assert np.array_equal(ds.pixel_array, expected)


def forged_png(width: int, height: int) -> bytes:
    """A real 8x8 greyscale PNG whose IHDR claims ``width`` x ``height``."""
    png = encoded(Image.new("L", (8, 8)), "PNG")
    ihdr = struct.pack(">II", width, height) + png[24:29]
    return png[:16] + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + png[33:]


def test_a_png_claiming_200_megapixels_is_refused_without_eating_memory() -> None:
    data = forged_png(20_000, 10_000)
    with pytest.raises(WrapError, match="cannot be decoded: 20000x10000 is over 100 megapixels"):
        wrapped("png", data)
    # The child, run as wrap runs it: it refuses from the header alone.
    child = subprocess.Popen(
        [sys.executable, "-m", "dicomgw.uploads.wrap", "--decode-png"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdin and child.stdout and child.stderr
    child.stdin.write(data)
    child.stdin.close()
    assert child.stdout.read() == b""
    assert b"over 100 megapixels" in child.stderr.read()
    # NOTE: refused from the header: a decode would have hit the child's memory
    # limit and said so instead. (Its ru_maxrss is no measure: a forked child's
    # counts the parent's pages, hundreds of MB late in a test run.)
    assert child.wait(30) == 1


def test_a_png_within_the_pixel_limit_but_too_big_to_hold_is_stopped_by_the_limits() -> None:
    # 100 megapixels of RGBA claimed (allowed), 8x8 given: Pillow fails on the
    # missing data long before memory runs out; either way the reason comes back.
    assert MAX_PIXELS >= 10_000 * 10_000
    started = time.perf_counter()
    with pytest.raises(WrapError, match="cannot be decoded"):
        wrapped("png", forged_png(10_000, 10_000))
    assert time.perf_counter() - started < 20


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (encoded(Image.fromarray(noise((64, 64))), "PNG")[:2000], "cannot be decoded: .*trunc"),
        (b"\x89PNG\r\n\x1a\n" + bytes(40), "cannot be decoded: not a PNG file"),
        (encoded(Image.new("L", (8, 8)), "JPEG"), "cannot be decoded: not a PNG file"),
    ],
)
def test_a_damaged_png_or_another_file_is_refused(data: bytes, reason: str) -> None:
    with pytest.raises(WrapError, match=reason):
        wrapped("png", data)


# -- PDF ---------------------------------------------------------------------------


@pytest.mark.parametrize("length", [199, 200])
def test_a_pdf_is_kept_byte_for_byte(length: int) -> None:
    pdf = b"%PDF-1.4\n" + bytes(range(256))[: length - 15] + b"\n%%EOF"
    assert len(pdf) == length
    filename = "reports/" + "Befund vom 1. Dezember " * 4 + ".pdf"
    w = wrapped("pdf", pdf, filename=filename)
    assert (w.sop_class_uid, w.transfer_syntax_uid) == (
        "1.2.840.10008.5.1.4.1.1.104.1",
        "1.2.840.10008.1.2.1",
    )
    ds = read(w)
    assert ds.EncapsulatedDocumentLength == length
    assert ds.EncapsulatedDocument == pdf + b"\x00" * (length % 2)
    assert ds.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert ds.DocumentTitle == ("Befund vom 1. Dezember " * 4)[:64]
    assert (ds.Modality, ds.BurnedInAnnotation, ds.ConversionType) == ("DOC", "YES", "WSD")
    assert ds.ConceptNameCodeSequence == []
    assert "ImageComments" not in ds


def test_what_is_not_a_pdf_is_not_wrapped_as_one() -> None:
    with pytest.raises(WrapError, match="not a PDF"):
        wrapped("pdf", b"<html>%PDF-1.4")
    with pytest.raises(WrapError, match="a zip file is not wrapped"):
        wrapped("zip", b"PK\x03\x04")


def test_files_over_the_cap_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wrap_module, "MAX_WRAP_BYTES", 1 << 20)
    with pytest.raises(WrapError, match="over 1 MiB"):
        wrapped("pdf", b"%PDF-" + bytes(1 << 20))


# -- bad values --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("patient_id", ""),
        ("patient_id", "   "),
        ("patient_id", "x" * 65),
        ("patient_id", "a\\b"),
        ("patient_id", "a\nb"),
        ("patient_name", "x" * 65),
        ("patient_name", "A" * 40 + "^" + "B" * 30),
        ("patient_name", "a^b^c^d^e^f"),
        ("patient_name", "a=b=c=d"),
        ("patient_name", "Doe\\Jane"),
        ("patient_name", "Doe\x00Jane"),
        ("referring_physician", "x" * 65),
        ("study_date", "2026-12-01"),
        ("study_date", "2026121"),
        ("study_date", "20261301"),
        ("study_date", "20250229"),
        ("study_date", " 20261201"),
        ("study_time", "2400"),
        ("study_time", "10:15"),
        ("modality", ""),
        ("modality", "ct"),
        ("modality", "CT!"),
        ("modality", "X" * 17),
        ("study_description", "x" * 65),
        ("accession_number", "x" * 17),
        ("notes", "a\x00b"),
        ("notes", "x" * 10241),
        ("study_instance_uid", "1.2.03"),
        ("study_instance_uid", "abc"),
        ("study_instance_uid", "1." + "2" * 63),
    ],
)
def test_bad_form_values_are_refused_naming_the_field(field: str, value: str) -> None:
    values = {
        "patient_name": FORM.patient_name,
        "patient_id": FORM.patient_id,
        "study_instance_uid": FORM.study_instance_uid,
    } | {field: value}
    with pytest.raises(WrapError, match=rf"^{field}: "):
        wrapped("pdf", b"%PDF-1.4\n", StudyForm(**values))


def test_bad_uids_and_instance_numbers_from_the_caller_are_refused() -> None:
    def attempt(series: str, number: int) -> None:
        wrap(
            "pdf",
            b"%PDF-",
            FORM,
            series_instance_uid=series,
            sop_instance_uid="1.3",
            instance_number=number,
            filename="x",
        )

    with pytest.raises(WrapError, match=r"^series_instance_uid: "):
        attempt("1..2", 1)
    with pytest.raises(WrapError, match=r"^instance_number: "):
        attempt("1.2", 0)
