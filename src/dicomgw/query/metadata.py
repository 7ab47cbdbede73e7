"""What WADO-RS serves from inside a stored file without decoding pixels: its DICOM
JSON metadata with BulkDataURIs (PS3.18 F.2, 10.4.1.1.2), bulk data values by
their path, and frames cut from Pixel Data (PS3.18 10.4.1.1.4): native frames by
offset, encapsulated frames as stored. Only the header is parsed; Pixel Data is
located, never loaded whole.

These are blocking file reads: callers run them in a worker thread.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.tag import BaseTag, Tag

BULK_THRESHOLD = 1024
"""Binary values longer than this are referred to by BulkDataURI, not inlined."""
PIXEL_DATA = Tag(0x7FE0, 0x0010)
_PIXEL_TAGS = (Tag(0x7FE0, 0x0008), Tag(0x7FE0, 0x0009), PIXEL_DATA)
AVAILABLE_TRANSFER_SYNTAX = "00083002"
_BINARY_VRS = frozenset(("OB", "OD", "OF", "OL", "OV", "OW", "UN"))
# PS3.5 A.4: the native transfer syntaxes; every other one encapsulates Pixel Data.
DEFLATED = "1.2.840.10008.1.2.1.99"
NATIVE_SYNTAXES = frozenset(
    ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", DEFLATED, "1.2.840.10008.1.2.2")
)


class NoSuchElement(LookupError):
    """A bulk data path or frame number the instance does not have."""


def _read(path: Path) -> Dataset:
    # NOTE: values over the threshold are read only when asked for, from the file.
    return dcmread(path, defer_size=BULK_THRESHOLD)


def instance_metadata(path: Path, instance_url: str, transfer_syntax_uid: str) -> dict[str, Any]:
    """The instance's data set as DICOM JSON; large binary values (Pixel Data
    among them) as BulkDataURIs under ``instance_url``/bulkdata/."""
    ds = _read(path)
    pixels = [ds.get_item(tag, keep_deferred=True) for tag in _PIXEL_TAGS if tag in ds]
    for tag in _PIXEL_TAGS:
        if tag in ds:
            del ds[tag]  # located, never loaded
    paths = {id(element): route for element, route in _binary_elements(ds, "")}

    def bulk(element: DataElement) -> str:
        return f"{instance_url}/bulkdata/{paths[id(element)]}"

    out: dict[str, Any] = ds.to_json_dict(BULK_THRESHOLD, bulk)
    for raw in pixels:
        if raw is not None:
            key = f"{raw.tag:08X}"
            out[key] = {"vr": raw.VR or "OW", "BulkDataURI": f"{instance_url}/bulkdata/{key}"}
    out[AVAILABLE_TRANSFER_SYNTAX] = {"vr": "UI", "Value": [transfer_syntax_uid]}
    return dict(sorted(out.items()))


def _binary_elements(ds: Dataset, prefix: str) -> Iterator[tuple[DataElement, str]]:
    """Every binary element with the path that names it: ``TAG`` at the top,
    ``TAG/ITEM/TAG`` inside sequences (items counted from 0)."""
    for element in ds:
        route = f"{prefix}{element.tag:08X}"
        if element.VR == "SQ":
            for n, item in enumerate(element.value):
                yield from _binary_elements(item, f"{route}/{n}/")
        elif element.VR in _BINARY_VRS:
            yield element, route


def bulk_value(path: Path, route: str) -> bytes:
    """The value at ``route`` (as :func:`instance_metadata` names it), not Pixel Data."""
    ds: Dataset = _read(path)
    steps = route.split("/")
    try:
        while True:
            tag = BaseTag(int(steps.pop(0), 16))
            if tag in _PIXEL_TAGS:
                raise NoSuchElement(route)  # served as frames
            element = ds[tag]
            if not steps:
                break
            ds = element.value[int(steps.pop(0))]
    except (ValueError, KeyError, IndexError, TypeError):
        raise NoSuchElement(route) from None
    if element.VR not in _BINARY_VRS or not isinstance(element.value, bytes):
        raise NoSuchElement(route)
    return element.value


@dataclass(frozen=True, slots=True)
class PixelLayout:
    """Where an instance's Pixel Data is in its file."""

    offset: int
    """Of the value's first byte."""
    length: int
    frames: int
    frame_bytes: int
    """Of one native frame (0 for encapsulated Pixel Data)."""
    deflated: bool = False
    """The data set is deflated on disk (PS3.5 A.5): offsets are not the file's."""


def pixel_layout(path: Path, transfer_syntax_uid: str) -> PixelLayout:
    ds = _read(path)
    raw = ds.get_item(PIXEL_DATA, keep_deferred=True) if PIXEL_DATA in ds else None
    if not isinstance(raw, RawDataElement) or raw.value_tell is None:
        raise NoSuchElement("Pixel Data")
    frames = int(ds.get("NumberOfFrames") or 1)
    if transfer_syntax_uid not in NATIVE_SYNTAXES:
        return PixelLayout(raw.value_tell, raw.length, frames, 0)
    bits = int(ds.BitsAllocated) * int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel)
    if bits % 8 and frames > 1:
        # PS3.5 8.1.1: bit-packed frames do not start on byte boundaries.
        raise NoSuchElement("frames of bit-packed Pixel Data")
    return PixelLayout(
        raw.value_tell, raw.length, frames, (bits + 7) // 8, transfer_syntax_uid == DEFLATED
    )


def read_frames(path: Path, layout: PixelLayout, numbers: list[int]) -> list[bytes]:
    """Frames by number (from 1, PS3.18 10.4.1.1.4): native ones read at their
    offset, encapsulated ones as stored (the fragments of each frame joined)."""
    bad = [n for n in numbers if not 1 <= n <= layout.frames]
    if bad:
        raise NoSuchElement(f"frame {bad[0]} (the instance has {layout.frames})")
    size = layout.frame_bytes
    if layout.deflated:
        pixels = dcmread(path).PixelData  # inflated in memory: no offsets into the file
        return [pixels[(n - 1) * size : n * size] for n in numbers]
    out = []
    with path.open("rb") as f:
        for n in numbers:
            if size:
                out.append(os.pread(f.fileno(), size, layout.offset + (n - 1) * size))
            else:
                f.seek(layout.offset)
                out.append(get_frame(f, n - 1, number_of_frames=layout.frames))
    return out
