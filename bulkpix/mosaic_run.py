"""Mosaic tiles: each output tile assembled from the getPixels calls on the images that meet it,
combined per pixel by the mosaic's rule as the answers come in.

The run (``bulkpix.pipeline``) writes, records and settles the tile; this module only fetches
and combines. numpy, decoding and planning are imported where they are used, as in the
pipeline, so importing this module loads none of them.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from bulkpix.ee.client import EEClient
    from bulkpix.geometry.grid import Window
    from bulkpix.geometry.tiling import Tile
    from bulkpix.job import Job
    from bulkpix.planning import ItemPlan
    from bulkpix.sources import Retry
    from bulkpix.transfer.budget import ByteBudget

__all__ = ["assemble_tile", "assembly_slots"]


def assembly_slots(job: Job, plans: Iterable[ItemPlan]) -> asyncio.Semaphore | None:
    """How many mosaic tiles may be assembled at once: the concurrency over the calls an
    output tile takes on average (at least two, so one tile's slow call never idles the run)."""
    per_tile = [
        plan.mosaic.n_calls / max(1, len(plan.mosaic.buckets))
        for plan in plans
        if plan.mosaic is not None
    ]
    if not per_tile:
        return None
    return asyncio.Semaphore(max(2, math.ceil(job.concurrency / max(1.0, min(per_tile)))))


async def assemble_tile(
    plan: ItemPlan, tile: Tile, client: EEClient, budget: ByteBudget, retry: Retry
) -> tuple[dict[str, np.ndarray], list[int | BaseException]]:
    """One output tile of a mosaic: a getPixels call on each image whose footprint meets it,
    for only the part it covers, combined per pixel by the rule as the answers come in.
    Returns the combined bands and each call's outcome (its payload's size, or what it
    raised): the caller writes the tile only when every call succeeded.

    The rules are independent of arrival order: ``last`` and ``first`` keep, per pixel, the
    value of the highest / lowest image in mosaic order that has one, ``min`` / ``max`` the
    extreme value. A band's nodata (default 0) is no value; a pixel nothing covers is nodata.
    """
    import numpy as np

    from bulkpix.ee.decode import decode_pixels, max_payload_bytes
    from bulkpix.planning import request_body

    mosaic = plan.mosaic
    assert mosaic is not None
    group = plan.tiles.band_groups[tile.group]
    band_ids = [plan.bands[i].id for i in group]
    dtypes = [plan.bands[i].dtype for i in group]
    nodata = [plan.fill_values.get(band, 0) for band in band_ids]
    shape = (tile.window.height, tile.window.width)
    out = {
        band: np.full(shape, fill, dtype)
        for band, fill, dtype in zip(band_ids, nodata, dtypes, strict=True)
    }
    # Per band and pixel: the mosaic position of the image its value came from (-1: none).
    source = {band: np.full(shape, -1, np.int32) for band in band_ids}

    def combine(position: int, part: Window, arrays: dict[str, np.ndarray]) -> None:
        rows = slice(part.row_off - tile.window.row_off, part.row_end - tile.window.row_off)
        cols = slice(part.col_off - tile.window.col_off, part.col_end - tile.window.col_off)
        for band, fill in zip(band_ids, nodata, strict=True):
            values, current, came = arrays[band], out[band][rows, cols], source[band][rows, cols]
            valid = ~np.isnan(values) if fill != fill else values != fill
            if values.dtype.kind == "f" and fill == fill:
                valid &= ~np.isnan(values)
            empty = came < 0
            if mosaic.rule == "last":
                take = valid & (came < position)
            elif mosaic.rule == "first":
                take = valid & (empty | (came > position))
            elif mosaic.rule == "min":
                take = valid & (empty | (values < current))
            else:
                take = valid & (empty | (values > current))
            current[take] = values[take]
            came[take] = position

    async def fetch(position: int, part: Window) -> int:
        image = mosaic.images[position]
        body = request_body(plan, plan.grid.window_grid(part), band_ids)
        most = max_payload_bytes(plan.file_format, band_ids, dtypes, part.height, part.width)

        async def fetch_and_combine() -> int:
            async with (
                client.stream_pixels(image.name, body, max_bytes=most) as response,
                budget.hold(most),
            ):
                payload = await response.read_pixels()
                decode = functools.partial(
                    decode_pixels, payload, plan.file_format, band_ids, dtypes,
                    part.height, part.width,
                )
                # NPY decodes to views (cheap); GeoTIFF off the loop.
                arrays = decode() if plan.file_format == "NPY" else await asyncio.to_thread(decode)
                combine(position, part, arrays)  # no await inside: all of it or none
            return len(payload)

        return await retry(fetch_and_combine)

    outcomes = await asyncio.gather(
        *(fetch(position, part) for position, part in mosaic.meeting(tile.window, tile.step)),
        return_exceptions=True,
    )
    return out, outcomes
