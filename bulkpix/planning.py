"""From a job item and its asset's metadata to an output grid and a tile plan.

Pure: the asset's metadata comes in as the JSON the service returned; nothing here does I/O
beyond reading a region file named by the job.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bulkpix import __version__
from bulkpix.assets import asset_name
from bulkpix.dtypes import BandSpec, numpy_dtype, request_bytes_per_pixel
from bulkpix.errors import JobError
from bulkpix.geometry.grid import (
    PixelGrid,
    aligned_grid,
    describe_bounds,
    native_subgrid,
    region_bounds,
    same_crs,
)
from bulkpix.geometry.tiling import ServiceModel, TilePlan, plan_tiles
from bulkpix.job import ItemSpec, Job

__all__ = [
    "AssetInfo",
    "ItemPlan",
    "parse_asset",
    "plan_item",
    "replan_with_tile",
    "tile_plan_from_fingerprint",
]


# 16.7 million px a side: the whole Earth at 2.4 m. Past that a typo in `scale` is likelier
# than a real job, and the coordinate arrays alone would take gigabytes.
MAX_OUTPUT_SIDE = 2**24


@dataclass(frozen=True)
class AssetInfo:
    """What one GET of an image asset tells us."""

    name: str
    bands: tuple[BandSpec, ...]
    grids: Mapping[str, PixelGrid]
    update_time: str | None


@dataclass(frozen=True)
class ItemPlan:
    """One item, ready to fetch: where it goes, its grid, its tiles."""

    name: str | None  # None: a single-item job at the root of the store
    asset: str
    bands: tuple[BandSpec, ...]
    grid: PixelGrid
    tiles: TilePlan
    file_format: str
    workload_tag: str | None

    @property
    def path(self) -> str:
        return self.name or ""

    @property
    def label(self) -> str:
        return self.name or self.asset.rsplit("/", 1)[-1]

    def band_ids(self, group: int) -> list[str]:
        return [self.bands[i].id for i in self.tiles.band_groups[group]]

    def fingerprint(self, compression_level: int) -> dict[str, Any]:
        """What must not change between runs writing into the same output."""
        t = self.grid.transform
        return {
            "asset": self.asset,
            "bands": [b.id for b in self.bands],
            "dtypes": [b.dtype.name for b in self.bands],
            "crs": self.grid.crs,
            "transform": [t.a, t.b, t.c, t.d, t.e, t.f],
            "shape": [self.grid.height, self.grid.width],
            "chunk": self.tiles.chunk,
            "tile": [self.tiles.tile_height, self.tiles.tile_width],
            "band_groups": [list(g) for g in self.tiles.band_groups],
            "codec": f"zstd-{compression_level}",
            "n_tiles": self.tiles.n_tiles,
            "bulkpix": __version__.split(".")[0],
        }


def parse_asset(metadata: Mapping[str, Any], requested_name: str) -> AssetInfo:
    """Band types and grids of an image asset, from its proto3-JSON metadata."""
    kind = metadata.get("type", "IMAGE")
    if kind != "IMAGE":
        raise JobError(f"asset {requested_name} is a {kind}, not an IMAGE")
    raw_bands = metadata.get("bands") or []
    if not raw_bands:
        raise JobError(f"asset {requested_name} has no bands")
    bands = []
    grids = {}
    for band in raw_bands:
        band_id = band["id"]
        try:
            dtype = numpy_dtype(band.get("dataType"))
        except ValueError as exc:
            raise JobError(f"asset {requested_name}, band {band_id}: {exc}") from None
        bands.append(BandSpec(band_id, dtype))
        if "grid" in band:
            grids[band_id] = PixelGrid.from_ee(band["grid"])
    return AssetInfo(
        name=metadata.get("name", requested_name),
        bands=tuple(bands),
        grids=grids,
        update_time=metadata.get("updateTime"),
    )


def _select_bands(spec: ItemSpec, asset: AssetInfo) -> tuple[BandSpec, ...]:
    if spec.bands is None:
        return asset.bands
    by_id = {b.id: b for b in asset.bands}
    missing = [b for b in spec.bands if b not in by_id]
    if missing:
        have = ", ".join(by_id)
        raise JobError(f"asset {asset.name} has no band {', '.join(missing)} (it has: {have})")
    return tuple(by_id[b] for b in spec.bands)


def _output_grid(spec: ItemSpec, asset: AssetInfo, native: PixelGrid, base_dir: Any) -> PixelGrid:
    crs = spec.crs or native.crs
    native_scale = (abs(native.transform.a), abs(native.transform.e))
    is_native_crs = same_crs(crs, native.crs)
    north_up = native.transform.b == 0 and native.transform.d == 0
    use_native = is_native_crs and (
        spec.scale is None or (north_up and native_scale == (spec.scale, spec.scale))
    )
    if not is_native_crs and spec.scale is None:
        raise JobError(f"key 'scale' is required when crs ({crs}) is not the asset's own")

    if use_native:
        if spec.region is None:
            return native
        region = spec.region.load_geometry(base_dir)
        bounds = region_bounds(region, spec.region.region_crs, native.crs)
        grid = native_subgrid(native, bounds)
        if grid is None:
            raise JobError(_miss(spec, asset, native, region))
        return grid

    assert spec.scale is not None
    footprint = native.footprint_bounds(crs)
    if spec.region is None:
        bounds = footprint
    else:
        region = spec.region.load_geometry(base_dir)
        rb = region_bounds(region, spec.region.region_crs, crs)
        bounds = (
            max(rb[0], footprint[0]),
            max(rb[1], footprint[1]),
            min(rb[2], footprint[2]),
            min(rb[3], footprint[3]),
        )
        if bounds[0] >= bounds[2] or bounds[1] >= bounds[3]:
            raise JobError(_miss(spec, asset, native, region))
    return aligned_grid(crs, spec.scale, bounds)


def _miss(spec: ItemSpec, asset: AssetInfo, native: PixelGrid, region: Any) -> str:
    """Why nothing is left of the region: both extents, in the region's own CRS."""
    assert spec.region is not None
    region_crs = spec.region.region_crs
    try:
        theirs = region_bounds(region, region_crs, region_crs)
        extent = native.footprint_bounds(region_crs)
    except ValueError:  # the asset's extent has no image in the region's CRS
        return f"the region does not overlap asset {asset.name}"
    swapped = (theirs[1], theirs[0], theirs[3], theirs[2])
    hint = ""
    if _intersect(swapped, extent):
        hint = "; with x and y swapped it would: lon/lat order is [lon, lat, lon, lat]"
    return (
        f"the region does not overlap asset {asset.name}: region {describe_bounds(theirs)}, "
        f"asset {describe_bounds(extent)} (both [xmin, ymin, xmax, ymax] in {region_crs}){hint}"
    )


def _intersect(a: Sequence[float], b: Sequence[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def plan_item(spec: ItemSpec, asset: AssetInfo, job: Job) -> ItemPlan:
    """Choose the output grid and cut it into tiles. Raises JobError for impossible items."""
    bands = _select_bands(spec, asset)
    native = asset.grids.get(bands[0].id)
    if native is None:
        raise JobError(f"asset {asset.name}: band {bands[0].id} has no grid")
    try:
        grid = _output_grid(spec, asset, native, job.base_dir)
    except JobError:
        raise
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        # A malformed GeoJSON region, a degenerate grid (a scale of 1e-300), ...
        raise JobError(f"cannot make the output grid: {exc}") from None
    if max(grid.width, grid.height) > MAX_OUTPUT_SIDE:
        raise JobError(
            f"the output grid would be {grid.width} x {grid.height} px, over the "
            f"{MAX_OUTPUT_SIDE:,} px a side bulkpix handles; use a coarser scale or a "
            "smaller region"
        )
    if job.file_format == "GEO_TIFF" and len({b.dtype for b in bands}) > 1:
        kinds = ", ".join(f"{b.id}={b.dtype.name}" for b in bands)
        raise JobError(f"file_format GEO_TIFF needs one data type for all bands ({kinds}); use NPY")
    itemsizes = [b.dtype.itemsize for b in bands]
    tiles = plan_tiles(
        grid.height,
        grid.width,
        itemsizes,
        job.chunk,
        job.tile,
        concurrency=job.concurrency,
        qps=job.qps,
        service=ServiceModel(job.service_model.base_s, job.service_model.per_mb_s),
        max_inflight_bytes=job.memory_mb * 2**20,
    )
    return ItemPlan(
        name=spec.name,
        asset=asset_name(spec.asset or ""),
        bands=bands,
        grid=grid,
        tiles=tiles,
        file_format=job.file_format,
        workload_tag=spec.workload_tag,
    )


def request_body(item: ItemPlan, grid: PixelGrid, band_ids: Sequence[str]) -> dict[str, Any]:
    """The getPixels body for one tile."""
    body: dict[str, Any] = {
        "fileFormat": item.file_format,
        "bandIds": list(band_ids),
        "grid": grid.to_ee(),
    }
    if item.workload_tag:
        body["workloadTag"] = item.workload_tag
    return body


def item_request_bytes(item: ItemPlan) -> int:
    """Bytes of pixels (as the service counts) for the whole item."""
    return (
        item.grid.width
        * item.grid.height
        * request_bytes_per_pixel([np.dtype(b.dtype) for b in item.bands])
    )


def replan_with_tile(plan: ItemPlan, tile: Any) -> ItemPlan:
    """The same item cut into tiles of ``tile`` = [height, width] (from an earlier run's
    fingerprint); the plan as it is when that shape does not fit it."""
    if not (isinstance(tile, list | tuple) and len(tile) == 2):
        return plan
    height, width = (int(v) for v in tile)
    if (height, width) == (plan.tiles.tile_height, plan.tiles.tile_width):
        return plan
    try:
        tiles = TilePlan(
            plan.tiles.height,
            plan.tiles.width,
            plan.tiles.chunk,
            height,
            width,
            plan.tiles.band_groups,
            plan.tiles.itemsizes,
        )
    except ValueError:
        return plan
    return dataclasses.replace(plan, tiles=tiles)


def tile_plan_from_fingerprint(fingerprint: Mapping[str, Any]) -> TilePlan | None:
    """The tiling an output was written with, from its fingerprint (None if unreadable)."""
    try:
        height, width = fingerprint["shape"]
        tile_height, tile_width = fingerprint["tile"]
        groups = tuple(tuple(int(i) for i in g) for g in fingerprint["band_groups"])
        return TilePlan(
            int(height),
            int(width),
            int(fingerprint["chunk"]),
            int(tile_height),
            int(tile_width),
            groups,
        )
    except (KeyError, TypeError, ValueError):
        return None
