"""The decode pool: rendering in child processes; one too slow is killed and the
pool made again; a child over its memory limit fails its job, not the worker."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from dicomgw.render.image import RenderError, Rendering
from dicomgw.render.pool import DecodePool
from tests.integration.scu import make_dataset


def stored(tmp_path: Path, size: int = 64) -> str:
    ds = make_dataset()
    ds.Rows = ds.Columns = size
    ds.PixelData = np.arange(size * size, dtype=np.uint16).astype("<u2").tobytes()
    path = tmp_path / "i.dcm"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return str(path)


async def test_a_job_past_its_time_is_stopped_and_the_pool_serves_the_next(tmp_path: Path) -> None:
    pool = DecodePool(1, 1 << 30, timeout_s=0.001)
    job = Rendering(stored(tmp_path), 1, "image/png")
    try:
        with pytest.raises(RenderError) as caught:
            await pool.render(job)
        assert caught.value.status == 503
        pool._timeout = 60
        image = Image.open(io.BytesIO(await pool.render(job)))
        assert image.size == (64, 64)
    finally:
        pool.close()


async def test_a_decoder_over_its_memory_limit_fails_its_job_only(tmp_path: Path) -> None:
    # 8192 x 8192 pixels: 128 MiB stored, 512 MiB as float64 while windowed: past
    # a 400 MiB address space (a child starts in ~150 MiB).
    pool = DecodePool(1, 400 << 20, timeout_s=60)
    try:
        with pytest.raises(RenderError) as caught:
            await pool.render(Rendering(stored(tmp_path, 8192), 1, "image/png"))
        assert caught.value.status in (422, 503)
        small = tmp_path / "small"
        small.mkdir()
        image = Image.open(io.BytesIO(await pool.render(Rendering(stored(small), 1, "image/png"))))
        assert image.size == (64, 64)
    finally:
        pool.close()
