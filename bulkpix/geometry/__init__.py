"""Pure pixel-grid geometry and tiling: no aiohttp, zarr or asyncio here.

The names below load with their module on first use (``from bulkpix.geometry import X``
works for each): importing ``bulkpix.geometry.crs`` to check a job's CRS must not bring
numpy in with grid and tiling.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

# Each exported name -> the module it lives in.
_HOMES = {
    "CRS": "crs",
    **dict.fromkeys(
        (
            "PixelGrid",
            "Window",
            "aligned_grid",
            "native_subgrid",
            "native_window",
            "region_bounds",
            "same_crs",
        ),
        "grid",
    ),
    **dict.fromkeys(
        (
            "MAX_BANDS",
            "MAX_REQUEST_BYTES",
            "MAX_SIDE",
            "ServiceModel",
            "Tile",
            "TilePlan",
            "band_groups",
            "parse_tile_key",
            "plan_tiles",
            "split_tile",
        ),
        "tiling",
    ),
}

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


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # the next lookup finds it without coming here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
