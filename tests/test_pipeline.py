"""End to end: job -> emulator -> Zarr, compared bit-exact with the source pixels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
import zarr
from affine import Affine
from pyproj import Transformer
from rasterio.crs import CRS

from bulkpix.emulator import EmulatorConfig, SyntheticAsset, run_emulator
from bulkpix.emulator.synthetic import SYNTHETIC_BANDS, synthetic_pixels
from bulkpix.job import parse_job
from bulkpix.pipeline import run_job
from tests.conftest import SRC_CRS, SRC_TRANSFORM, mixed_arrays, write_tif

ASSET = "projects/demo/assets/src"


async def _run(url: str, tmp_path: Path, **keys: Any) -> tuple[Path, Any]:
    output = tmp_path / "out.zarr"
    job = parse_job(
        {
            "asset": ASSET,
            "output": str(output),
            "endpoint": url,
            "credentials": "none",
            "concurrency": 8,
            **keys,
        }
    )
    stats = await run_job(job)
    assert stats.ok, [i.failed for i in stats.items]
    return output, stats


def _open(output: Path, group: str | None = None) -> xr.Dataset:
    return xr.open_zarr(output, group=group, decode_coords="all")


def _assert_georef(ds: xr.Dataset, band: str, crs: str, transform: Affine) -> None:
    assert ds.rio.crs == CRS.from_user_input(crs)
    assert ds[band].rio.crs == CRS.from_user_input(crs)
    assert ds[band].rio.transform() == transform


@pytest.fixture
def mixed_files(tmp_path: Path) -> tuple[list[str], list[np.ndarray]]:
    arrays = mixed_arrays(700, 900)
    paths = [str(write_tif(tmp_path / f"b{i}.tif", [a])) for i, a in enumerate(arrays)]
    return paths, arrays


async def test_mixed_types_whole_asset_not_chunk_multiple(
    tmp_path: Path, mixed_files: tuple[list[str], list[np.ndarray]]
) -> None:
    paths, arrays = mixed_files
    config = EmulatorConfig(assets={ASSET: paths})
    async with run_emulator(config) as emu:
        output, stats = await _run(emu.url, tmp_path, chunk=256, tile=[256, 512])
        pixel_calls = [r for r in emu.log if r["op"] == "get_pixels"]
    # 700 x 900 in 256 x 512 tiles: 3 rows x 2 columns.
    assert stats.total == 6 and len(pixel_calls) == 6
    ds = _open(output)
    for band, source in zip(["B1", "B2", "B3"], arrays, strict=True):
        assert ds[band].dtype == source.dtype
        np.testing.assert_array_equal(ds[band].values, source)
    _assert_georef(ds, "B1", SRC_CRS, SRC_TRANSFORM)
    group = zarr.open_group(output, mode="r")
    assert group["B1"].chunks == (256, 256)
    assert group["B2"].metadata.dimension_names == ("y", "x")


def _outward_window(bounds: tuple[float, float, float, float], transform: Affine) -> tuple:
    """Independent check: the pixel window of UTM bounds, snapped outward."""
    inv = ~transform
    cols, rows = zip(
        *(inv @ (x, y) for x in (bounds[0], bounds[2]) for y in (bounds[1], bounds[3])),
        strict=True,
    )
    return (
        int(np.floor(min(rows) + 1e-6)),
        int(np.ceil(max(rows) - 1e-6)),
        int(np.floor(min(cols) + 1e-6)),
        int(np.ceil(max(cols) - 1e-6)),
    )


async def test_lonlat_region_inside_utm_asset(
    tmp_path: Path, mixed_files: tuple[list[str], list[np.ndarray]]
) -> None:
    paths, arrays = mixed_files
    to_lonlat = Transformer.from_crs(SRC_CRS, "EPSG:4326", always_xy=True)
    lon0, lat0 = to_lonlat.transform(601000.0, 5195000.0)
    lon1, lat1 = to_lonlat.transform(606000.0, 5198000.0)
    bbox = [min(lon0, lon1), min(lat0, lat1), max(lon0, lon1), max(lat0, lat1)]
    async with run_emulator(EmulatorConfig(assets={ASSET: paths})) as emu:
        output, _ = await _run(emu.url, tmp_path, region={"bbox": bbox}, chunk=128)
    # The UTM box that covers the lon/lat box, densified along its edges.
    to_utm = Transformer.from_crs("EPSG:4326", SRC_CRS, always_xy=True)
    lons = np.concatenate(
        [np.linspace(bbox[0], bbox[2], 101)] * 2 + [[bbox[0]] * 101, [bbox[2]] * 101]
    )
    lats = np.concatenate(
        [[bbox[1]] * 101, [bbox[3]] * 101] + [np.linspace(bbox[1], bbox[3], 101)] * 2
    )
    xs, ys = to_utm.transform(lons, lats)
    r0, r1, c0, c1 = _outward_window((min(xs), min(ys), max(xs), max(ys)), SRC_TRANSFORM)
    ds = _open(output)
    for band, source in zip(["B1", "B2", "B3"], arrays, strict=True):
        np.testing.assert_array_equal(ds[band].values, source[r0:r1, c0:c1])
    _assert_georef(ds, "B2", SRC_CRS, SRC_TRANSFORM @ Affine.translation(c0, r0))


def _nearest_reference(
    source: np.ndarray,
    src_transform: Affine,
    src_crs: str,
    dst_transform: Affine,
    dst_crs: str,
    shape: tuple[int, int],
) -> np.ndarray:
    """Each output pixel takes the source pixel under its centre; outside is 0."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    xs, ys = dst_transform @ (cols + 0.5, rows + 0.5)
    sx, sy = Transformer.from_crs(dst_crs, src_crs, always_xy=True).transform(xs, ys)
    fc, fr = ~src_transform @ (sx, sy)
    c = np.floor(fc).astype(np.int64)
    r = np.floor(fr).astype(np.int64)
    inside = (r >= 0) & (r < source.shape[0]) & (c >= 0) & (c < source.shape[1])
    out = np.zeros(shape, source.dtype)
    out[inside] = source[r[inside], c[inside]]
    return out


async def test_other_crs_and_scale_matches_whole_grid_nearest(
    tmp_path: Path, mixed_files: tuple[list[str], list[np.ndarray]]
) -> None:
    paths, arrays = mixed_files
    async with run_emulator(EmulatorConfig(assets={ASSET: paths})) as emu:
        output, stats = await _run(
            emu.url, tmp_path, crs="EPSG:3857", scale=17, chunk=64, tile=[64, 128]
        )
    assert stats.total > 20  # many tiles, so a wrong tile affine shows at the seams
    ds = _open(output)
    transform = ds["B1"].rio.transform()
    assert ds.rio.crs == CRS.from_epsg(3857)
    # Pixel edges on multiples of the scale (-tap): neighbouring jobs line up.
    assert transform.a == 17 and transform.e == -17
    assert transform.c % 17 == 0 and transform.f % 17 == 0
    for band, source in zip(["B1", "B2", "B3"], arrays, strict=True):
        expected = _nearest_reference(
            source, SRC_TRANSFORM, SRC_CRS, transform, "EPSG:3857", ds[band].shape
        )
        np.testing.assert_array_equal(ds[band].values, expected)


async def test_rotated_native_grid(tmp_path: Path) -> None:
    rotated = SRC_TRANSFORM @ Affine.rotation(20)
    arrays = mixed_arrays(300, 400, seed=3)
    path = write_tif(tmp_path / "rot.tif", [arrays[1]], transform=rotated)
    async with run_emulator(EmulatorConfig(assets={ASSET: [str(path)]})) as emu:
        output, _ = await _run(emu.url, tmp_path, chunk=64, tile=[128, 128])
    ds = _open(output)
    np.testing.assert_array_equal(ds["B1"].values, arrays[1])
    _assert_georef(ds, "B1", SRC_CRS, rotated)


async def test_geotiff_format(tmp_path: Path) -> None:
    arrays = mixed_arrays(300, 500, seed=5)
    bands = [arrays[1], (arrays[1] * 3).astype(np.int16)]
    path = write_tif(tmp_path / "two.tif", bands)
    async with run_emulator(EmulatorConfig(assets={ASSET: [str(path)]})) as emu:
        output, _ = await _run(
            emu.url, tmp_path, file_format="GEO_TIFF", chunk=128, tile=[128, 256]
        )
        formats = {r["format"] for r in emu.log if r["op"] == "get_pixels"}
    assert formats == {"GEO_TIFF"}
    ds = _open(output)
    np.testing.assert_array_equal(ds["B1"].values, bands[0])
    np.testing.assert_array_equal(ds["B2"].values, bands[1])
    _assert_georef(ds, "B1", SRC_CRS, SRC_TRANSFORM)


async def test_synthetic_asset_band_subset(tmp_path: Path) -> None:
    synthetic = SyntheticAsset(width=5000, height=4000)
    async with run_emulator(EmulatorConfig(synthetic={ASSET: synthetic})) as emu:
        output, _ = await _run(
            emu.url,
            tmp_path,
            bands=["f32", "u8"],
            region={"bbox": [601000, 5170000, 612345, 5181000], "region_crs": SRC_CRS},
            chunk=256,
        )
    ds = _open(output)
    assert list(ds.data_vars) == ["f32", "u8"] or set(ds.data_vars) == {"f32", "u8"}
    transform = ds["u8"].rio.transform()
    c0, r0 = (~synthetic.transform) @ (transform.c, transform.f)
    rows = np.arange(round(r0), round(r0) + ds.sizes["y"])
    cols = np.arange(round(c0), round(c0) + ds.sizes["x"])
    ids = [band for band, _ in SYNTHETIC_BANDS]
    for band in ("f32", "u8"):
        expected = synthetic_pixels(ids.index(band), rows, cols)
        np.testing.assert_array_equal(ds[band].values, expected)
    assert ds.sizes["x"] == 1135 and ds.sizes["y"] == 1100


async def test_band_groups_when_one_chunk_of_all_bands_exceeds_a_request(tmp_path: Path) -> None:
    # 2048 x 2048 px x 13 counted bytes (four bands plus masks) > 48 MiB: a 2048 chunk of all
    # four bands cannot be one request, so the bands go in two groups, each its own request.
    synthetic = SyntheticAsset(width=2048, height=2048)
    async with run_emulator(EmulatorConfig(synthetic={ASSET: synthetic})) as emu:
        output, stats = await _run(emu.url, tmp_path, chunk=2048, memory_mb=256)
        calls = [r for r in emu.log if r["op"] == "get_pixels"]
    assert stats.total == 2 and len(calls) == 2
    assert sorted(b for r in calls for b in r["bands"]) == sorted(b for b, _ in SYNTHETIC_BANDS)
    group = zarr.open_group(output, mode="r")
    rows = cols = np.arange(2048)
    for index, (band, _) in enumerate(SYNTHETIC_BANDS):
        np.testing.assert_array_equal(group[band][:], synthetic_pixels(index, rows, cols))


async def test_region_on_a_rotated_native_grid(tmp_path: Path) -> None:
    rotated = SRC_TRANSFORM @ Affine.rotation(20)
    arrays = mixed_arrays(300, 400, seed=4)
    path = write_tif(tmp_path / "rot.tif", [arrays[0]], transform=rotated)
    # A box in the native CRS, well inside the rotated footprint.
    x0, y0 = rotated @ (150, 100)
    bbox = [x0, y0 - 600, x0 + 900, y0]
    async with run_emulator(EmulatorConfig(assets={ASSET: [str(path)]})) as emu:
        output, _ = await _run(
            emu.url, tmp_path, region={"bbox": bbox, "region_crs": SRC_CRS}, chunk=64
        )
    inv = ~rotated
    corners = [inv @ (x, y) for x in (bbox[0], bbox[2]) for y in (bbox[1], bbox[3])]
    c0 = int(np.floor(min(c for c, _ in corners) + 1e-6))
    c1 = int(np.ceil(max(c for c, _ in corners) - 1e-6))
    r0 = int(np.floor(min(r for _, r in corners) + 1e-6))
    r1 = int(np.ceil(max(r for _, r in corners) - 1e-6))
    ds = _open(output)
    np.testing.assert_array_equal(ds["B1"].values, arrays[0][r0:r1, c0:c1])
    _assert_georef(ds, "B1", SRC_CRS, rotated @ Affine.translation(c0, r0))


async def test_object_store_output_through_fsspec(tmp_path: Path) -> None:
    """Nothing on the write or record path assumes a local filesystem: an fsspec store (an
    in-memory one here, the stand-in for S3 or GCS) takes a run and its resume."""
    import fsspec
    from zarr.storage import FsspecStore

    url = f"memory://bulkpix-test-{tmp_path.name}/out.zarr"
    synthetic = SyntheticAsset(width=2000, height=2000)
    region = {"bbox": [600000, 5190000, 607000, 5200000], "region_crs": SRC_CRS}
    try:
        async with run_emulator(EmulatorConfig(synthetic={ASSET: synthetic})) as emu:
            keys = {
                "asset": ASSET,
                "output": url,
                "endpoint": emu.url,
                "credentials": "none",
                "region": region,
                "chunk": 256,
                "tile": [512, 512],
            }
            first = await run_job(parse_job(keys))
            again = await run_job(parse_job(keys))
            pixel_calls = [r for r in emu.log if r["op"] == "get_pixels"]
        assert first.ok and first.total == 4 and len(pixel_calls) == 4
        assert again.ok and again.items[0].done == 0  # resumed from the record in the store
        group = zarr.open_group(FsspecStore.from_url(url, read_only=True), mode="r")
        rows, cols = np.arange(1000), np.arange(700)
        for index, (band, _) in enumerate(SYNTHETIC_BANDS):
            np.testing.assert_array_equal(group[band][:], synthetic_pixels(index, rows, cols))
    finally:
        fsspec.filesystem("memory").rm(url.removeprefix("memory://").split("/")[0], recursive=True)


async def test_a_resumed_output_keeps_its_codec_whatever_the_job_says_now(
    tmp_path: Path,
) -> None:
    """The codec is each array's own metadata, not part of the job fingerprint: resuming
    with another ``compression`` goes on in the codec the output was created with."""
    from bulkpix.store.record import TileRecord
    from bulkpix.store.zarr_store import open_store

    synthetic = SyntheticAsset(width=600, height=500)
    keys: dict[str, Any] = {"bands": ["u16"], "chunk": 256, "compression": "zstd"}
    async with run_emulator(EmulatorConfig(synthetic={ASSET: synthetic})) as emu:
        output, _ = await _run(emu.url, tmp_path, **keys)
        # A record from before the codec left the fingerprint carries one: ignored too.
        record = TileRecord(await open_store(str(output)), "")
        old = await record.fingerprint()
        assert old is not None and "codec" not in old
        await record.write_fingerprint({**old, "codec": "zstd-1"})
        _, stats = await _run(emu.url, tmp_path, **{**keys, "compression": "gzip"})
    assert stats.items[0].done == 0 and stats.items[0].done_before == stats.items[0].total
    codecs = zarr.open_array(str(output / "u16"), mode="r").metadata.to_dict()["codecs"]
    assert codecs[-1]["name"] == "zstd"
