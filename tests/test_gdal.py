"""`zarr_format: 2`: GDAL (rasterio's own, 3.10) opens every band with its CRS, geotransform,
nodata, units, scale and offset; v3 stays the default and what xarray reads."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import xarray as xr
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning

import bulkpix
from bulkpix.emulator import EmulatorConfig, run_emulator
from bulkpix.errors import StoreMismatch
from bulkpix.job import parse_job
from bulkpix.pipeline import run_job
from tests.conftest import SRC_CRS, SRC_TRANSFORM, mixed_arrays, write_tif

ASSET = "projects/demo/assets/src"


def described_files(tmp_path: Path) -> tuple[list[str], list[np.ndarray]]:
    """Three single-band GeoTIFFs (uint8, int16, float32) whose bands carry units, scale,
    offset and a description, as an asset's band metadata."""
    arrays = mixed_arrays(300, 400)
    paths = []
    for index, array in enumerate(arrays):
        path = write_tif(tmp_path / f"b{index}.tif", [array])
        with rasterio.open(path, "r+") as dataset:
            dataset.units = (f"unit{index}",)
            dataset.scales = (0.5 + index,)
            dataset.offsets = (10.0 * index,)
            dataset.update_tags(1, description=f"band number {index}")
        paths.append(str(path))
    return paths, arrays


async def run(tmp_path: Path, paths: list[str], **keys: Any) -> Path:
    output = tmp_path / "out.zarr"
    async with run_emulator(EmulatorConfig(assets={ASSET: paths})) as emu:
        job = parse_job(
            {
                "asset": ASSET,
                "output": str(output),
                "endpoint": emu.url,
                "credentials": "none",
                "chunk": 128,
                **keys,
            }
        )
        stats = await run_job(job)
    assert stats.ok
    return output


async def test_v2_output_opens_in_gdal_with_crs_transform_and_band_metadata(
    tmp_path: Path,
) -> None:
    paths, arrays = described_files(tmp_path)
    output = await run(tmp_path, paths, zarr_format=2, bands=["B3", "B1"], nodata={"B1": 0})
    assert (output / ".zgroup").is_file() and not (output / "zarr.json").exists()
    with warnings.catch_warnings():
        # The store itself is a container of arrays, georeferenced one by one.
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        container = rasterio.open(str(output))
    with container:
        names = [s.rsplit(":/", 1)[-1] for s in container.subdatasets]
    assert {"B1", "B3"} <= set(names)
    for band, source, index in (("B1", arrays[0], 0), ("B3", arrays[2], 2)):
        with rasterio.open(f'ZARR:"{output}":/{band}') as dataset:
            assert dataset.crs == CRS.from_user_input(SRC_CRS)
            assert dataset.transform == SRC_TRANSFORM
            assert dataset.dtypes[0] == source.dtype.name
            np.testing.assert_array_equal(dataset.read(1), source)
            assert dataset.units == (f"unit{index}",)
            assert dataset.scales == (0.5 + index,)
            assert dataset.offsets == (10.0 * index,)
            # Only the band the job gave a nodata declares one.
            assert dataset.nodata == (0.0 if band == "B1" else None)


async def test_v2_crs_comes_from_the_crs_attribute_gdal_reads(tmp_path: Path) -> None:
    paths, _ = described_files(tmp_path)
    output = await run(tmp_path, paths, zarr_format=2, bands=["B1"])
    attrs = json.loads((output / "B1" / ".zattrs").read_text())
    assert CRS.from_wkt(attrs["_CRS"]["wkt"]) == CRS.from_user_input(SRC_CRS)
    assert attrs["grid_mapping"] == "spatial_ref"  # and CF's, for xarray/rioxarray
    assert attrs["_ARRAY_DIMENSIONS"] == ["y", "x"]


async def test_v2_output_reads_in_xarray_like_v3_in_the_jobs_band_order(tmp_path: Path) -> None:
    paths, arrays = described_files(tmp_path)
    order = ["B3", "B1", "B2"]
    v2 = await run(tmp_path, paths, zarr_format=2, bands=order)
    ds = bulkpix.open(v2, mask_and_scale=False)
    assert list(ds.data_vars) == order
    assert ds.rio.crs == CRS.from_user_input(SRC_CRS)
    assert ds["B1"].rio.transform() == SRC_TRANSFORM
    # No nodata declared: v2's fill value is null, so xarray masks nothing.
    assert ds["B1"].dtype == np.uint8 and "_FillValue" not in ds["B1"].encoding
    np.testing.assert_array_equal(ds["B2"].values, arrays[1])
    assert ds.attrs["bulkpix"]["complete"] is True


async def test_v3_stays_the_default(tmp_path: Path) -> None:
    paths, _ = described_files(tmp_path)
    output = await run(tmp_path, paths, bands=["B1"])
    assert json.loads((output / "zarr.json").read_text())["zarr_format"] == 3
    assert not (output / ".zgroup").exists()


async def test_v2_resumes_and_refuses_a_format_change(tmp_path: Path) -> None:
    paths, arrays = described_files(tmp_path)
    output = await run(tmp_path, paths, zarr_format=2, bands=["B1"])
    again = await run(tmp_path, paths, zarr_format=2, bands=["B1"])  # resumes: nothing to do
    assert again == output
    with pytest.raises(StoreMismatch, match="zarr_format"):
        await run(tmp_path, paths, zarr_format=3, bands=["B1"])
    with rasterio.open(f'ZARR:"{output}":/B1') as dataset:
        np.testing.assert_array_equal(dataset.read(1), arrays[0])


async def test_v3_band_metadata_in_xarray(tmp_path: Path) -> None:
    paths, arrays = described_files(tmp_path)
    output = await run(tmp_path, paths, bands=["B2"])
    raw = xr.open_zarr(output, mask_and_scale=False)["B2"]
    assert raw.attrs["units"] == "unit1"
    assert raw.attrs["long_name"] == "band number 1"
    decoded = xr.open_zarr(output)["B2"]
    np.testing.assert_allclose(decoded.values, arrays[1] * 1.5 + 10.0)


async def test_v2_refuses_a_rotated_grid_gdal_would_misplace(tmp_path: Path) -> None:
    from bulkpix.emulator import SyntheticAsset
    from bulkpix.errors import JobError

    rotated = Affine(10, 2, 600000, 3, -10, 5200000)
    config = EmulatorConfig(synthetic={ASSET: SyntheticAsset(64, 64, transform=rotated)})
    async with run_emulator(config) as emu:
        job = parse_job(
            {
                "asset": ASSET,
                "output": str(tmp_path / "out.zarr"),
                "endpoint": emu.url,
                "credentials": "none",
                "zarr_format": 2,
            }
        )
        with pytest.raises(JobError, match="rotated or sheared, which GDAL cannot read"):
            await run_job(job)
    assert not (tmp_path / "out.zarr").exists()
