"""``bulkpix preview``: a quicklook PNG from a decimated read, with a percentile stretch.

The preview samples one source pixel per preview pixel (the nearest to its centre) and reads,
chunk row by chunk row, only the chunks that hold a sampled pixel: once the preview's step
is larger than the chunk, most chunks are never read. Memory is the preview plus a few chunks.

One band gives a gray image, three an RGB one. Each band is stretched linearly between two
percentiles of its sampled values (2 and 98 by default); the bands of a ``visualization``
output (vis-red, vis-green, vis-blue) are 8-bit colour already and are not stretched.
Pixels holding a band's nodata (or NaN) are transparent.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bulkpix.errors import JobError
from bulkpix.readers.source import Band, OutputItem, check_destination, open_item

__all__ = ["PreviewResult", "sample_positions", "stretch", "write_preview"]

VISUALIZATION_BANDS = ("vis-red", "vis-green", "vis-blue")
MAX_SIZE = 16384


@dataclass(frozen=True)
class PreviewResult:
    path: Path
    width: int
    height: int
    bands: tuple[str, ...]


def sample_positions(length: int, samples: int) -> np.ndarray:
    """``samples`` source indices spread evenly over ``length``: each the pixel nearest the
    centre of its share."""
    return np.floor((np.arange(samples) + 0.5) * (length / samples)).astype(np.int64)


def preview_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """The preview's (height, width): the longest side ``size`` at most, never enlarged."""
    factor = max(height, width) / size
    if factor <= 1:
        return height, width
    return max(1, round(height / factor)), max(1, round(width / factor))


def read_decimated(
    source: OutputItem, band: Band, rows: np.ndarray, cols: np.ndarray
) -> np.ndarray:
    """Band values at rows x cols, read one chunk row at a time (only chunks holding them)."""
    out = np.empty((rows.size, cols.size), dtype=band.dtype)
    chunk_rows = rows // source.chunk
    for chunk_row in np.unique(chunk_rows):
        where = np.flatnonzero(chunk_rows == chunk_row)
        out[where] = source.read(band, rows[where], cols)
    return out


def stretch(values: np.ndarray, valid: np.ndarray, low: float, high: float) -> np.ndarray:
    """Linear stretch of the valid values between two percentiles to 0..255 (uint8)."""
    out = np.zeros(values.shape, dtype=np.uint8)
    if not valid.any():
        return out
    data = values.astype(np.float64)
    lo, hi = np.percentile(data[valid], [low, high])
    span = hi - lo if hi > lo else 1.0
    scaled = np.clip((data - lo) / span, 0.0, 1.0) * 255.0
    out[valid] = np.rint(scaled[valid]).astype(np.uint8)
    return out


def _choose_bands(source: OutputItem, band_ids: Sequence[str] | None) -> tuple[Band, ...]:
    if not band_ids:
        ids = [b.id for b in source.bands]
        if all(v in ids for v in VISUALIZATION_BANDS):
            return source.select(VISUALIZATION_BANDS)
        return source.bands[:1]
    if len(band_ids) not in (1, 3):
        raise JobError(f"--bands takes one band (gray) or three (r,g,b), got {len(band_ids)}")
    return source.select(band_ids)


def write_preview(
    output: str,
    destination: str | Path,
    *,
    item: str | None = None,
    bands: Sequence[str] | None = None,
    size: int = 1024,
    percentiles: tuple[float, float] = (2.0, 98.0),
) -> PreviewResult:
    """Write a PNG preview of ``output`` (one item of it). Raises ``JobError`` for bad input."""
    if not 1 <= size <= MAX_SIZE:
        raise JobError(f"--size must be between 1 and {MAX_SIZE}, got {size}")
    low, high = percentiles
    if not 0 <= low < high <= 100:
        raise JobError(f"percentiles need 0 <= low < high <= 100, got {low}, {high}")
    destination = check_destination(output, destination, "PNG")
    source = open_item(output, item)
    chosen = _choose_bands(source, bands)
    height, width = preview_shape(source.height, source.width, size)
    rows = sample_positions(source.height, height)
    cols = sample_positions(source.width, width)

    planes = []
    valid = np.ones((height, width), dtype=bool)
    for band in chosen:
        values = read_decimated(source, band, rows, cols)
        band_valid = np.ones(values.shape, dtype=bool)
        if values.dtype.kind == "f":
            band_valid &= ~np.isnan(values)
        if band.nodata is not None and not math.isnan(band.nodata):
            band_valid &= values != band.nodata
        valid &= band_valid
        planes.append((band, values, band_valid))
    image = []
    for band, values, band_valid in planes:
        if band.id in VISUALIZATION_BANDS and values.dtype == np.uint8:
            image.append(np.where(band_valid, values, 0).astype(np.uint8))
        else:
            image.append(stretch(values, band_valid, low, high))
    if not valid.all():  # an alpha band: nodata is transparent
        image.append(np.where(valid, 255, 0).astype(np.uint8))
    _write_png(destination, np.stack(image))
    return PreviewResult(destination, width, height, tuple(b.id for b in chosen))


def _write_png(path: Path, stack: np.ndarray) -> None:
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    count, height, width = stack.shape
    partial = path.with_name(f".{path.name}.part")
    try:
        with warnings.catch_warnings():
            # A quicklook is a picture, not a map: no georeferencing, no .aux.xml sidecar.
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with (
                rasterio.Env(GDAL_PAM_ENABLED="NO"),
                rasterio.open(
                    partial,
                    "w",
                    driver="PNG",
                    width=width,
                    height=height,
                    count=count,
                    dtype="uint8",
                ) as dst,
            ):
                dst.write(stack)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
