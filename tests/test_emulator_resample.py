"""Resampled requests: per-pixel-centre nearest neighbour, independent of tiling; rotated
native grids served as plain copies."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import rasterio
import rasterio.transform
import rasterio.warp
from affine import Affine

from bulkpix.emulator import EmulatorConfig, SyntheticAsset, run_emulator, synthetic_pixels

NATIVE_CRS = "EPSG:32633"
NATIVE = Affine(10, 0, 600000, 0, -10, 5200000)
SYN = "projects/demo/assets/syn"
FILES = "projects/demo/assets/files"
ROTATED = "projects/demo/assets/rotated"


def ee_grid(crs: str, transform: Affine, width: int, height: int) -> dict[str, Any]:
    return {"crsCode": crs,
            "affineTransform": {"scaleX": transform.a, "shearX": transform.b,
                                "translateX": transform.c, "shearY": transform.d,
                                "scaleY": transform.e, "translateY": transform.f},
            "dimensions": {"width": width, "height": height}}


def expected_indices(crs: str, transform: Affine, width: int,
                     height: int) -> tuple[np.ndarray, np.ndarray]:
    """Native (rows, cols) under each output pixel centre, via GDAL rather than pyproj."""
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    xs, ys = rasterio.transform.xy(transform, rows.ravel(), cols.ravel(), offset="center")
    xs, ys = rasterio.warp.transform(crs, NATIVE_CRS, xs, ys)
    native_rows, native_cols = rasterio.transform.rowcol(NATIVE, xs, ys, op=math.floor)
    return (np.asarray(native_rows).reshape(height, width),
            np.asarray(native_cols).reshape(height, width))


def expected_synthetic(band: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    r0, c0 = rows.min(), cols.min()
    block = synthetic_pixels(band, np.arange(r0, rows.max() + 1), np.arange(c0, cols.max() + 1))
    return block[rows - r0, cols - c0]


async def fetch(session: aiohttp.ClientSession, url: str, name: str,
                body: dict[str, Any]) -> np.ndarray:
    async with session.post(f"{url}/v1/{name}:getPixels", json=body) as response:
        payload = await response.read()
        assert response.status == 200, payload
    return np.load(io.BytesIO(payload))


@pytest.fixture
def source(tmp_path: Path) -> tuple[str, np.ndarray]:
    rng = np.random.default_rng(3)
    data = rng.integers(-30000, 30000, (400, 500), dtype=np.int16)
    path = tmp_path / "src.tif"
    with rasterio.open(path, "w", driver="GTiff", width=500, height=400, count=1,
                       dtype="int16", crs=NATIVE_CRS, transform=NATIVE) as dataset:
        dataset.write(data, 1)
    return str(path), data


def lonlat_grid() -> tuple[Affine, int, int]:
    # ~7.5 m x 11 m lon/lat pixels over the synthetic asset's north-west part.
    lon, lat = rasterio.warp.transform(NATIVE_CRS, "EPSG:4326", [600500.0], [5199500.0])
    return Affine(0.0001, 0, lon[0], 0, -0.0001, lat[0]), 128, 96


async def test_lonlat_grid_matches_an_independent_nearest_computation() -> None:
    transform, width, height = lonlat_grid()
    config = EmulatorConfig(synthetic={SYN: SyntheticAsset(4000, 3000)})
    body = {"fileFormat": "NPY", "grid": ee_grid("EPSG:4326", transform, width, height)}
    async with run_emulator(config) as emu, aiohttp.ClientSession() as s:
        result = await fetch(s, emu.url, SYN, body)
        assert emu.log[-1]["col_off"] is None and emu.log[-1]["crs"] == "EPSG:4326"
    rows, cols = expected_indices("EPSG:4326", transform, width, height)
    assert rows.min() >= 0 and cols.min() >= 0  # all inside the asset
    for band, name in enumerate(("u8", "i16", "u16", "f32")):
        np.testing.assert_array_equal(result[name], expected_synthetic(band, rows, cols))


async def test_web_mercator_grid_of_a_file_with_pixels_outside(
        source: tuple[str, np.ndarray]) -> None:
    path, data = source
    # A 3857 grid at 17 m that reaches beyond the asset's west and north edges.
    x0, y0 = rasterio.warp.transform(NATIVE_CRS, "EPSG:3857", [599700.0], [5200400.0])
    transform, width, height = Affine(17, 0, x0[0], 0, -17, y0[0]), 90, 70
    config = EmulatorConfig(assets={FILES: [path]})
    body = {"fileFormat": "NPY", "grid": ee_grid("EPSG:3857", transform, width, height)}
    async with run_emulator(config) as emu, aiohttp.ClientSession() as s:
        result = await fetch(s, emu.url, FILES, body)
    rows, cols = expected_indices("EPSG:3857", transform, width, height)
    inside = (rows >= 0) & (rows < 400) & (cols >= 0) & (cols < 500)
    assert inside.any() and not inside.all()
    expected = np.zeros((height, width), np.int16)
    expected[inside] = data[rows[inside], cols[inside]]
    np.testing.assert_array_equal(result["B1"], expected)


async def test_tiles_assemble_to_the_whole_resampled_grid() -> None:
    transform, width, height = lonlat_grid()
    config = EmulatorConfig(synthetic={SYN: SyntheticAsset(4000, 3000)})
    async with run_emulator(config) as emu, aiohttp.ClientSession() as s:
        whole = await fetch(s, emu.url, SYN, {
            "fileFormat": "NPY", "bandIds": ["f32", "u8"],
            "grid": ee_grid("EPSG:4326", transform, width, height)})
        tiled = np.zeros_like(whole)
        tile_w, tile_h = width // 4, height // 4
        for row0 in range(0, height, tile_h):
            for col0 in range(0, width, tile_w):
                tile = transform @ Affine.translation(col0, row0)
                tiled[row0:row0 + tile_h, col0:col0 + tile_w] = await fetch(s, emu.url, SYN, {
                    "fileFormat": "NPY", "bandIds": ["f32", "u8"],
                    "grid": ee_grid("EPSG:4326", tile, tile_w, tile_h)})
        assert len(emu.log) == 17
    assert tiled.tobytes() == whole.tobytes()


async def test_other_scale_and_subpixel_offset_in_the_native_crs(
        source: tuple[str, np.ndarray]) -> None:
    path, data = source
    transform = NATIVE @ Affine.translation(3.3, 5.7) @ Affine.scale(2.5, 2.5)
    width, height = 60, 50
    config = EmulatorConfig(assets={FILES: [path]})
    body = {"fileFormat": "NPY", "grid": ee_grid(NATIVE_CRS, transform, width, height)}
    async with run_emulator(config) as emu, aiohttp.ClientSession() as s:
        result = await fetch(s, emu.url, FILES, body)
        assert emu.log[-1]["col_off"] is None
    rows, cols = expected_indices(NATIVE_CRS, transform, width, height)
    np.testing.assert_array_equal(result["B1"], data[rows, cols])
    # A half-pixel shift is not a plain copy, but nearest-centre sampling repeats no pixel.
    shifted = NATIVE @ Affine.translation(10.5, 20.5)
    body = {"fileFormat": "NPY", "grid": ee_grid(NATIVE_CRS, shifted, 30, 30)}
    async with run_emulator(config) as emu, aiohttp.ClientSession() as s:
        result = await fetch(s, emu.url, FILES, body)
    np.testing.assert_array_equal(result["B1"], data[21:51, 11:41])


async def test_rotated_native_grid_is_served_as_a_plain_copy(tmp_path: Path) -> None:
    rotated = Affine.translation(400000, 5000000) @ Affine.rotation(30) @ Affine.scale(20, -20)
    data = np.arange(120 * 80, dtype=np.uint16).reshape(80, 120)
    path = tmp_path / "rotated.tif"
    with rasterio.open(path, "w", driver="GTiff", width=120, height=80, count=1,
                       dtype="uint16", crs=NATIVE_CRS, transform=rotated) as dataset:
        dataset.write(data, 1)
    config = EmulatorConfig(assets={ROTATED: [str(path)]})
    async with run_emulator(config) as emu, aiohttp.ClientSession() as s:
        async with s.get(f"{emu.url}/v1/{ROTATED}") as response:
            affine = (await response.json())["bands"][0]["grid"]["affineTransform"]
        assert affine["shearX"] == pytest.approx(rotated.b)
        assert affine["shearY"] == pytest.approx(rotated.d)
        whole = await fetch(s, emu.url, ROTATED, {"fileFormat": "NPY"})
        np.testing.assert_array_equal(whole["B1"], data)
        # A window: translate = affine * (col0, row0), shear terms included.
        tile = rotated @ Affine.translation(30, 20)
        window = await fetch(s, emu.url, ROTATED, {
            "fileFormat": "NPY",
            "grid": {"affineTransform": json.loads(json.dumps(
                ee_grid(NATIVE_CRS, tile, 50, 40)["affineTransform"])),
                "dimensions": {"width": 50, "height": 40}}})
        record = emu.log[-1]
    np.testing.assert_array_equal(window["B1"], data[20:60, 30:80])
    assert (record["col_off"], record["row_off"]) == (30, 20)
