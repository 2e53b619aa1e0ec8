"""Assets the emulator serves: raster files on one grid, or synthetic virtual images.

An asset knows its native grid and bands and can read (a) a native window, boundless, and
(b) pixels at arbitrary native (row, col) pairs for resampling. Outside the asset is 0.
Reads run in worker threads, so file datasets are opened per read (rasterio handles are not
shareable between threads).
"""

from __future__ import annotations

import datetime as dt
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window as RioWindow

from bulkpix.dtypes import ee_data_type
from bulkpix.emulator.config import EmulatorConfig, SyntheticAsset
from bulkpix.emulator.synthetic import SYNTHETIC_BANDS, synthetic_at, synthetic_pixels

__all__ = [
    "Asset",
    "Band",
    "FileAsset",
    "PixelWindow",
    "SyntheticImage",
    "affine_to_ee",
    "crs_to_ee",
    "load_assets",
]

_SYNTHETIC_UPDATE_TIME = "2024-01-01T00:00:00Z"


@dataclass(frozen=True)
class Band:
    id: str
    dtype: np.dtype
    # What the asset says of the band beyond its type (from a file's band metadata):
    # served as the band's units, description, scale and offset.
    units: str | None = None
    description: str | None = None
    scale: float = 1.0
    offset: float = 0.0

    def extra_metadata(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.units:
            out["units"] = self.units
        if self.description:
            out["description"] = self.description
        if self.scale != 1.0 or self.offset != 0.0:  # proto3 style: defaults left out
            out["scale"] = _ee_number(self.scale)
            if self.offset:
                out["offset"] = _ee_number(self.offset)
        return out


@dataclass(frozen=True)
class PixelWindow:
    """An integer window in native pixel coordinates; may reach outside the asset."""

    row_off: int
    col_off: int
    height: int
    width: int

    def clipped(self, height: int, width: int) -> PixelWindow | None:
        row0, col0 = max(self.row_off, 0), max(self.col_off, 0)
        row1 = min(self.row_off + self.height, height)
        col1 = min(self.col_off + self.width, width)
        if row1 <= row0 or col1 <= col0:
            return None
        return PixelWindow(row0, col0, row1 - row0, col1 - col0)


def _ee_number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else float(value)


def affine_to_ee(transform: Affine) -> dict[str, float | int]:
    """Proto3 JSON of an affine: zero terms are left out."""
    names = ("scaleX", "shearX", "translateX", "shearY", "scaleY", "translateY")
    return {n: _ee_number(v) for n, v in zip(names, tuple(transform)[:6], strict=True) if v}


def crs_to_ee(crs: CRS) -> dict[str, str]:
    epsg = crs.to_epsg()
    if epsg is not None and CRS.from_epsg(epsg) == crs:
        return {"crsCode": f"EPSG:{epsg}"}
    return {"crsWkt": crs.to_wkt()}


class Asset(ABC):
    """One image asset on one native grid."""

    def __init__(self, name: str, crs: CRS, transform: Affine, width: int, height: int,
                 bands: Sequence[Band], update_time: str) -> None:
        ids = [b.id for b in bands]
        if len(set(ids)) != len(ids):
            raise ValueError(f"asset {name}: duplicate band ids {ids}")
        self.name = name
        self.crs = crs
        self.transform = transform
        self.width = width
        self.height = height
        self.bands = list(bands)
        self.update_time = update_time

    def band_index(self, band_id: str) -> int | None:
        for i, band in enumerate(self.bands):
            if band.id == band_id:
                return i
        return None

    def metadata(self) -> dict[str, Any]:
        """The asset as Earth Engine's GET answers it."""
        grid = {
            **crs_to_ee(self.crs),
            "affineTransform": affine_to_ee(self.transform),
            "dimensions": {"width": self.width, "height": self.height},
        }
        size = self.width * self.height * sum(b.dtype.itemsize for b in self.bands)
        return {
            "type": "IMAGE",
            "name": self.name,
            "id": _asset_id(self.name),
            "updateTime": self.update_time,
            "sizeBytes": str(size),
            "bands": [
                {"id": b.id, "dataType": ee_data_type(b.dtype), "grid": grid,
                 "pyramidingPolicy": "MEAN", **b.extra_metadata()}
                for b in self.bands
            ],
        }

    def read_window(self, band_indexes: Sequence[int], window: PixelWindow) -> list[np.ndarray]:
        """Bands over a native window; zeros where the window leaves the asset."""
        inside = window.clipped(self.height, self.width)
        if inside == window:  # the common case: no zero padding, no extra copy
            return self._read_inside(band_indexes, window)
        out = [np.zeros((window.height, window.width), self.bands[i].dtype) for i in band_indexes]
        if inside is None:
            return out
        row0, col0 = inside.row_off - window.row_off, inside.col_off - window.col_off
        rows, cols = slice(row0, row0 + inside.height), slice(col0, col0 + inside.width)
        for array, data in zip(out, self._read_inside(band_indexes, inside), strict=True):
            array[rows, cols] = data
        return out

    def read_points(self, band_indexes: Sequence[int], rows: np.ndarray,
                    cols: np.ndarray) -> list[np.ndarray]:
        """Bands at native (rows, cols) pairs of one shape; zeros outside the asset."""
        valid = (rows >= 0) & (rows < self.height) & (cols >= 0) & (cols < self.width)
        out = [np.zeros(rows.shape, self.bands[i].dtype) for i in band_indexes]
        if not valid.any():
            return out
        valid_rows, valid_cols = rows[valid], cols[valid]
        for array, data in zip(out, self._read_points_inside(band_indexes, valid_rows, valid_cols),
                               strict=True):
            array[valid] = data
        return out

    def covers(self, rows: np.ndarray, cols: np.ndarray) -> bool:
        return bool(((rows >= 0) & (rows < self.height) & (cols >= 0) & (cols < self.width)).all())

    @abstractmethod
    def _read_inside(self, band_indexes: Sequence[int], window: PixelWindow) -> list[np.ndarray]:
        """Bands over a window fully inside the asset."""

    @abstractmethod
    def _read_points_inside(self, band_indexes: Sequence[int], rows: np.ndarray,
                            cols: np.ndarray) -> list[np.ndarray]:
        """Bands at 1-D (rows, cols) pairs all inside the asset."""


def _asset_id(name: str) -> str:
    for prefix in ("projects/earthengine-public/assets/", "projects/earthengine-legacy/assets/"):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


class FileAsset(Asset):
    """The bands of several rasterio-readable files on one grid, concatenated."""

    def __init__(self, name: str, paths: Sequence[str]) -> None:
        if not paths:
            raise ValueError(f"asset {name}: no files given")
        bands: list[Band] = []
        self._sources: list[tuple[str, int]] = []  # per band: file, 1-based band index
        grid: tuple[CRS, Affine, int, int] | None = None
        newest = 0.0
        for path in paths:
            try:
                dataset = rasterio.open(path)
            except (rasterio.errors.RasterioIOError, OSError) as exc:
                raise ValueError(f"asset {name}: cannot open {path}: {exc}") from None
            with dataset:
                if dataset.crs is None:
                    raise ValueError(f"asset {name}: {path} has no CRS")
                this_grid = (dataset.crs, dataset.transform, dataset.width, dataset.height)
                if grid is None:
                    grid = this_grid
                elif (this_grid[0] != grid[0] or not this_grid[1].almost_equals(grid[1])
                      or this_grid[2:] != grid[2:]):
                    raise ValueError(f"asset {name}: {path} is not on the grid of {paths[0]}")
                for index, (dtype, description) in enumerate(
                        zip(dataset.dtypes, dataset.descriptions, strict=True), start=1):
                    band_id = description or f"B{len(bands) + 1}"
                    tags = dataset.tags(index)
                    bands.append(Band(
                        band_id, np.dtype(dtype),
                        units=dataset.units[index - 1] or None,
                        description=tags.get("description") or tags.get("DESCRIPTION"),
                        scale=float(dataset.scales[index - 1]),
                        offset=float(dataset.offsets[index - 1]),
                    ))
                    self._sources.append((os.fspath(path), index))
            newest = max(newest, os.path.getmtime(path))
        assert grid is not None
        update_time = dt.datetime.fromtimestamp(newest, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        super().__init__(name, grid[0], grid[1], grid[2], grid[3], bands, update_time)

    def _by_file(self, band_indexes: Sequence[int]) -> dict[str, list[tuple[int, int]]]:
        """file -> [(position in the request, 1-based band in the file)]."""
        groups: dict[str, list[tuple[int, int]]] = {}
        for position, band_index in enumerate(band_indexes):
            path, file_band = self._sources[band_index]
            groups.setdefault(path, []).append((position, file_band))
        return groups

    def _read_inside(self, band_indexes: Sequence[int], window: PixelWindow) -> list[np.ndarray]:
        out: list[np.ndarray] = [np.empty(0)] * len(band_indexes)
        rio_window = RioWindow(window.col_off, window.row_off, window.width, window.height)
        for path, members in self._by_file(band_indexes).items():
            with rasterio.open(path) as dataset:
                data = dataset.read([b for _, b in members], window=rio_window)
            for (position, _), array in zip(members, data, strict=True):
                out[position] = array
        return out

    def _read_points_inside(self, band_indexes: Sequence[int], rows: np.ndarray,
                            cols: np.ndarray) -> list[np.ndarray]:
        # Read the bounding window of the points once, then gather.
        row0, col0 = int(rows.min()), int(cols.min())
        box = PixelWindow(row0, col0, int(rows.max()) - row0 + 1, int(cols.max()) - col0 + 1)
        return [data[rows - row0, cols - col0] for data in self._read_inside(band_indexes, box)]


class SyntheticImage(Asset):
    """A virtual asset whose pixels come from ``synthetic_pixels``; it holds no pixel data."""

    def __init__(self, name: str, spec: SyntheticAsset) -> None:
        bands = [Band(band_id, dtype) for band_id, dtype in SYNTHETIC_BANDS]
        super().__init__(name, CRS.from_user_input(spec.crs), spec.transform, spec.width,
                         spec.height, bands, _SYNTHETIC_UPDATE_TIME)

    def _read_inside(self, band_indexes: Sequence[int], window: PixelWindow) -> list[np.ndarray]:
        rows = np.arange(window.row_off, window.row_off + window.height)
        cols = np.arange(window.col_off, window.col_off + window.width)
        return [synthetic_pixels(i, rows, cols) for i in band_indexes]

    def _read_points_inside(self, band_indexes: Sequence[int], rows: np.ndarray,
                            cols: np.ndarray) -> list[np.ndarray]:
        return [synthetic_at(i, rows, cols) for i in band_indexes]


def load_assets(config: EmulatorConfig) -> dict[str, Asset]:
    """Open every configured asset once (metadata only); raises ValueError on a bad one."""
    assets: dict[str, Asset] = {}
    for name, paths in config.assets.items():
        assets[_checked_name(name)] = FileAsset(name, paths)
    for name, spec in config.synthetic.items():
        if name in assets:
            raise ValueError(f"asset {name} is configured twice")
        assets[_checked_name(name)] = SyntheticImage(name, spec)
    return assets


def _checked_name(name: str) -> str:
    parts = name.split("/")
    if len(parts) < 4 or parts[0] != "projects" or parts[2] != "assets" or not all(parts):
        raise ValueError(f"asset name {name!r} is not of the form projects/PROJECT/assets/ID")
    return name
