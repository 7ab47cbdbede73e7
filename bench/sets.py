"""Test sets: synthetic Part 10 files (explicit VR little endian), generated once.

Each set is a handful of studies with a few series each, unique UIDs and
random-looking 16-bit pixels. A set lives in ``<cache>/<key>/`` and is reused
while its ``.complete`` marker (written last) is there.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    generate_uid,
)

MARKER = ".complete"
# PERF: one random block, rotated per frame, instead of os.urandom per file.
_BLOCK_OFFSET_STEP = 7919


@dataclass(frozen=True)
class SetSpec:
    name: str
    modality: str
    sop_class: UID
    count: int
    rows: int
    cols: int
    frames: int
    studies: int
    series_per_study: int

    @property
    def key(self) -> str:
        return f"{self.name}-{self.count}x{self.frames}f-{self.rows}x{self.cols}"

    @property
    def frame_bytes(self) -> int:
        return self.rows * self.cols * 2


@dataclass(frozen=True)
class GeneratedSet:
    spec: SetSpec
    files: list[Path]
    bytes: int


SETS = {
    "ct": SetSpec("ct", "CT", CTImageStorage, 1000, 512, 512, 1, 4, 3),
    "mr": SetSpec("mr", "MR", MRImageStorage, 1000, 256, 256, 1, 5, 4),
    "big": SetSpec(
        "big", "OT", MultiFrameGrayscaleWordSecondaryCaptureImageStorage, 4, 512, 512, 200, 2, 2
    ),
}


def spec_for(name: str, count: int | None, big_count: int | None, frames: int | None) -> SetSpec:
    spec = SETS[name]
    if name == "big":
        return replace(spec, count=big_count or spec.count, frames=frames or spec.frames)
    return replace(spec, count=count or spec.count)


def ensure_set(cache: Path, spec: SetSpec) -> GeneratedSet:
    """The set's files, generating them first unless a complete copy is cached."""
    root = cache / spec.key
    if not (root / MARKER).exists():
        tmp = cache / f".{spec.key}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        _generate(tmp, spec)
        (tmp / MARKER).write_text(json.dumps({"spec": spec.__dict__}))
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
    files = sorted(p for p in root.iterdir() if p.suffix == ".dcm")
    if len(files) != spec.count:
        raise RuntimeError(f"{root} holds {len(files)} files, expected {spec.count}: delete it")
    return GeneratedSet(spec, files, sum(p.stat().st_size for p in files))


def _generate(out: Path, spec: SetSpec) -> None:
    block = os.urandom(spec.frame_bytes)
    series = [
        (study, series) for study in range(spec.studies) for series in range(spec.series_per_study)
    ]
    studies = [_study(spec, k) for k in range(spec.studies)]
    series_attrs = {s: _series(spec, *s) for s in series}
    for i in range(spec.count):
        study_no, series_no = series[i * len(series) // spec.count]
        ds = _instance(spec, studies[study_no], series_attrs[(study_no, series_no)], i)
        frames = (
            _rotate(block, (i * spec.frames + f) * _BLOCK_OFFSET_STEP) for f in range(spec.frames)
        )
        ds.PixelData = b"".join(frames)
        ds["PixelData"].VR = "OW"
        ds.save_as(out / f"{i:06d}.dcm", enforce_file_format=True)


def _rotate(block: bytes, offset: int) -> bytes:
    k = offset % len(block)
    return block[k:] + block[:k]


def _study(spec: SetSpec, k: int) -> dict[str, object]:
    day = datetime.date(2024, 1, 8) + datetime.timedelta(days=k)
    patient = k % 3
    return {
        "PatientName": f"BENCH^{spec.name.upper()}{patient}",
        "PatientID": f"BENCH-{spec.name}-{patient:03d}",
        "PatientBirthDate": f"{1950 + 7 * patient}0315",
        "PatientSex": "FM"[patient % 2],
        "StudyInstanceUID": generate_uid(),
        "StudyDate": day.strftime("%Y%m%d"),
        "StudyTime": f"{8 + k % 9:02d}1500",
        "AccessionNumber": f"A{spec.name.upper()}{k:05d}",
        "StudyID": str(k + 1),
        "ReferringPhysicianName": "REF^DOCTOR",
        "StudyDescription": f"{spec.modality} bench study {k + 1}",
        "InstitutionName": "Bench Imaging Center",
    }


def _series(spec: SetSpec, study: int, series: int) -> dict[str, object]:
    return {
        "SeriesInstanceUID": generate_uid(),
        "SeriesNumber": series + 1,
        "SeriesDescription": f"{spec.modality} series {series + 1}",
        "FrameOfReferenceUID": generate_uid(),
        "Modality": spec.modality,
        "Manufacturer": "BENCH",
        "StationName": f"BENCH{study % 2}",
    }


def _instance(
    spec: SetSpec, study: dict[str, object], series: dict[str, object], i: int
) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = spec.sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = spec.sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    for name, value in (study | series).items():
        setattr(ds, name, value)
    ds.ContentDate = ds.StudyDate
    ds.InstanceNumber = i + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = [-125.0, -125.0, float(i)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.SliceThickness = 1.0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = spec.rows, spec.cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 0
    if spec.frames > 1:
        ds.NumberOfFrames = spec.frames
    if spec.modality == "CT":
        ds.KVP = 120
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.WindowCenter, ds.WindowWidth = 40, 400
    return ds
