"""`dimensions: [width, height]`: the whole region at a requested size, tiled like any grid and
bit-exact against the per-pixel-centre reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from affine import Affine
from pyproj import Transformer

from bulkpix.emulator import EmulatorConfig, run_emulator
from bulkpix.errors import JobError
from bulkpix.geometry.grid import sized_grid
from bulkpix.job import parse_job
from bulkpix.pipeline import run_job
from bulkpix.planning import parse_asset, plan_item
from tests.conftest import SRC_CRS, SRC_TRANSFORM, mixed_arrays, write_tif

ASSET = "projects/demo/assets/src"
BASE = {"asset": ASSET, "output": "out.zarr"}


# -- the grid --------------------------------------------------------------------------


def test_sized_grid_spans_the_bounds_at_the_requested_size() -> None:
    grid = sized_grid("EPSG:3857", (300, 200), (1000.0, 2000.0, 1600.0, 2500.0))
    assert (grid.width, grid.height) == (300, 200)
    # Pixel size is the extent over the dimensions, per axis: 2 x 2.5 here, not square.
    assert grid.transform == Affine(2.0, 0.0, 1000.0, 0.0, -2.5, 2500.0)
    assert grid.footprint_bounds() == (1000.0, 2000.0, 1600.0, 2500.0)


def test_sized_grid_is_not_snapped_to_any_lattice() -> None:
    bounds = (600003.7, 5195001.1, 604987.3, 5199999.9)
    grid = sized_grid(SRC_CRS, (97, 41), bounds)
    assert grid.transform.c == bounds[0] and grid.transform.f == bounds[3]
    assert grid.transform.a == (bounds[2] - bounds[0]) / 97
    assert grid.transform.e == -(bounds[3] - bounds[1]) / 41


@pytest.mark.parametrize(
    ("dimensions", "bounds", "message"),
    [
        ((10, 10), (5.0, 1.0, 5.0, 2.0), "no area"),
        ((0, 10), (0.0, 0.0, 1.0, 1.0), "positive int"),
    ],
)
def test_sized_grid_refuses(
    dimensions: tuple[int, int], bounds: tuple[float, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        sized_grid("EPSG:3857", dimensions, bounds)


# -- the job file ----------------------------------------------------------------------


def test_dimensions_and_scale_exclude_each_other() -> None:
    with pytest.raises(JobError, match="give scale or dimensions, not both"):
        parse_job({**BASE, "scale": 10, "dimensions": [100, 100]})
    with pytest.raises(JobError, match=r"items\.0.*give scale or dimensions, not both"):
        parse_job(
            {"output": "o.zarr", "items": [{"asset": ASSET, "scale": 10, "dimensions": [100, 100]}]}
        )


@pytest.mark.parametrize("value", [[0, 10], [10], [10, 10, 10], [2**24 + 1, 10], "10x10"])
def test_bad_dimensions_are_one_line(value: Any) -> None:
    with pytest.raises(JobError, match="dimensions") as caught:
        parse_job({**BASE, "dimensions": value})
    assert "\n" not in str(caught.value)


def test_an_item_choosing_one_drops_the_shared_other() -> None:
    job = parse_job(
        {
            "output": "o.zarr",
            "crs": "EPSG:3857",
            "scale": 30,
            "items": [
                {"asset": "A/B", "name": "sized", "dimensions": [512, 256]},
                {"asset": "A/C", "name": "scaled"},
            ],
        }
    )
    sized, scaled = job.resolved_items()
    assert (sized.dimensions, sized.scale) == ((512, 256), None)
    assert (scaled.dimensions, scaled.scale) == (None, 30)
    shared = parse_job(
        {"output": "o.zarr", "dimensions": [64, 64], "items": [{"asset": "A/B", "scale": 5}]}
    )
    [item] = shared.resolved_items()
    assert (item.dimensions, item.scale) == (None, 5)


# -- planning (pure) -------------------------------------------------------------------


def _asset(width: int = 900, height: int = 700) -> Any:
    t = SRC_TRANSFORM
    grid = {
        "crsCode": SRC_CRS,
        "affineTransform": {"scaleX": t.a, "translateX": t.c, "scaleY": t.e, "translateY": t.f},
        "dimensions": {"width": width, "height": height},
    }
    return parse_asset(
        {"bands": [{"id": "B1", "dataType": {"precision": "FLOAT"}, "grid": grid}]}, ASSET
    )


def test_plan_without_region_is_the_asset_footprint_at_that_size() -> None:
    job = parse_job({**BASE, "dimensions": [300, 100], "chunk": 64})
    plan = plan_item(job.resolved_items()[0], _asset(), job)
    # 900 x 700 px of 10 m: 9000 m x 7000 m, rescaled to 300 x 100.
    assert plan.grid.crs == SRC_CRS
    assert plan.grid.transform == Affine(30.0, 0.0, 600000.0, 0.0, -70.0, 5200000.0)
    assert (plan.grid.width, plan.grid.height) == (300, 100)
    assert plan.tiles.height == 100 and plan.tiles.width == 300


def test_plan_with_a_region_in_another_crs_uses_its_bounding_box_there() -> None:
    region = {"bbox": [601000.0, 5194000.0, 612000.0, 5199000.0], "region_crs": SRC_CRS}
    job = parse_job({**BASE, "crs": "EPSG:3857", "region": region, "dimensions": [400, 250]})
    plan = plan_item(job.resolved_items()[0], _asset(), job)
    # The region's (densified) box in EPSG:3857, not clipped to the asset, which ends at
    # x = 609000: the part outside is fill.
    to_web = Transformer.from_crs(SRC_CRS, "EPSG:3857", always_xy=True)
    xs, ys = to_web.transform(
        np.r_[np.linspace(601000, 612000, 50), np.linspace(601000, 612000, 50),
              [601000] * 50, [612000] * 50],
        np.r_[[5194000] * 50, [5199000] * 50,
              np.linspace(5194000, 5199000, 50), np.linspace(5194000, 5199000, 50)],
    )
    t = plan.grid.transform
    assert t.b == 0 and t.d == 0  # north-up
    assert t.c == pytest.approx(min(xs), abs=1e-3) and t.f == pytest.approx(max(ys), abs=1e-3)
    assert t.a == pytest.approx((max(xs) - min(xs)) / 400, rel=1e-9)
    assert -t.e == pytest.approx((max(ys) - min(ys)) / 250, rel=1e-9)


def test_a_region_off_the_asset_is_refused() -> None:
    region = {"bbox": [700000.0, 5194000.0, 701000.0, 5199000.0], "region_crs": SRC_CRS}
    job = parse_job({**BASE, "region": region, "dimensions": [10, 10]})
    with pytest.raises(JobError, match="does not overlap"):
        plan_item(job.resolved_items()[0], _asset(), job)


def test_dimensions_over_the_side_limit_are_refused() -> None:
    job = parse_job({**BASE, "dimensions": [2**24, 1]})
    plan = plan_item(job.resolved_items()[0], _asset(), job)
    assert plan.grid.width == 2**24  # the limit itself is allowed
    with pytest.raises(JobError, match="dimensions"):
        parse_job({**BASE, "dimensions": [2**24 + 1, 1]})


# -- end to end, bit-exact ---------------------------------------------------------------


def _nearest_reference(
    source: np.ndarray, dst_transform: Affine, dst_crs: str, shape: tuple[int, int]
) -> np.ndarray:
    """Each output pixel takes the source pixel under its centre (from the whole grid's
    transform, not the tile's); outside the source it is 0."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    xs, ys = dst_transform @ (cols + 0.5, rows + 0.5)
    if dst_crs != SRC_CRS:
        xs, ys = Transformer.from_crs(dst_crs, SRC_CRS, always_xy=True).transform(xs, ys)
    fc, fr = ~SRC_TRANSFORM @ (xs, ys)
    c = np.floor(fc).astype(np.int64)
    r = np.floor(fr).astype(np.int64)
    inside = (r >= 0) & (r < source.shape[0]) & (c >= 0) & (c < source.shape[1])
    out = np.zeros(shape, source.dtype)
    out[inside] = source[r[inside], c[inside]]
    return out


@pytest.fixture
def mixed_files(tmp_path: Path) -> tuple[list[str], list[np.ndarray]]:
    arrays = mixed_arrays(700, 900, seed=5)
    paths = [str(write_tif(tmp_path / f"b{i}.tif", [a])) for i, a in enumerate(arrays)]
    return paths, arrays


async def _run(url: str, tmp_path: Path, **keys: Any) -> tuple[xr.Dataset, Any]:
    output = tmp_path / "out.zarr"
    job = parse_job(
        {"asset": ASSET, "output": str(output), "endpoint": url, "credentials": "none",
         "concurrency": 8, **keys}
    )
    stats = await run_job(job)
    assert stats.ok, [i.failed for i in stats.items]
    return xr.open_zarr(output, decode_coords="all"), stats


async def test_other_crs_and_a_lonlat_region_at_a_given_size_is_bit_exact(
    tmp_path: Path, mixed_files: tuple[list[str], list[np.ndarray]]
) -> None:
    paths, arrays = mixed_files
    to_lonlat = Transformer.from_crs(SRC_CRS, "EPSG:4326", always_xy=True)
    # A box reaching past the asset's east edge (x = 609000): that part comes back as 0.
    lon0, lat0 = to_lonlat.transform(601500.0, 5194500.0)
    lon1, lat1 = to_lonlat.transform(610500.0, 5199500.0)
    region = [min(lon0, lon1), min(lat0, lat1), max(lon0, lon1), max(lat0, lat1)]
    async with run_emulator(EmulatorConfig(assets={ASSET: paths})) as emu:
        ds, stats = await _run(
            emu.url, tmp_path, crs="EPSG:3857", region=region, dimensions=[333, 250],
            chunk=64, tile=[64, 128],
        )
    assert stats.total == 4 * 3  # 250 rows in 64-row tiles, 333 columns in 128-column tiles
    assert ds["B1"].shape == (250, 333)
    transform = ds["B1"].rio.transform()
    assert transform.b == 0 and transform.d == 0
    for band, source in zip(["B1", "B2", "B3"], arrays, strict=True):
        expected = _nearest_reference(source, transform, "EPSG:3857", (250, 333))
        np.testing.assert_array_equal(ds[band].values, expected)
    assert (ds["B1"].values[:, -1] == 0).all()  # past the asset's edge


async def test_whole_asset_downsampled_in_its_own_crs_is_bit_exact(
    tmp_path: Path, mixed_files: tuple[list[str], list[np.ndarray]]
) -> None:
    paths, arrays = mixed_files
    async with run_emulator(EmulatorConfig(assets={ASSET: paths})) as emu:
        ds, stats = await _run(
            emu.url, tmp_path, dimensions=[257, 129], chunk=64, tile=[64, 64]
        )
    assert stats.total == 3 * 5  # 129 rows and 257 columns in 64 px chunks: tiled
    transform = ds["B1"].rio.transform()
    assert transform == Affine(9000 / 257, 0.0, 600000.0, 0.0, -7000 / 129, 5200000.0)
    assert ds.rio.crs.to_epsg() == 32633
    for band, source in zip(["B1", "B2", "B3"], arrays, strict=True):
        expected = _nearest_reference(source, transform, SRC_CRS, (129, 257))
        np.testing.assert_array_equal(ds[band].values, expected)
