"""Clients written by others read emulator assets: GDAL's EEDAI driver and earthengine-api."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine

from bulkpix.emulator import EmulatorConfig, SyntheticAsset, emulator_in_thread, synthetic_pixels
from tests.conftest import write_tif as shared_write_tif

CRS = "EPSG:32633"
TRANSFORM = Affine(20, 0, 500000, 0, -20, 4600000)
# Not multiples of EEDAI's 256-pixel blocks, so partial edge blocks are read too.
WIDTH, HEIGHT = 300, 270


def write_tif(path: Path, bands: np.ndarray, descriptions: list[str] | None = None) -> str:
    return str(shared_write_tif(path, bands, crs=CRS, transform=TRANSFORM,
                                descriptions=descriptions))


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, Any]:
    rng = np.random.default_rng(7)
    u8 = rng.integers(0, 256, (3, HEIGHT, WIDTH), dtype=np.uint8)
    i16 = rng.integers(-32768, 32768, (2, HEIGHT, WIDTH), dtype=np.int16)
    f32 = (rng.integers(-4000, 4000, (1, HEIGHT, WIDTH)) / 8).astype(np.float32)
    return {
        "u8": (write_tif(tmp_path / "u8.tif", u8, ["red", "green", "blue"]), u8),
        "i16": (write_tif(tmp_path / "i16.tif", i16), i16),
        "f32": (write_tif(tmp_path / "f32.tif", f32), f32),
    }


def file_config(sources: dict[str, Any]) -> EmulatorConfig:
    return EmulatorConfig(assets={
        "projects/demo/assets/mixed": [sources[k][0] for k in ("u8", "i16", "f32")],
        "projects/demo/assets/int16": [sources["i16"][0]],
        "projects/demo/assets/rgb": [sources["u8"][0]],
        # earthengine-api only takes names whose project id is a real one (6-30 characters).
        "projects/demo-project/assets/mixed": [sources[k][0] for k in ("u8", "i16", "f32")],
    })


def read_eedai(url: str, asset: str) -> tuple[list[np.ndarray], Any, Affine, tuple[str, ...],
                                              tuple[str, ...]]:
    with rasterio.Env(EEDA_URL=f"{url}/v1/", EEDA_BEARER="anything",
                      GDAL_HTTP_MAX_RETRY="0"), rasterio.open(f"EEDAI:{asset}") as dataset:
        # One band at a time: rasterio reads several bands only when they share a type.
        bands = [dataset.read(i) for i in dataset.indexes]
        return bands, dataset.crs, dataset.transform, dataset.dtypes, dataset.descriptions


@pytest.mark.parametrize(("asset", "parts", "dtypes"), [
    ("projects/demo/assets/mixed", ("u8", "i16", "f32"),
     ("uint8",) * 3 + ("int16",) * 2 + ("float32",)),
    ("projects/demo/assets/int16", ("i16",), ("int16", "int16")),
    ("projects/demo/assets/rgb", ("u8",), ("uint8",) * 3),
])
def test_gdal_eedai_reads_the_source_pixels(sources: dict[str, Any], asset: str,
                                            parts: tuple[str, ...],
                                            dtypes: tuple[str, ...]) -> None:
    expected = [band for part in parts for band in sources[part][1]]
    with emulator_in_thread(file_config(sources)) as emu:
        data, crs, transform, got_dtypes, descriptions = read_eedai(emu.url, asset)
        pixel_calls = [r for r in emu.log if r["op"] == "get_pixels"]
    assert got_dtypes == dtypes
    assert crs == rasterio.crs.CRS.from_user_input(CRS)
    assert transform == TRANSFORM
    assert len(data) == len(expected)
    for got, want in zip(data, expected, strict=True):
        assert got.dtype == want.dtype
        assert got.tobytes() == want.tobytes()  # bit-identical
    # EEDAI sends a grid without CRS, in native whole-pixel blocks: plain copies.
    assert pixel_calls and all(r["status"] == 200 for r in pixel_calls)
    assert all(r["col_off"] is not None for r in pixel_calls)
    expected_format = {"mixed": "NPY", "int16": "GEO_TIFF", "rgb": "PNG"}[asset.rsplit("/")[-1]]
    assert {r["format"] for r in pixel_calls} == {expected_format}
    if asset.endswith("mixed"):
        assert descriptions == ("red", "green", "blue", "B4", "B5", "B6")


def test_gdal_eedai_reads_a_synthetic_asset() -> None:
    config = EmulatorConfig(synthetic={"projects/demo/assets/syn": SyntheticAsset(700, 300)})
    window = rasterio.windows.Window(250, 100, 300, 150)
    with emulator_in_thread(config) as emu, \
            rasterio.Env(EEDA_URL=f"{emu.url}/v1/", EEDA_BEARER="x"), \
            rasterio.open("EEDAI:projects/demo/assets/syn") as dataset:
        data = [dataset.read(i, window=window) for i in dataset.indexes]
        dtypes = dataset.dtypes
    assert dtypes == ("uint8", "int16", "uint16", "float32")
    rows, cols = np.arange(100, 250), np.arange(250, 550)
    for band in range(4):
        np.testing.assert_array_equal(data[band], synthetic_pixels(band, rows, cols))


def test_earthengine_api_get_pixels(sources: dict[str, Any]) -> None:
    ee = pytest.importorskip("ee")
    import google.oauth2.credentials

    tile = TRANSFORM @ Affine.translation(40, 30)
    request = {
        "assetId": "projects/demo-project/assets/mixed",
        "fileFormat": "NUMPY_NDARRAY",
        "bandIds": ["B6", "B4", "red"],
        "grid": {"affineTransform": {"scaleX": tile.a, "shearX": 0, "translateX": tile.c,
                                     "shearY": 0, "scaleY": tile.e, "translateY": tile.f},
                 "dimensions": {"width": 120, "height": 90}},
    }
    with emulator_in_thread(file_config(sources)) as emu:
        try:
            ee.data.initialize(credentials=google.oauth2.credentials.Credentials(token="x"),
                               cloud_api_base_url=emu.url, project="p")
            result = ee.data.getPixels(request)
        finally:
            ee.Reset()
        records = list(emu.log)
    assert result.dtype.names == ("B6", "B4", "red")
    np.testing.assert_array_equal(result["B6"], sources["f32"][1][0, 30:120, 40:160])
    np.testing.assert_array_equal(result["B4"], sources["i16"][1][0, 30:120, 40:160])
    np.testing.assert_array_equal(result["red"], sources["u8"][1][0, 30:120, 40:160])
    assert records[0]["op"] == "discovery"
    pixels = [r for r in records if r["op"] == "get_pixels"]
    assert len(pixels) == 1 and pixels[0]["path"].startswith("/v1alpha/")
    assert (pixels[0]["col_off"], pixels[0]["row_off"]) == (40, 30)
