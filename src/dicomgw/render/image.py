"""One frame of a stored instance as a JPEG or PNG a browser shows (PS3.18 8.3.5,
rendered media types): runs in a decode process (render/pool.py), never in an
API worker.

Grey images go through the Modality LUT (rescale) and a window (the request's,
else the instance's first Window Center/Width or VOI LUT, else the frame's
own range) to 8 bits; MONOCHROME1 is inverted so that it reads as displayed;
colour is converted to RGB by the decoder.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

RENDERED_TYPES = ("image/jpeg", "image/png")


class RenderError(Exception):
    """Why a frame cannot be rendered, in words for the client; ``status`` the
    HTTP status that says it (404 no such frame, 422 not renderable, 503 the
    decoder stopped or took too long)."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Rendering:
    path: str
    frame: int
    """From 1."""
    media_type: str = "image/jpeg"
    viewport: tuple[int, int] | None = None
    """The largest width and height; the aspect ratio is kept."""
    quality: int = 90
    window: tuple[float, float] | None = None
    """(center, width), linear (PS3.3 C.11.2.1.2.1)."""


def render(job: Rendering) -> bytes:
    """The encoded image (RenderError: why not)."""
    import pydicom
    from PIL import Image
    from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut
    from pydicom.pixels.utils import pixel_array

    try:
        ds = pydicom.dcmread(job.path, stop_before_pixels=True)
    except (OSError, ValueError, pydicom.errors.InvalidDicomError) as exc:
        raise RenderError(f"the stored file cannot be read: {exc}") from None
    if "Rows" not in ds or "Columns" not in ds:
        raise RenderError("the instance has no image (no Rows and Columns)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if not 1 <= job.frame <= frames:
        raise RenderError(f"no frame {job.frame}: the instance has {frames}", 404)
    try:
        arr = pixel_array(job.path, index=job.frame - 1 if frames > 1 else None)
    except Exception as exc:  # the decoders raise many kinds
        raise RenderError(f"the pixel data cannot be decoded: {exc}") from None
    samples = int(ds.get("SamplesPerPixel", 1))
    if samples == 1:
        arr = _grey(arr, ds, job.window, apply_modality_lut, apply_voi_lut)
        image = Image.fromarray(arr)
    elif samples == 3 and arr.ndim == 3:
        image = Image.fromarray(_to_8_bits(arr, ds))
    else:
        raise RenderError(f"{samples} samples per pixel are not rendered")
    if job.viewport is not None:
        image.thumbnail(job.viewport, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if job.media_type == "image/png":
        image.save(out, "PNG", optimize=False)
    else:
        image.save(out, "JPEG", quality=job.quality)
    return out.getvalue()


def _grey(
    arr: np.ndarray,
    ds: Dataset,
    window: tuple[float, float] | None,
    modality_lut: Callable[[np.ndarray, Dataset], np.ndarray],
    voi_lut: Callable[[np.ndarray, Dataset], np.ndarray],
) -> np.ndarray:
    values = modality_lut(arr, ds).astype(np.float64)
    if window is None and "WindowCenter" in ds and "WindowWidth" in ds:
        window = (_first(ds.WindowCenter), _first(ds.WindowWidth))
    if window is not None and window[1] >= 1:
        center, width = window
        low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    elif "VOILUTSequence" in ds:
        # NOTE: a damaged VOI LUT leaves the values as they are (their own range).
        low, high = float(values.min()), float(values.max())
        with contextlib.suppress(ValueError, TypeError, IndexError, AttributeError, KeyError):
            values = voi_lut(values, ds).astype(np.float64)
            low, high = 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    else:
        low, high = float(values.min()), float(values.max())
    scaled = np.clip((values - low) / max(high - low, 1e-9), 0.0, 1.0) * 255.0
    out = np.rint(scaled).astype(np.uint8)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        out = 255 - out
    return np.ascontiguousarray(out)


def _first(value: object) -> float:
    """The first of a multi-valued attribute (several windows: the first is the default)."""
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        value = value[0] if value else 0
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0


def _to_8_bits(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    top = 2 ** int(ds.get("BitsStored", 8)) - 1
    return np.ascontiguousarray(
        (arr.astype(np.float64) * (255.0 / top)).clip(0, 255).astype(np.uint8)
    )
