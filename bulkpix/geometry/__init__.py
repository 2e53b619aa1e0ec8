"""Pure pixel-grid geometry and tiling: no aiohttp, zarr or asyncio here."""

from bulkpix.geometry.crs import CRS
from bulkpix.geometry.grid import (
    PixelGrid,
    Window,
    aligned_grid,
    native_subgrid,
    native_window,
    region_bounds,
    same_crs,
)
from bulkpix.geometry.tiling import (
    MAX_BANDS,
    MAX_REQUEST_BYTES,
    MAX_SIDE,
    ServiceModel,
    Tile,
    TilePlan,
    band_groups,
    parse_tile_key,
    plan_tiles,
    split_tile,
)

__all__ = [
    "CRS",
    "MAX_BANDS",
    "MAX_REQUEST_BYTES",
    "MAX_SIDE",
    "PixelGrid",
    "ServiceModel",
    "Tile",
    "TilePlan",
    "Window",
    "aligned_grid",
    "band_groups",
    "native_subgrid",
    "native_window",
    "parse_tile_key",
    "plan_tiles",
    "region_bounds",
    "same_crs",
    "split_tile",
]
