"""Collections: the job keys, listing, mosaics and their resume (issue #12)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from bulkpix.errors import JobError
from bulkpix.job import Job, parse_job
from bulkpix.pipeline import run_job

BASE: dict[str, Any] = {"output": "out.zarr", "endpoint": "emulator"}
COLL = "projects/p/assets/coll"


def test_a_collection_item_resolves_with_its_defaults() -> None:
    dates = ["2024-01-01", "2024-02-01T12:00:00+01:00"]
    job = parse_job({**BASE, "collection": COLL, "dates": dates})
    (item,) = job.resolved_items()
    assert (item.asset, item.collection, item.source) == ("", COLL, COLL)
    assert (item.layout_name, item.mosaic_rule) == ("mosaic", "last")
    assert item.time_range() == ("2024-01-01T00:00:00Z", "2024-02-01T11:00:00Z")


def test_a_batch_mixes_assets_and_collections() -> None:
    job = parse_job({**BASE, "items": [
        {"collection": COLL, "layout": "items"}, {"asset": "projects/p/assets/a"}]})
    first, second = job.resolved_items()
    assert (first.source, first.layout_name) == (COLL, "items")
    assert (second.source, second.layout_name, second.collection) == (
        "projects/p/assets/a", None, None)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"asset": "projects/p/assets/a", "collection": COLL}, "asset or collection, not both"),
        ({}, "asset is missing"),
        ({"collection": COLL, "dates": ["2024-03-01", "2024-02-01"]}, "start must come before"),
        ({"collection": COLL, "dates": ["2024-03-01", "2024-03-01"]}, "start must come before"),
        ({"collection": COLL, "dates": ["2024-03-01", "March"]}, "not a date"),
        ({"collection": COLL, "layout": "cube"}, "layout cube is not supported yet"),
        ({"collection": COLL, "layout": "items", "mosaic": "min"}, "mosaic goes with layout"),
        ({"asset": "projects/p/assets/a", "filter": "x < 1"}, "filter goes with collection"),
        ({"collection": COLL, "mosaic": "median"}, "mosaic"),
    ],
)
def test_bad_collection_keys_are_one_line(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(JobError, match=message) as caught:
        parse_job({**BASE, **extra})
    assert "\n" not in str(caught.value)


# --------------------------------------------------------------------------- mosaics

# 2 x 2 tiles of 96 px at 30 m (overlapping by 16 px), over 2 days, in two UTM zones (their
# grids repeat around the same corner near 12 E, the zones' border): 16 overlapping images.
SYNTH: dict[str, Any] = {
    "tiles": [2, 2], "tile_size": 96, "overlap": 16, "scale": 30, "dates": 2,
    "start": "2024-05-01", "crs": ["EPSG:32632", "EPSG:32633"], "origin": [11.98, 46.0],
}
# Crosses tile edges and both zones' grids; a little past the images in the north-west.
REGION = [11.975, 45.96, 12.02, 46.004]
SCALE = 0.0004  # degrees: a 113 x 110 px output


def _mosaic_job(tmp_path: Path, name: str = "out.zarr", **keys: Any) -> Job:
    data = {
        "output": str(tmp_path / name),
        "endpoint": "emulator",
        "collection": COLL,
        "region": REGION,
        "crs": "EPSG:4326",
        "scale": SCALE,
        "bands": ["u16", "u8"],
        "chunk": 16,
        "tile": [32, 32],
        "emulator": {"collections": {COLL: SYNTH}, "max_qps": None},
        **keys,
    }
    return parse_job(data, base_dir=tmp_path)


def _reference(job: Job, rule: str) -> dict[str, np.ndarray]:
    """The mosaic computed over the whole grid at once: each image resampled (pixel centre,
    nearest) onto the output grid in one piece, then combined pixel by pixel with ``rule``."""
    from rasterio.crs import CRS as RioCRS

    from bulkpix.emulator.collections import build_collection
    from bulkpix.emulator.config import SyntheticCollection
    from bulkpix.emulator.resample import OutputGrid, read_grid
    from bulkpix.geometry.grid import aligned_grid, region_bounds

    spec = SyntheticCollection(
        tiles=(2, 2), tile_size=96, overlap=16, scale=30, dates=2, start="2024-05-01",
        crs=("EPSG:32632", "EPSG:32633"), origin=(11.98, 46.0))
    collection = build_collection(COLL, spec)
    images = sorted(collection.images, key=lambda i: (i.start, i.asset.name))
    union = (min(i.bbox[0] for i in images), min(i.bbox[1] for i in images),
             max(i.bbox[2] for i in images), max(i.bbox[3] for i in images))
    bounds = region_bounds(list(union), "EPSG:4326", "EPSG:4326")
    clipped = (max(REGION[0], bounds[0]), max(REGION[1], bounds[1]),
               min(REGION[2], bounds[2]), min(REGION[3], bounds[3]))
    grid = aligned_grid("EPSG:4326", SCALE, clipped)
    whole = OutputGrid(RioCRS.from_epsg(4326), grid.transform, grid.width, grid.height, None)
    out: dict[str, np.ndarray] = {}
    for band in ("u16", "u8"):
        stack = []
        for image in images:
            (values,), _ = read_grid(image.asset, [image.asset.band_index(band) or 0], whole)
            stack.append(values)
        cube = np.stack(stack)
        valid = cube != 0
        if rule in ("last", "first"):
            order = range(len(images)) if rule == "first" else reversed(range(len(images)))
            result = np.zeros(cube.shape[1:], cube.dtype)
            done = np.zeros(cube.shape[1:], bool)
            for index in order:
                take = valid[index] & ~done
                result[take] = cube[index][take]
                done |= take
        elif rule == "min":
            big = np.where(valid, cube, np.iinfo(cube.dtype).max)
            result = np.where(valid.any(0), big.min(0), 0).astype(cube.dtype)
        else:
            result = np.where(valid, cube, 0).max(0).astype(cube.dtype)
        out[band] = result
    assert (out["u16"] == 0).any() and (out["u16"] != 0).mean() > 0.5  # the test means something
    return out


def _read(output: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(output), mode="r")
    return {band: np.asarray(group[band][:]) for band in ("u16", "u8")}


@pytest.mark.parametrize("rule", ["last", "min"])
def test_a_mosaic_across_two_utm_zones_equals_the_whole_grid_reference(
    tmp_path: Path, rule: str
) -> None:
    job = _mosaic_job(tmp_path, mosaic=rule)
    stats = asyncio.run(run_job(job))
    assert stats.ok, stats
    got, want = _read(tmp_path / "out.zarr"), _reference(job, rule)
    for band in want:
        assert got[band].shape == want[band].shape
        np.testing.assert_array_equal(got[band], want[band])
