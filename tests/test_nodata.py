"""Per-band `nodata`: the fill value and `_FillValue` (xarray masks it, GDAL reports it);
none declared unless the job says so; the job's band order; the output says when it is
complete."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

import bulkpix
from bulkpix.emulator import EmulatorConfig, run_emulator
from bulkpix.emulator.config import FaultConfig
from bulkpix.errors import JobError
from bulkpix.job import parse_job
from bulkpix.pipeline import run_job
from tests.conftest import mixed_arrays, write_tif

ASSET = "projects/demo/assets/src"


@pytest.fixture
def files(tmp_path: Path) -> tuple[list[str], list[np.ndarray]]:
    """uint8 (B1), int16 (B2), float32 (B3); B2[0, 0] is -1000."""
    arrays = mixed_arrays(300, 400)
    return [str(write_tif(tmp_path / f"b{i}.tif", [a])) for i, a in enumerate(arrays)], arrays


async def run(
    tmp_path: Path, paths: list[str], faults: FaultConfig | None = None, **keys: Any
) -> tuple[Path, Any]:
    output = tmp_path / "out.zarr"
    config = EmulatorConfig(assets={ASSET: paths}, faults=faults or FaultConfig())
    async with run_emulator(config) as emu:
        job = parse_job(
            {
                "asset": ASSET,
                "output": str(output),
                "endpoint": emu.url,
                "credentials": "none",
                "chunk": 128,
                "retries": {"max_attempts": 1},
                **keys,
            }
        )
        stats = await run_job(job)
    return output, stats


def array_metadata(output: Path, band: str) -> dict[str, Any]:
    return json.loads((output / band / "zarr.json").read_text())


async def test_a_bands_nodata_is_its_fill_value_and_xarray_masks_it(
    tmp_path: Path, files: tuple[list[str], list[np.ndarray]]
) -> None:
    paths, arrays = files
    output, stats = await run(tmp_path, paths, nodata={"B2": -1000, "B3": float("nan")})
    assert stats.ok
    b2 = array_metadata(output, "B2")
    assert b2["fill_value"] == -1000 and b2["attributes"]["_FillValue"] == -1000
    ds = xr.open_zarr(output)
    expected = np.where(arrays[1] == -1000, np.nan, arrays[1])
    assert np.isnan(ds["B2"].values[0, 0])  # the one pixel holding the nodata value
    np.testing.assert_array_equal(ds["B2"].values, expected)
    assert ds["B2"].encoding["_FillValue"] == -1000
    assert np.isnan(ds["B3"].encoding["_FillValue"])
    assert array_metadata(output, "B3")["fill_value"] == "NaN"
    # A band without nodata declares none: its zeros stay zeros, no _FillValue.
    b1 = array_metadata(output, "B1")
    assert "_FillValue" not in b1["attributes"]
    assert ds["B1"].dtype == np.uint8
    np.testing.assert_array_equal(ds["B1"].values, arrays[0])


async def test_one_number_is_every_bands_nodata(
    tmp_path: Path, files: tuple[list[str], list[np.ndarray]]
) -> None:
    paths, _ = files
    output, stats = await run(tmp_path, paths, nodata=0)
    assert stats.ok
    ds = xr.open_zarr(output)
    for band in ("B1", "B2", "B3"):
        assert array_metadata(output, band)["fill_value"] == 0
        assert ds[band].encoding["_FillValue"] == 0


async def test_masked_pixels_sent_as_zero_are_masked_with_nodata_zero(
    tmp_path: Path, files: tuple[list[str], list[np.ndarray]]
) -> None:
    """A grid reaching past the asset: the service sends those pixels as 0."""
    paths, _ = files
    # EPSG:4326 around a UTM asset: the corners of the output lie outside it.
    output, stats = await run(tmp_path, paths, nodata={"B1": 0}, crs="EPSG:4326", scale=0.001)
    assert stats.ok
    values = xr.open_zarr(output)["B1"].values
    assert np.isnan(values[0, 0]) and np.isnan(values[-1, -1])
    inside = values[~np.isnan(values)]
    assert inside.size > 0 and inside.min() >= 1  # the source's values are 1..251


async def test_no_nodata_declares_none(
    tmp_path: Path, files: tuple[list[str], list[np.ndarray]]
) -> None:
    paths, _ = files
    output, stats = await run(tmp_path, paths)
    assert stats.ok
    for band in ("B1", "B2", "B3"):
        assert "_FillValue" not in array_metadata(output, band)["attributes"]


@pytest.mark.parametrize(
    ("nodata", "message"),
    [
        ({"B1": 300}, "nodata 300.0 for band B1 is not a uint8 value"),
        ({"B2": 0.5}, "nodata 0.5 for band B2 is not a int16 value"),
        ({"B9": 0}, "nodata names band B9, not an output band"),
    ],
)
async def test_a_nodata_the_band_cannot_hold_is_one_clear_error(
    tmp_path: Path, files: tuple[list[str], list[np.ndarray]], nodata: Any, message: str
) -> None:
    paths, _ = files
    with pytest.raises(JobError, match=message):
        await run(tmp_path, paths, nodata=nodata)
    assert not (tmp_path / "out.zarr").exists()  # refused before the store is made


def test_nodata_must_be_a_number() -> None:
    with pytest.raises(JobError, match="nodata"):
        parse_job({"asset": "a/b", "output": "o.zarr", "nodata": "zero"})


async def test_bands_come_in_the_jobs_order(
    tmp_path: Path, files: tuple[list[str], list[np.ndarray]]
) -> None:
    paths, _ = files
    order = ["B3", "B1", "B2"]
    output, stats = await run(tmp_path, paths, bands=order)
    assert stats.ok
    group = json.loads((output / "zarr.json").read_text())
    assert [b["id"] for b in group["attributes"]["bulkpix"]["bands"]] == order
    assert list(bulkpix.open(output).data_vars) == order


async def test_the_output_says_when_it_is_complete(
    tmp_path: Path, files: tuple[list[str], list[np.ndarray]]
) -> None:
    paths, _ = files
    # Every tile refused (400, permanent): the output exists but is not complete.
    output, stats = await run(tmp_path, paths, faults=FaultConfig(p400=1.0))
    assert not stats.ok
    assert xr.open_zarr(output).attrs["bulkpix"]["complete"] is False
    output, stats = await run(tmp_path, paths)  # the resume fetches the rest
    assert stats.ok
    assert xr.open_zarr(output).attrs["bulkpix"]["complete"] is True
    raw = json.loads((output / "zarr.json").read_text())
    assert raw["attributes"]["bulkpix"]["complete"] is True
