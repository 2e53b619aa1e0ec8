"""Encoding pixels as the service does: NPY, GEO_TIFF, PNG, JPEG and AUTO_JPEG_PNG."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.io import MemoryFile

from bulkpix.emulator.status import ApiError

__all__ = ["CONTENT_TYPES", "FILE_FORMATS", "check_format", "encode"]

FILE_FORMATS = ("NPY", "GEO_TIFF", "PNG", "JPEG", "AUTO_JPEG_PNG")
CONTENT_TYPES = {
    "NPY": "application/octet-stream",
    "GEO_TIFF": "image/tiff",
    "PNG": "image/png",
    "JPEG": "image/jpeg",
}
_IMAGE_FORMATS = ("PNG", "JPEG", "AUTO_JPEG_PNG")


def check_format(file_format: str, dtypes: Sequence[np.dtype], visualization: Any) -> None:
    """Reject, before any pixel is computed, a format the bands cannot be sent in."""
    if file_format not in FILE_FORMATS:
        raise ApiError(400, f"Invalid or unsupported fileFormat: {file_format!r}.")
    if visualization is not None:
        if file_format not in _IMAGE_FORMATS:
            raise ApiError(400, "visualizationOptions cannot be used with fileFormat "
                                f"{file_format}.")
        if not isinstance(visualization, dict):
            raise ApiError(400, "Invalid visualizationOptions: expected an object.")
        if len(dtypes) not in (1, 3):
            raise ApiError(400, f"Visualization needs 1 or 3 bands, got {len(dtypes)}.")
        if visualization.get("paletteColors") and len(dtypes) != 1:
            raise ApiError(400, "paletteColors can only be used with 1 band.")
        return
    if file_format == "GEO_TIFF" and len({np.dtype(d) for d in dtypes}) > 1:
        names = ", ".join(sorted({np.dtype(d).name for d in dtypes}))
        raise ApiError(400, f"GEO_TIFF requires all bands to have the same data type; got {names}. "
                            "Use NPY or cast the bands.")
    if file_format in _IMAGE_FORMATS and (
            len(dtypes) not in (1, 3) or any(np.dtype(d) != np.uint8 for d in dtypes)):
        raise ApiError(400, f"{file_format} without visualizationOptions needs 1 or 3 bands of "
                            "8-bit unsigned data.")


def encode(file_format: str, band_ids: Sequence[str], arrays: Sequence[np.ndarray], crs: CRS,
           transform: Affine, visualization: Any, fully_inside: bool) -> tuple[bytes, str]:
    """The payload and its content type."""
    if file_format == "NPY":
        return _npy(band_ids, arrays), CONTENT_TYPES["NPY"]
    if file_format == "GEO_TIFF":
        return _geotiff(band_ids, arrays, crs, transform), CONTENT_TYPES["GEO_TIFF"]
    image = _visualize(arrays, visualization) if visualization is not None else list(arrays)
    if file_format == "AUTO_JPEG_PNG":
        # The service sends JPEG when every pixel is opaque, PNG when some are masked.
        file_format = "JPEG" if fully_inside else "PNG"
    return _image(file_format, image, crs, transform), CONTENT_TYPES[file_format]


def _npy(band_ids: Sequence[str], arrays: Sequence[np.ndarray]) -> bytes:
    height, width = arrays[0].shape
    fields = zip(band_ids, arrays, strict=True)
    record = np.dtype([(band_id, array.dtype.newbyteorder("<")) for band_id, array in fields])
    out = np.empty((height, width), dtype=record)
    for band_id, array in zip(band_ids, arrays, strict=True):
        out[band_id] = array
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, out, version=(1, 0), allow_pickle=False)
    return buffer.getvalue()


def _geotiff(band_ids: Sequence[str], arrays: Sequence[np.ndarray], crs: CRS,
             transform: Affine) -> bytes:
    height, width = arrays[0].shape
    profile = {"driver": "GTiff", "width": width, "height": height, "count": len(arrays),
               "dtype": arrays[0].dtype, "crs": crs, "transform": transform}
    if width >= 256 and height >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    with MemoryFile() as memory:
        with memory.open(**profile) as dataset:
            dataset.write(np.stack(arrays))
            dataset.descriptions = tuple(band_ids)
        return memory.read()


def _image(file_format: str, arrays: Sequence[np.ndarray], crs: CRS, transform: Affine) -> bytes:
    height, width = arrays[0].shape
    with MemoryFile() as memory:
        # Georeferenced (into a sidecar that is not sent) only to keep rasterio from warning.
        with memory.open(driver=file_format, width=width, height=height, count=len(arrays),
                         dtype="uint8", crs=crs, transform=transform) as dataset:
            dataset.write(np.stack(arrays))
        return memory.read()


def _per_band(value: Any, count: int, what: str) -> list[Any]:
    values = value if isinstance(value, list) else [value]
    if len(values) == 1:
        return values * count
    if len(values) != count:
        raise ApiError(400, f"visualizationOptions.{what} needs 1 or {count} entries.")
    return values


def _gamma_values(gamma: Any, count: int) -> list[float]:
    if gamma is None:
        return [1.0] * count
    if isinstance(gamma, dict):
        gamma = gamma.get("value", 1.0)
    values = [float(g) for g in _per_band(gamma, count, "gamma")]
    if any(g <= 0 for g in values):
        raise ApiError(400, "visualizationOptions.gamma must be > 0.")
    return values


def _default_range(dtype: np.dtype) -> tuple[float, float]:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    return 0.0, 1.0


def _palette(colors: list[Any]) -> np.ndarray:
    rgb = []
    for color in colors:
        text = str(color).lstrip("#")
        if len(text) == 3:
            text = "".join(ch * 2 for ch in text)
        try:
            rgb.append([int(text[i:i + 2], 16) for i in (0, 2, 4)] if len(text) == 6 else None)
        except ValueError:
            rgb.append(None)
        if rgb[-1] is None:
            raise ApiError(400, f"Invalid palette color: {color!r}.")
    return np.array(rgb, dtype=np.float64)


def _visualize(arrays: Sequence[np.ndarray], options: dict[str, Any]) -> list[np.ndarray]:
    """Data -> 8-bit RGB: stretch each band over its range, apply gamma, then the palette."""
    count = len(arrays)
    ranges = _per_band(options.get("ranges") or [None], count, "ranges")
    gammas = _gamma_values(options.get("gamma"), count)
    scaled = []
    for array, value_range, gamma in zip(arrays, ranges, gammas, strict=True):
        low, high = _default_range(array.dtype)
        if value_range is not None:
            low, high = float(value_range.get("min", 0)), float(value_range.get("max", 0))
        span = high - low if high != low else 1.0
        unit = np.clip((array.astype(np.float64) - low) / span, 0.0, 1.0)
        scaled.append(unit ** (1.0 / gamma) if gamma != 1.0 else unit)
    colors = options.get("paletteColors")
    if colors:
        palette = _palette(colors)
        position = scaled[0] * (len(palette) - 1)
        stops = np.arange(len(palette))
        return [np.rint(np.interp(position, stops, palette[:, i])).astype(np.uint8)
                for i in range(3)]
    rgb = [np.rint(unit * 255.0).astype(np.uint8) for unit in scaled]
    return rgb * 3 if count == 1 else rgb
