"""Memory per association does not grow with instance size: a large instance
streams from the receive buffer to disk, never buffered whole."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.gateway import Gateway
from tests.interop.corpus import storescu

SIZE = 128 * 1024 * 1024
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def instance(path: Path, size: int) -> Path:
    ds = Dataset()
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "BIG"
    ds.Modality = "OT"
    ds.Rows, ds.Columns, ds.NumberOfFrames = 1024, 512, max(1, size // (1024 * 1024))
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 16, 16, 15
    ds.PixelRepresentation = 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(size)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return path


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_large_instance_does_not_raise_peak_rss(
    gateway_factory: Callable[..., Gateway], tmp_path: Path, dcmtk: Path
) -> None:
    gateway = gateway_factory()
    gateway.start()
    assert gateway.proc is not None
    # Warm up: a small store first, so every code path has run once.
    small = instance(tmp_path / "small.dcm", 1024 * 1024)
    done = storescu(dcmtk, [small], gateway.dimse_port, "-xs")
    assert done.returncode == 0, done.stderr
    before = peak_rss_kib(gateway.proc.pid)
    big = instance(tmp_path / "big.dcm", SIZE)
    done = storescu(dcmtk, [big], gateway.dimse_port, "-xs")
    assert done.returncode == 0, done.stderr
    after = peak_rss_kib(gateway.proc.pid)
    assert len(gateway.objects()) == 2
    assert after - before < 8 * 1024, f"peak RSS grew by {(after - before) // 1024} MiB"
    stored = gateway.objects()
    assert max(p.stat().st_size for p in stored) > SIZE
