"""Outputs made directly with the store's writer (no server): for the readers' tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine

from bulkpix.dtypes import BandSpec
from bulkpix.geometry.grid import PixelGrid, Window
from bulkpix.store.zarr_store import ItemWriter, consolidate, mark_batch_root, open_store

CRS = "EPSG:32633"
TRANSFORM = Affine(10, 0, 600000, 0, -10, 5200000)


def make_output(
    path: Path,
    bands: Sequence[tuple[str, str]],
    height: int,
    width: int,
    pixels: Callable[[str, int, int, int, int], np.ndarray],
    *,
    chunk: int = 256,
    item: str | None = None,
    complete: bool = True,
    strip: int | None = None,
    transform: Affine = TRANSFORM,
    **create: Any,
) -> Path:
    """An output of ``bands`` [(id, dtype)], filled strip by strip (so the test's own memory
    stays small) with ``pixels(band, row, col, height, width)``. ``complete=False`` leaves the
    last strip unwritten and the output unmarked."""

    async def go() -> None:
        store = await open_store(str(path))
        if item is not None:
            await mark_batch_root(store, create.get("zarr_format", 3))
        grid = PixelGrid(CRS, transform, width, height)
        specs = [BandSpec(name, np.dtype(dtype)) for name, dtype in bands]
        writer = await ItemWriter.create(store, item or "", grid, specs, chunk, **create)
        step = strip or chunk * max(1, 1024 // chunk)
        rows = list(range(0, height, step))
        if not complete:
            rows = rows[:-1]
        for row in rows:
            h = min(step, height - row)
            arrays: Mapping[str, np.ndarray] = {
                name: pixels(name, row, 0, h, width).astype(dtype) for name, dtype in bands
            }
            await writer.write_tile(Window(row, 0, h, width), arrays)
        if complete:
            await writer.mark_complete()
        await consolidate(store)

    asyncio.run(go())
    return path


def ramp(band: str, row: int, col: int, height: int, width: int) -> np.ndarray:
    """Position-dependent values 0..999, the same whichever strip asks."""
    rows, cols = np.mgrid[row : row + height, col : col + width]
    return (rows * 7 + cols * 3 + 5 * len(band) + ord(band[-1])) % 1000


def whole(band: str, height: int, width: int) -> np.ndarray:
    return ramp(band, 0, 0, height, width)
