"""From a getPixels request's grid/region to output pixels.

The output grid is resolved first (``resolve_grid``). If it is the native grid at a
whole-pixel offset the answer is a plain window copy; otherwise every output pixel takes the
source pixel under its own centre (nearest neighbour), computed per pixel so the result never
depends on how a region is cut into requests.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from affine import Affine
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.errors import CRSError

from bulkpix.emulator.assets import Asset, PixelWindow
from bulkpix.emulator.status import ApiError

__all__ = ["OutputGrid", "read_grid", "resolve_grid", "source_indices"]

_LONLAT = CRS.from_epsg(4326)
_EDGE_POINTS = 64  # densify the asset's outline when projecting its extent
_SNAP = 1e-6  # pixel coordinates this close to an integer count as on it


@dataclass(frozen=True)
class OutputGrid:
    crs: CRS
    transform: Affine
    width: int
    height: int
    native_offset: tuple[int, int] | None  # (col_off, row_off) when a plain copy


def _number(value: Any, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ApiError(400, f"Invalid value for {what}: {value!r}.") from None
    if not math.isfinite(number):
        raise ApiError(400, f"Invalid value for {what}: {value!r}.")
    return number


def _parse_affine(spec: Any) -> Affine:
    if not isinstance(spec, dict):
        raise ApiError(400, "Invalid grid.affineTransform: expected an object.")
    names = ("scaleX", "shearX", "translateX", "shearY", "scaleY", "translateY")
    unknown = set(spec) - set(names)
    if unknown:
        raise ApiError(400, f"Invalid grid.affineTransform: unknown fields {sorted(unknown)}.")
    terms = [_number(spec.get(n, 0), f"grid.affineTransform.{n}") for n in names]
    transform = Affine(*terms)
    if transform.is_degenerate:
        raise ApiError(400, "Invalid grid.affineTransform: the transform is degenerate.")
    return transform


def _parse_crs(grid: dict[str, Any], native: CRS) -> CRS:
    code, wkt = grid.get("crsCode"), grid.get("crsWkt")
    if code and wkt:
        raise ApiError(400, "Only one of grid.crsCode and grid.crsWkt may be given.")
    if not code and not wkt:
        return native  # GDAL's EEDAI driver relies on this
    try:
        return CRS.from_user_input(code) if code else CRS.from_wkt(wkt)
    except (CRSError, TypeError, ValueError):
        raise ApiError(400, f"Invalid CRS: {code or wkt!r}.") from None


def _parse_dimensions(spec: Any) -> tuple[int, int]:
    if not isinstance(spec, dict):
        raise ApiError(400, "Invalid grid.dimensions: expected an object.")
    try:
        width, height = int(spec.get("width", 0)), int(spec.get("height", 0))
    except (TypeError, ValueError):
        raise ApiError(400, f"Invalid grid.dimensions: {spec!r}.") from None
    if width <= 0 or height <= 0:
        raise ApiError(400, f"Invalid grid.dimensions: width and height must be > 0, got {spec!r}.")
    return width, height


def _coordinates(geometry: Any) -> Iterator[tuple[float, float]]:
    if isinstance(geometry, dict):
        if geometry.get("type") == "GeometryCollection":
            for member in geometry.get("geometries", []):
                yield from _coordinates(member)
            return
        if geometry.get("type") == "Feature":
            yield from _coordinates(geometry.get("geometry"))
            return
        yield from _coordinates(geometry.get("coordinates"))
    elif isinstance(geometry, list | tuple):
        if len(geometry) >= 2 and all(isinstance(v, int | float) for v in geometry):
            yield float(geometry[0]), float(geometry[1])
        else:
            for member in geometry:
                yield from _coordinates(member)


def _region_bounds(region: Any, crs: CRS) -> tuple[float, float, float, float]:
    points = list(_coordinates(region))
    if not points:
        raise ApiError(400, "Invalid region: no coordinates.")
    lon, lat = np.array(points).T
    x, y = _transformer(_LONLAT, crs).transform(lon, lat)
    x, y = np.asarray(x), np.asarray(y)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ApiError(400, "Invalid region: it cannot be projected to the output CRS.")
    return float(x.min()), float(y.min()), float(x.max()), float(y.max())


def _transformer(src: CRS, dst: CRS) -> Transformer:
    return Transformer.from_crs(src.to_wkt(), dst.to_wkt(), always_xy=True)


def _snap_floor(value: float) -> int:
    nearest = round(value)
    return int(nearest) if abs(value - nearest) < _SNAP else math.floor(value)


def _snap_ceil(value: float) -> int:
    nearest = round(value)
    return int(nearest) if abs(value - nearest) < _SNAP else math.ceil(value)


def _window_of_points(transform: Affine, xs: np.ndarray,
                      ys: np.ndarray) -> tuple[int, int, int, int]:
    """Smallest integer pixel window (col0, row0, width, height) of ``transform`` holding points."""
    inverse = ~transform
    cols, rows = inverse @ (xs, ys)
    col0, row0 = _snap_floor(float(np.min(cols))), _snap_floor(float(np.min(rows)))
    col1, row1 = _snap_ceil(float(np.max(cols))), _snap_ceil(float(np.max(rows)))
    return col0, row0, max(col1 - col0, 1), max(row1 - row0, 1)


def _asset_outline(asset: Asset, crs: CRS) -> tuple[np.ndarray, np.ndarray]:
    """Points along the asset's outer edge, in ``crs``."""
    steps = np.linspace(0.0, 1.0, _EDGE_POINTS)
    w, h = float(asset.width), float(asset.height)
    cols = np.concatenate([steps * w, np.full_like(steps, w), steps * w, np.zeros_like(steps)])
    rows = np.concatenate([np.zeros_like(steps), steps * h, np.full_like(steps, h), steps * h])
    a, b, c, d, e, f = asset.transform[:6]
    xs, ys = a * cols + b * rows + c, d * cols + e * rows + f
    if crs != asset.crs:
        xs, ys = _transformer(asset.crs, crs).transform(xs, ys)
    return np.asarray(xs), np.asarray(ys)


def _native_offset(asset: Asset, crs: CRS, transform: Affine) -> tuple[int, int] | None:
    if crs != asset.crs:
        return None
    native = asset.transform
    tolerance = 1e-9 * max(abs(native.a), abs(native.b), abs(native.d), abs(native.e))
    for mine, theirs in ((transform.a, native.a), (transform.b, native.b),
                         (transform.d, native.d), (transform.e, native.e)):
        if abs(mine - theirs) > tolerance:
            return None
    col, row = ~native @ (transform.c, transform.f)
    col_off, row_off = round(col), round(row)
    if abs(col - col_off) > _SNAP or abs(row - row_off) > _SNAP:
        return None
    return int(col_off), int(row_off)


def resolve_grid(grid: Any, region: Any, asset: Asset) -> OutputGrid:
    """The output grid of a getPixels body's ``grid`` and ``region`` (either may be None)."""
    if grid is not None and not isinstance(grid, dict):
        raise ApiError(400, "Invalid grid: expected an object.")
    grid = grid or {}
    unknown = set(grid) - {"crsCode", "crsWkt", "affineTransform", "dimensions"}
    if unknown:
        raise ApiError(400, f"Invalid grid: unknown fields {sorted(unknown)}.")
    crs = _parse_crs(grid, asset.crs)
    dimensions = _parse_dimensions(grid["dimensions"]) if "dimensions" in grid else None
    if "affineTransform" in grid:
        transform = _parse_affine(grid["affineTransform"])
    elif crs == asset.crs:
        transform = asset.transform
    elif region is not None and dimensions is not None:
        transform = Affine.identity()  # replaced below by the region's bounds
    else:
        raise ApiError(400, "grid.affineTransform is required for a CRS other than the asset's.")

    if region is not None:
        xmin, ymin, xmax, ymax = _region_bounds(region, crs)
        if dimensions is not None:
            # The region's bounding box rescaled onto the requested dimensions.
            width, height = dimensions
            transform = Affine.translation(xmin, ymax) @ Affine.scale(
                (xmax - xmin) / width, (ymin - ymax) / height)
        else:
            xs = np.array([xmin, xmax, xmax, xmin])
            ys = np.array([ymin, ymin, ymax, ymax])
            col0, row0, width, height = _window_of_points(transform, xs, ys)
            transform = transform @ Affine.translation(col0, row0)
    elif dimensions is not None:
        width, height = dimensions
    else:
        col0, row0, width, height = _window_of_points(transform, *_asset_outline(asset, crs))
        transform = transform @ Affine.translation(col0, row0)
    return OutputGrid(crs, transform, width, height, _native_offset(asset, crs, transform))


def source_indices(grid: OutputGrid, asset: Asset) -> tuple[np.ndarray, np.ndarray]:
    """Native (rows, cols) of the source pixel under each output pixel's centre."""
    centre_cols = np.arange(grid.width, dtype=np.float64) + 0.5
    centre_rows = np.arange(grid.height, dtype=np.float64) + 0.5
    t = grid.transform
    xs = t.a * centre_cols[None, :] + t.b * centre_rows[:, None] + t.c
    ys = t.d * centre_cols[None, :] + t.e * centre_rows[:, None] + t.f
    if grid.crs != asset.crs:
        xs, ys = _transformer(grid.crs, asset.crs).transform(xs, ys)
    inverse = ~asset.transform
    cols = inverse.a * xs + inverse.b * ys + inverse.c
    rows = inverse.d * xs + inverse.e * ys + inverse.f
    # Non-finite (unprojectable) centres land outside the asset, i.e. read as 0.
    bad = ~(np.isfinite(cols) & np.isfinite(rows))
    cols = np.where(bad, -1.0, cols)
    rows = np.where(bad, -1.0, rows)
    return np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64)


def read_grid(asset: Asset, band_indexes: Sequence[int],
              grid: OutputGrid) -> tuple[list[np.ndarray], bool]:
    """Pixels of the bands on the output grid, and whether every pixel lies inside the asset."""
    if grid.native_offset is not None:
        col_off, row_off = grid.native_offset
        window = PixelWindow(row_off, col_off, grid.height, grid.width)
        inside = window.clipped(asset.height, asset.width) == window
        return asset.read_window(band_indexes, window), inside
    rows, cols = source_indices(grid, asset)
    return asset.read_points(band_indexes, rows, cols), asset.covers(rows, cols)
