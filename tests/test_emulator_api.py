"""The emulator seen from an HTTP client: metadata, payloads, limits, errors, quotas, faults,
service time, the request log, the token endpoint and discovery."""

from __future__ import annotations

import asyncio
import io
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.io import MemoryFile

from bulkpix.dtypes import numpy_dtype
from bulkpix.emulator import (
    EmulatorConfig,
    FaultConfig,
    SyntheticAsset,
    run_emulator,
    synthetic_pixels,
)
from tests.conftest import write_tif as shared_write_tif

CRS = "EPSG:32633"
TRANSFORM = Affine(10, 0, 600000, 0, -10, 5200000)
WIDTH, HEIGHT = 300, 200
MIXED = "projects/demo/assets/mixed_files"
SYN = "projects/demo/assets/synthetic"
SECRET = "projects/demo/assets/secret"


def write_tif(path: Path, bands: np.ndarray, descriptions: list[str | None] | None = None,
              transform: Affine = TRANSFORM) -> str:
    return str(shared_write_tif(path, bands, crs=CRS, transform=transform,
                                descriptions=descriptions))


@pytest.fixture
def mixed_files(tmp_path: Path) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    u8 = rng.integers(0, 256, (2, HEIGHT, WIDTH), dtype=np.uint8)
    i16 = rng.integers(-32768, 32768, (1, HEIGHT, WIDTH), dtype=np.int16)
    f32 = rng.normal(0, 1000, (1, HEIGHT, WIDTH)).astype(np.float32)
    paths = [write_tif(tmp_path / "a.tif", u8),
             write_tif(tmp_path / "b.tif", i16, ["height"]),
             write_tif(tmp_path / "c.tif", f32)]
    # Ids: descriptions where set, else B<n> numbered across the whole asset.
    ids = ["B1", "B2", "height", "B4"]
    return {"paths": paths, "ids": ids, "arrays": dict(zip(ids, [u8[0], u8[1], i16[0], f32[0]],
                                                           strict=True))}


def make_config(mixed_files: dict[str, Any], **overrides: Any) -> EmulatorConfig:
    settings: dict[str, Any] = {
        "assets": {MIXED: mixed_files["paths"]},
        "synthetic": {SYN: SyntheticAsset(width=40000, height=30000)},
        "forbidden": {SECRET},
    }
    settings.update(overrides)
    return EmulatorConfig(**settings)


def grid_body(col_off: int, row_off: int, width: int, height: int,
              transform: Affine = TRANSFORM, **extra: Any) -> dict[str, Any]:
    tile = transform @ Affine.translation(col_off, row_off)
    extra.setdefault("fileFormat", "NPY")
    return {"grid": {"affineTransform": {"scaleX": tile.a, "shearX": tile.b,
                                         "translateX": tile.c, "shearY": tile.d,
                                         "scaleY": tile.e, "translateY": tile.f},
                     "dimensions": {"width": width, "height": height}}, **extra}


async def post(session: aiohttp.ClientSession, url: str, name: str, body: Any,
               version: str = "v1") -> tuple[int, bytes, aiohttp.ClientResponse]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with session.post(f"{url}/{version}/{name}:getPixels", data=data,
                            headers={"Content-Type": "application/json"}) as response:
        return response.status, await response.read(), response


def error_of(payload: bytes) -> dict[str, Any]:
    return json.loads(payload)["error"]


# -- metadata ----------------------------------------------------------------------------


async def test_metadata_is_shaped_like_earth_engine(mixed_files: dict[str, Any]) -> None:
    async with run_emulator(make_config(mixed_files)) as emu, aiohttp.ClientSession() as s:
        assert emu.url.startswith("http://127.0.0.1:") and not emu.url.endswith("/")
        async with s.get(f"{emu.url}/v1/{MIXED}") as response:
            assert response.status == 200
            meta = await response.json()
    assert meta["type"] == "IMAGE" and meta["name"] == MIXED and meta["id"] == MIXED
    assert meta["updateTime"].endswith("Z")
    assert meta["sizeBytes"] == str(WIDTH * HEIGHT * (1 + 1 + 2 + 4))
    assert [b["id"] for b in meta["bands"]] == mixed_files["ids"]
    dtypes = [numpy_dtype(b["dataType"]) for b in meta["bands"]]
    assert dtypes == [np.dtype(t) for t in ("uint8", "uint8", "int16", "float32")]
    assert meta["bands"][0]["dataType"] == {"precision": "INT", "range": {"max": 255}}
    grid = meta["bands"][0]["grid"]
    # proto3 JSON: zero terms are left out.
    assert grid == {"crsCode": CRS,
                    "affineTransform": {"scaleX": 10, "translateX": 600000, "scaleY": -10,
                                        "translateY": 5200000},
                    "dimensions": {"width": WIDTH, "height": HEIGHT}}


async def test_synthetic_metadata_has_the_four_typed_bands(mixed_files: dict[str, Any]) -> None:
    async with run_emulator(make_config(mixed_files)) as emu, aiohttp.ClientSession() as s:
        for version in ("v1", "v1alpha", "v1beta"):
            async with s.get(f"{emu.url}/{version}/{SYN}") as response:
                meta = await response.json()
            bands = [(b["id"], numpy_dtype(b["dataType"])) for b in meta["bands"]]
            assert bands == [("u8", np.uint8), ("i16", np.int16), ("u16", np.uint16),
                             ("f32", np.float32)]
            assert meta["bands"][0]["grid"]["dimensions"] == {"width": 40000, "height": 30000}


# -- payloads ----------------------------------------------------------------------------


async def test_npy_native_window_is_the_source(mixed_files: dict[str, Any]) -> None:
    arrays = mixed_files["arrays"]
    band_ids = ["B4", "B1", "height"]  # a subset, out of order
    body = grid_body(37, 21, 150, 100, fileFormat="NPY", bandIds=band_ids)
    async with run_emulator(make_config(mixed_files)) as emu, aiohttp.ClientSession() as s:
        status, payload, _ = await post(s, emu.url, MIXED, body)
    assert status == 200
    assert payload[:8] == b"\x93NUMPY\x01\x00"  # NPY format version 1.0
    result = np.load(io.BytesIO(payload))
    assert result.shape == (100, 150)
    assert list(result.dtype.names) == band_ids
    assert result.dtype["B4"] == np.dtype("<f4") and result.dtype["height"] == np.dtype("<i2")
    for band_id in band_ids:
        np.testing.assert_array_equal(result[band_id], arrays[band_id][21:121, 37:187])


async def test_npy_window_reaching_outside_is_zero_there(mixed_files: dict[str, Any]) -> None:
    body = grid_body(-5, 190, 20, 20, fileFormat="NPY", bandIds=["B2"])
    async with run_emulator(make_config(mixed_files)) as emu, aiohttp.ClientSession() as s:
        status, payload, _ = await post(s, emu.url, MIXED, body)
    assert status == 200
    result = np.load(io.BytesIO(payload))["B2"]
    np.testing.assert_array_equal(result[:10, 5:], mixed_files["arrays"]["B2"][190:, :15])
    assert not result[10:].any() and not result[:, :5].any()


async def test_geotiff_native_window_is_the_source(mixed_files: dict[str, Any]) -> None:
    body = grid_body(10, 20, 64, 48, fileFormat="GEO_TIFF", bandIds=["B2", "B1"])
    async with run_emulator(make_config(mixed_files)) as emu, aiohttp.ClientSession() as s:
        status, payload, _ = await post(s, emu.url, MIXED, body)
    assert status == 200
    with MemoryFile(payload) as memory, memory.open() as dataset:
        assert dataset.crs.to_epsg() == 32633
        assert dataset.transform == TRANSFORM @ Affine.translation(10, 20)
        assert dataset.dtypes == ("uint8", "uint8")
        data = dataset.read()
    np.testing.assert_array_equal(data[0], mixed_files["arrays"]["B2"][20:68, 10:74])
    np.testing.assert_array_equal(data[1], mixed_files["arrays"]["B1"][20:68, 10:74])


async def test_no_grid_is_the_whole_native_asset(mixed_files: dict[str, Any]) -> None:
    async with run_emulator(make_config(mixed_files)) as emu, aiohttp.ClientSession() as s:
        status, payload, _ = await post(s, emu.url, MIXED, {"fileFormat": "NPY"})
        assert status == 200
        result = np.load(io.BytesIO(payload))
        assert emu.log[-1]["col_off"] == 0 and emu.log[-1]["row_off"] == 0
    assert result.shape == (HEIGHT, WIDTH)
    for band_id, array in mixed_files["arrays"].items():
        np.testing.assert_array_equal(result[band_id], array)


async def test_region_crops_to_its_bounding_box_in_the_native_grid(
        mixed_files: dict[str, Any]) -> None:
    from pyproj import Transformer
    to_lonlat = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    # A lon/lat rectangle whose UTM bounding box is well inside the asset.
    corners = [TRANSFORM @ (c, r) for c, r in ((50.2, 40.3), (120.7, 40.3), (120.7, 90.6),
                                               (50.2, 90.6))]
    lonlat = [list(to_lonlat.transform(x, y)) for x, y in corners]
    region = {"type": "Polygon", "coordinates": [[*lonlat, lonlat[0]]]}
    async with run_emulator(make_config(mixed_files)) as emu, aiohttp.ClientSession() as s:
        status, payload, _ = await post(s, emu.url, MIXED, {"fileFormat": "NPY",
                                                             "bandIds": ["B1"],
                                                             "region": region})
        assert status == 200
        record = emu.log[-1]
    result = np.load(io.BytesIO(payload))["B1"]
    # The UTM bounding box of the projected rectangle snaps outward to whole native pixels.
    row0, col0 = record["row_off"], record["col_off"]
    assert 38 <= row0 <= 40 and 48 <= col0 <= 50
    assert result.shape == (record["height"], record["width"])
    assert 120 <= col0 + record["width"] <= 123 and 90 <= row0 + record["height"] <= 93
    np.testing.assert_array_equal(
        result, mixed_files["arrays"]["B1"][row0:row0 + result.shape[0],
                                            col0:col0 + result.shape[1]])


async def test_region_with_dimensions_is_rescaled(mixed_files: dict[str, Any]) -> None:
    region = {"type": "Polygon", "coordinates": [[[16.3, 46.9], [16.4, 46.9], [16.4, 46.95],
                                                  [16.3, 46.95], [16.3, 46.9]]]}
    body = {"fileFormat": "NPY", "bandIds": ["u8"], "region": region,
            "grid": {"crsCode": "EPSG:4326", "dimensions": {"width": 40, "height": 25}}}
    async with run_emulator(make_config(mixed_files)) as emu, aiohttp.ClientSession() as s:
        status, payload, _ = await post(s, emu.url, SYN, body)
        record = emu.log[-1]
    assert status == 200 and np.load(io.BytesIO(payload)).shape == (25, 40)
    assert record["affine"] == pytest.approx([0.1 / 40, 0, 16.3, 0, -0.05 / 25, 46.95])
    assert record["col_off"] is None  # another CRS: resampled, no native offset


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
async def test_png_and_jpeg_of_8_bit_data(mixed_files: dict[str, Any]) -> None:
    arrays = mixed_files["arrays"]
    async with run_emulator(make_config(mixed_files)) as emu, aiohttp.ClientSession() as s:
        status, payload, response = await post(
            s, emu.url, MIXED, grid_body(0, 0, 64, 32, fileFormat="PNG", bandIds=["B1"]))
        assert status == 200 and response.headers["Content-Type"] == "image/png"
        with MemoryFile(payload) as memory, memory.open() as dataset:
            assert dataset.driver == "PNG" and dataset.count == 1
            np.testing.assert_array_equal(dataset.read(1), arrays["B1"][:32, :64])
        status, payload, response = await post(
            s, emu.url, MIXED,
            grid_body(0, 0, 64, 32, fileFormat="JPEG", bandIds=["B1", "B2", "B1"]))
        assert status == 200 and response.headers["Content-Type"] == "image/jpeg"
        with MemoryFile(payload) as memory, memory.open() as dataset:
            assert dataset.driver == "JPEG" and dataset.count == 3
        # Without visualizationOptions only 8-bit data with 1 or 3 bands.
        for band_ids in (["height"], ["B1", "B2"]):
            status, payload, _ = await post(
                s, emu.url, MIXED, grid_body(0, 0, 8, 8, fileFormat="PNG", bandIds=band_ids))
            assert status == 400 and error_of(payload)["status"] == "INVALID_ARGUMENT"


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
async def test_visualization_options_give_8_bit_rgb(mixed_files: dict[str, Any]) -> None:
    height = mixed_files["arrays"]["height"][:16, :16].astype(np.float64)
    vis = {"ranges": [{"min": -32768, "max": 32767}], "paletteColors": ["000000", "#ff0000"]}
    body = grid_body(0, 0, 16, 16, fileFormat="PNG", bandIds=["height"],
                     visualizationOptions=vis)
    async with run_emulator(make_config(mixed_files)) as emu, aiohttp.ClientSession() as s:
        status, payload, _ = await post(s, emu.url, MIXED, body)
        assert status == 200
        with MemoryFile(payload) as memory, memory.open() as dataset:
            rgb = dataset.read()
        expected_red = np.rint((height + 32768) / 65535 * 255)
        assert rgb.shape == (3, 16, 16)
        np.testing.assert_allclose(rgb[0], expected_red, atol=1)
        assert not rgb[1].any() and not rgb[2].any()
        # Gamma brightens mid-tones of a grey stretch.
        body["visualizationOptions"] = {"ranges": [{"min": 0, "max": 255}], "gamma": 2.0}
        body["bandIds"] = ["B1"]
        status, payload, _ = await post(s, emu.url, MIXED, body)
        with MemoryFile(payload) as memory, memory.open() as dataset:
            grey = dataset.read()
        source = mixed_files["arrays"]["B1"][:16, :16] / 255.0
        np.testing.assert_allclose(grey[0], np.rint(source ** 0.5 * 255), atol=1)
        np.testing.assert_array_equal(grey[0], grey[2])


async def test_auto_jpeg_png_is_jpeg_inside_and_png_at_the_edge(
        mixed_files: dict[str, Any]) -> None:
    async with run_emulator(make_config(mixed_files)) as emu, aiohttp.ClientSession() as s:
        _, _, inside = await post(s, emu.url, MIXED, grid_body(0, 0, 16, 16, bandIds=["B1"],
                                                                 fileFormat="AUTO_JPEG_PNG"))
        _, _, edge = await post(s, emu.url, MIXED, grid_body(-8, 0, 16, 16, bandIds=["B1"],
                                                               fileFormat="AUTO_JPEG_PNG"))
    assert inside.headers["Content-Type"] == "image/jpeg"
    assert edge.headers["Content-Type"] == "image/png"


# -- limits and errors -------------------------------------------------------------------


async def test_total_request_size_limit(mixed_files: dict[str, Any]) -> None:
    # 4 bands (1+2+2+4 bytes + 4 mask bytes = 13 per pixel).
    async with run_emulator(make_config(mixed_files)) as emu, aiohttp.ClientSession() as s:
        status, payload, _ = await post(s, emu.url, SYN, grid_body(0, 0, 2048, 2048,
                                                                   fileFormat="NPY"))
        assert status == 400
        error = error_of(payload)
        assert error == {"code": 400, "status": "INVALID_ARGUMENT", "message":
                         "Total request size (54525952 bytes) must be less than or equal to "
                         "50331648 bytes."}
        # Exactly at the limit is fine: 4096 x 6144 x (1 + 1) bytes = 50331648.
        status, _, _ = await post(s, emu.url, SYN, grid_body(0, 0, 4096, 6144, fileFormat="NPY",
                                                             bandIds=["u8"]))
        assert status == 200


async def test_side_and_band_count_limits(mixed_files: dict[str, Any]) -> None:
    async with run_emulator(make_config(mixed_files)) as emu, aiohttp.ClientSession() as s:
        status, payload, _ = await post(s, emu.url, SYN, grid_body(0, 0, 32769, 1,
                                                                   fileFormat="NPY",
                                                                   bandIds=["u8"]))
        assert status == 400
        message = error_of(payload)["message"]
        assert "32769" in message and "32768" in message
        status, payload, _ = await post(s, emu.url, SYN, grid_body(0, 0, 1, 1, fileFormat="NPY",
                                                                   bandIds=["u8"] * 1025))
        assert status == 400
        assert error_of(payload)["message"] == (
            "Number of bands (1025) must be less than or equal to 1024.")


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"fileFormat": "NPY", "bandIds": ["nope"]}, "nope"),
        ({"fileFormat": "GEO_TIFF"}, "same data type"),
        ({"fileFormat": "NPY", "grid": {"crsCode": "EPSG:4326", "crsWkt": "GEOGCS[]"}},
         "crsCode"),
        ({"fileFormat": "NPY", "grid": {"dimensions": {"width": 0, "height": 5}}},
         "dimensions"),
        ({"fileFormat": "NPY", "grid": {"crsCode": "EPSG:999999"}}, "CRS"),
        ({"fileFormat": "NPY", "grid": {"affineTransform": {"scaleX": 0, "scaleY": 0}}},
         "degenerate"),
        ({"fileFormat": "NPY", "unknownField": 1}, "unknownField"),
        ({"fileFormat": "TIFF_PLEASE"}, "fileFormat"),
        (b"{not json", "Invalid JSON"),
        (b"[1, 2]", "Invalid JSON"),
    ],
)
async def test_bad_requests_answer_400(mixed_files: dict[str, Any], body: Any,
                                       needle: str) -> None:
    async with run_emulator(make_config(mixed_files)) as emu, aiohttp.ClientSession() as s:
        status, payload, response = await post(s, emu.url, MIXED, body)
    assert status == 400
    assert response.headers["Content-Type"].startswith("application/json")
    error = error_of(payload)
    assert error["code"] == 400 and error["status"] == "INVALID_ARGUMENT"
    assert needle in error["message"]


async def test_not_found_and_permission_denied(mixed_files: dict[str, Any]) -> None:
    async with run_emulator(make_config(mixed_files)) as emu, aiohttp.ClientSession() as s:
        async with s.get(f"{emu.url}/v1/projects/demo/assets/missing") as response:
            assert response.status == 404
            assert (await response.json())["error"]["status"] == "NOT_FOUND"
        status, payload, _ = await post(s, emu.url, "projects/demo/assets/missing", {})
        assert status == 404 and error_of(payload)["status"] == "NOT_FOUND"
        status, payload, _ = await post(s, emu.url, SECRET, {})
        assert status == 403 and error_of(payload)["status"] == "PERMISSION_DENIED"
        async with s.get(f"{emu.url}/v1/{SECRET}") as response:
            assert response.status == 403
        async with s.get(f"{emu.url}/v2/{MIXED}") as response:
            assert response.status == 404


async def test_bearer_token_is_required_when_configured(mixed_files: dict[str, Any]) -> None:
    config = make_config(mixed_files, token="s3cret")
    async with run_emulator(config) as emu, aiohttp.ClientSession() as s:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            async with s.get(f"{emu.url}/v1/{MIXED}", headers=headers) as response:
                assert response.status == 401
                assert (await response.json())["error"]["status"] == "UNAUTHENTICATED"
            async with s.post(f"{emu.url}/v1/{MIXED}:getPixels", json={},
                              headers=headers) as response:
                assert response.status == 401
        async with s.get(f"{emu.url}/v1/{MIXED}",
                         headers={"Authorization": "Bearer s3cret"}) as response:
            assert response.status == 200
    # Without a configured token anything goes.
    async with run_emulator(make_config(mixed_files)) as emu, aiohttp.ClientSession() as s, \
            s.get(f"{emu.url}/v1/{MIXED}") as response:
        assert response.status == 200


async def test_asset_names_may_arrive_percent_encoded(mixed_files: dict[str, Any]) -> None:
    async with run_emulator(make_config(mixed_files)) as emu, aiohttp.ClientSession() as s:
        url = f"{emu.url}/v1alpha/projects%2Fdemo%2Fassets%2Fmixed_files%3AgetPixels"
        async with s.post(aiohttp.client.URL(url, encoded=True),
                          json={"fileFormat": "NPY", "bandIds": ["B1"]}) as response:
            assert response.status == 200
            result = np.load(io.BytesIO(await response.read()))
    np.testing.assert_array_equal(result["B1"], mixed_files["arrays"]["B1"])


# -- quotas and service time -------------------------------------------------------------


async def test_concurrency_quota_answers_429(mixed_files: dict[str, Any]) -> None:
    config = make_config(mixed_files, max_concurrent=1, service_base_s=0.5, service_jitter=0.0)
    async with run_emulator(config) as emu, aiohttp.ClientSession() as s:
        slow = asyncio.create_task(post(s, emu.url, SYN, grid_body(0, 0, 8, 8, fileFormat="NPY")))
        while emu.quota.in_flight == 0:  # wait until the first call holds the only slot
            await asyncio.sleep(0.005)
        async with s.get(f"{emu.url}/v1/{SYN}") as response:  # metadata counts too
            assert response.status == 429
            error = (await response.json())["error"]
        assert error == {"code": 429, "status": "RESOURCE_EXHAUSTED",
                         "message": "Too many concurrent aggregations."}
        status, _, _ = await slow
        assert status == 200
        async with s.get(f"{emu.url}/v1/{SYN}") as response:  # the slot is free again
            assert response.status == 200


async def test_qps_quota_counts_a_rolling_minute_by_default(
        mixed_files: dict[str, Any]) -> None:
    """100/s is 6,000 a minute, as the service documents it: a second may hold more than 100,
    no rolling minute more than 6,000; the 429 names the per-minute limit, as the service's."""
    now = [1000.0]
    async with run_emulator(make_config(mixed_files, max_qps=0.05)) as emu, \
            aiohttp.ClientSession() as s:
        emu.quota.clock = lambda: now[0]  # a frozen clock makes the window deterministic
        statuses = []
        for _ in range(4):  # 0.05/s is 3 a minute, all in the same instant
            async with s.get(f"{emu.url}/v1/{SYN}") as response:
                statuses.append(response.status)
                body = await response.json()
        assert statuses == [200, 200, 200, 429]
        assert body["error"] == {
            "code": 429, "status": "RESOURCE_EXHAUSTED",
            "message": "Quota exceeded for quota metric 'Number of read requests' and limit "
                       "'Number of read requests per minute per user'"}
        now[0] += 59.9  # still inside the minute
        async with s.get(f"{emu.url}/v1/{SYN}") as response:
            assert response.status == 429
        now[0] += 0.101  # the first three have left the rolling minute
        async with s.get(f"{emu.url}/v1/{SYN}") as response:
            assert response.status == 200
        # The documented quota: 101 calls in one instant are within 6,000 a minute.
        emu.config.max_qps = 100.0
        now[0] += 60.0
        for _ in range(101):
            async with s.get(f"{emu.url}/v1/{SYN}") as response:
                assert response.status == 200


async def test_qps_quota_is_a_sliding_one_second_window_in_strict_mode(
        mixed_files: dict[str, Any]) -> None:
    now = [1000.0]
    async with run_emulator(make_config(mixed_files, max_qps=3.0, qps_window="second")) \
            as emu, aiohttp.ClientSession() as s:
        emu.quota.clock = lambda: now[0]  # a frozen clock makes the window deterministic
        statuses = []
        for _ in range(4):
            async with s.get(f"{emu.url}/v1/{SYN}") as response:
                statuses.append(response.status)
                body = await response.json()
        assert statuses == [200, 200, 200, 429]
        assert body["error"]["status"] == "RESOURCE_EXHAUSTED"
        assert "Quota exceeded" in body["error"]["message"]
        now[0] += 1.001
        async with s.get(f"{emu.url}/v1/{SYN}") as response:
            assert response.status == 200
        # Token and discovery calls are outside the quota.
        emu.config.max_qps = 1.0
        async with s.get(f"{emu.url}/v1/{SYN}") as response:
            assert response.status == 429
        async with s.post(f"{emu.url}/token", data={"grant_type": "refresh_token"}) as response:
            assert response.status == 200
        # Disabling the quota live takes effect at once.
        emu.config.max_qps = None
        async with s.get(f"{emu.url}/v1/{SYN}") as response:
            assert response.status == 200


async def test_service_time_is_at_least_the_model(mixed_files: dict[str, Any]) -> None:
    config = make_config(mixed_files, service_base_s=0.3, service_jitter=0.0)
    async with run_emulator(config) as emu, aiohttp.ClientSession() as s:
        started = time.monotonic()
        status, _, _ = await post(s, emu.url, SYN, grid_body(0, 0, 16, 16, fileFormat="NPY"))
        assert status == 200
        assert time.monotonic() - started >= 0.3
        assert emu.log[-1]["service_s"] >= 0.3
        # Per-MB time: 16 x 16 x 13 bytes = 3328 bytes -> 0.3 + 0.2 / 1e6 * ... ; use a big rate.
        emu.config.service_base_s = 0.0
        emu.config.service_per_mb_s = 100.0  # 3328 bytes -> 0.3328 s
        started = time.monotonic()
        await post(s, emu.url, SYN, grid_body(0, 0, 16, 16, fileFormat="NPY"))
        assert time.monotonic() - started >= 0.33


async def test_concurrent_calls_are_served_in_parallel(mixed_files: dict[str, Any]) -> None:
    config = make_config(mixed_files, service_base_s=0.3, service_jitter=0.0)
    async with run_emulator(config) as emu, aiohttp.ClientSession() as s:
        calls = [post(s, emu.url, SYN, grid_body(i * 16, 0, 16, 16, fileFormat="NPY"))
                 for i in range(8)]
        results = await asyncio.gather(*calls)
        assert [r[0] for r in results] == [200] * 8
        # All eight were in flight together: each one's log record overlaps every other's.
        starts = [r["time"] for r in emu.log]
        ends = [r["time"] + r["service_s"] for r in emu.log]
        assert max(starts) < min(ends)


# -- faults ------------------------------------------------------------------------------


@pytest.mark.parametrize(("faults", "status", "name"), [
    (FaultConfig(p500=1.0), 500, "INTERNAL"),
    (FaultConfig(p503=1.0), 503, "UNAVAILABLE"),
    (FaultConfig(p429=1.0), 429, "RESOURCE_EXHAUSTED"),
])
async def test_injected_error_statuses(mixed_files: dict[str, Any], faults: FaultConfig,
                                       status: int, name: str) -> None:
    async with run_emulator(make_config(mixed_files, faults=faults)) as emu, \
            aiohttp.ClientSession() as s:
        got, payload, response = await post(s, emu.url, SYN, grid_body(0, 0, 8, 8))
        assert got == status and error_of(payload)["status"] == name
        assert "Retry-After" not in response.headers
        assert emu.log[-1]["fault"] == str(status)
        # Faults are for getPixels only.
        async with s.get(f"{emu.url}/v1/{SYN}") as response:
            assert response.status == 200


async def test_injected_429_carries_retry_after_for_its_share(
        mixed_files: dict[str, Any]) -> None:
    faults = FaultConfig(p429=1.0, retry_after_share=0.5, retry_after_s=2.0)
    async with run_emulator(make_config(mixed_files, faults=faults, seed=3)) as emu, \
            aiohttp.ClientSession() as s:
        retry_afters = []
        for _ in range(20):
            status, _, response = await post(s, emu.url, SYN, grid_body(0, 0, 8, 8))
            assert status == 429
            retry_afters.append(response.headers.get("Retry-After"))
    assert set(retry_afters) == {None, "2"}
    assert 3 <= retry_afters.count("2") <= 17


async def test_injected_reset_drops_the_connection(mixed_files: dict[str, Any]) -> None:
    faults = FaultConfig(p_reset=1.0)
    async with run_emulator(make_config(mixed_files, faults=faults)) as emu, \
            aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.ClientConnectionError):
            await post(s, emu.url, SYN, grid_body(0, 0, 8, 8, fileFormat="NPY"))
        assert emu.log[-1]["fault"] == "reset" and emu.log[-1]["status"] is None
        assert emu.quota.in_flight == 0


async def test_injected_truncation_breaks_the_payload(mixed_files: dict[str, Any]) -> None:
    faults = FaultConfig(p_truncate=1.0)
    async with run_emulator(make_config(mixed_files, faults=faults)) as emu, \
            aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.ClientPayloadError):
            await post(s, emu.url, SYN, grid_body(0, 0, 256, 256, fileFormat="NPY"))
        record = emu.log[-1]
    assert record["fault"] == "truncate" and record["status"] == 200
    assert 0 < record["response_bytes"] < 256 * 256 * 9


async def test_injected_stall_trips_a_read_timeout(mixed_files: dict[str, Any]) -> None:
    faults = FaultConfig(p_stall=1.0, stall_s=5.0)
    timeout = aiohttp.ClientTimeout(sock_read=0.3)
    async with run_emulator(make_config(mixed_files, faults=faults)) as emu, \
            aiohttp.ClientSession(timeout=timeout) as s:
        started = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            async with s.post(f"{emu.url}/v1/{SYN}:getPixels",
                              json=grid_body(0, 0, 8, 8, fileFormat="NPY")) as response:
                assert response.status == 200  # headers arrive, the body does not
                await response.read()
        assert time.monotonic() - started >= 0.3
        # The stalled handler notices the client left and frees its slot.
        while emu.quota.in_flight:
            await asyncio.sleep(0.01)
        assert emu.log[-1]["fault"] == "stall"


async def test_bandwidth_cap_paces_the_body(mixed_files: dict[str, Any]) -> None:
    faults = FaultConfig(bandwidth_bps=400_000)
    async with run_emulator(make_config(mixed_files, faults=faults)) as emu, \
            aiohttp.ClientSession() as s:
        started = time.monotonic()
        status, payload, _ = await post(s, emu.url, SYN, grid_body(0, 0, 128, 128,
                                                                   fileFormat="NPY"))
        elapsed = time.monotonic() - started
    assert status == 200 and len(payload) > 140_000
    assert elapsed >= len(payload) / 400_000
    result = np.load(io.BytesIO(payload))
    np.testing.assert_array_equal(result["i16"], synthetic_pixels(1, np.arange(128),
                                                                  np.arange(128)))


async def test_fault_sequence_is_seeded(mixed_files: dict[str, Any]) -> None:
    async def statuses(seed: int) -> list[int]:
        faults = FaultConfig(p500=0.3, p503=0.2)
        config = make_config(mixed_files, faults=faults, seed=seed)
        async with run_emulator(config) as emu, aiohttp.ClientSession() as s:
            return [(await post(s, emu.url, SYN, grid_body(0, 0, 4, 4)))[0] for _ in range(30)]

    first, again, other = await statuses(11), await statuses(11), await statuses(12)
    assert first == again
    assert first != other
    assert {200, 500, 503} <= set(first)


async def test_faults_can_be_changed_live(mixed_files: dict[str, Any]) -> None:
    async with run_emulator(make_config(mixed_files)) as emu, aiohttp.ClientSession() as s:
        assert (await post(s, emu.url, SYN, grid_body(0, 0, 4, 4)))[0] == 200
        emu.config.faults = FaultConfig(p503=1.0)
        assert (await post(s, emu.url, SYN, grid_body(0, 0, 4, 4)))[0] == 503
        emu.config.faults = FaultConfig()
        assert (await post(s, emu.url, SYN, grid_body(0, 0, 4, 4)))[0] == 200


# -- the request log ---------------------------------------------------------------------


async def test_request_log_records_every_call(mixed_files: dict[str, Any],
                                              tmp_path: Path) -> None:
    log_path = tmp_path / "log" / "requests.jsonl"
    config = make_config(mixed_files, log_path=str(log_path), token="tok-value")
    headers = {"Authorization": "Bearer tok-value"}
    async with run_emulator(config) as emu, aiohttp.ClientSession(headers=headers) as s:
        async with s.get(f"{emu.url}/v1/{MIXED}") as response:
            meta_bytes = len(await response.read())
        status, payload, _ = await post(
            s, emu.url, SYN, grid_body(100, 200, 32, 16, fileFormat="NPY", bandIds=["u16"],
                                       workloadTag="tile-test"))
        assert status == 200
        scaled = grid_body(0, 0, 8, 8, TRANSFORM @ Affine.scale(2.5), fileFormat="NPY")
        assert (await post(s, emu.url, SYN, scaled))[0] == 200
        await post(s, emu.url, SYN, {"bandIds": ["zz"]})
        async with s.post(f"{emu.url}/token", data={"grant_type": "refresh_token",
                                                     "refresh_token": "rt-secret"}) as response:
            assert (await response.json())["access_token"] == "tok-value"
        records = list(emu.log)
    meta, pixels, resampled, bad, token = records
    assert meta["op"] == "get_asset" and meta["method"] == "GET" and meta["asset"] == MIXED
    assert meta["status"] == 200 and meta["response_bytes"] == meta_bytes
    assert pixels["op"] == "get_pixels" and pixels["asset"] == SYN
    assert pixels["crs"] == CRS and pixels["width"] == 32 and pixels["height"] == 16
    assert pixels["affine"] == [10, 0, 601000, 0, -10, 5198000]
    assert (pixels["col_off"], pixels["row_off"]) == (100, 200)
    assert pixels["bands"] == ["u16"] and pixels["format"] == "NPY"
    assert pixels["request_size"] == 32 * 16 * 3 and pixels["response_bytes"] == len(payload)
    assert pixels["workload_tag"] == "tile-test" and pixels["fault"] is None
    assert pixels["service_s"] >= 0 and pixels["time"] > 0
    assert resampled["col_off"] is None and resampled["affine"][0] == 25
    assert bad["status"] == 400
    assert token["op"] == "token" and token["status"] == 200
    written = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert written == json.loads(json.dumps(records))
    text = log_path.read_text()
    assert "tok-value" not in text and "rt-secret" not in text  # no secrets in the log


# -- token and discovery -----------------------------------------------------------------


async def test_google_auth_credentials_refresh_against_the_token_endpoint(
        mixed_files: dict[str, Any]) -> None:
    import google.auth.transport.requests
    import google.oauth2.credentials

    async with run_emulator(make_config(mixed_files, token="abc")) as emu:
        credentials = google.oauth2.credentials.Credentials(
            token=None, refresh_token="r", client_id="c", client_secret="s",
            token_uri=f"{emu.url}/token")
        # google-auth refreshes with a blocking HTTP call: keep it off the loop.
        await asyncio.to_thread(credentials.refresh, google.auth.transport.requests.Request())
        assert credentials.token == "abc"
        async with aiohttp.ClientSession() as s, s.post(
                f"{emu.url}/token", data={"grant_type": "password"}) as response:
            assert response.status == 400


async def test_discovery_document_points_at_the_emulator(mixed_files: dict[str, Any]) -> None:
    async with run_emulator(make_config(mixed_files)) as emu, aiohttp.ClientSession() as s:
        async with s.get(f"{emu.url}/$discovery/rest",
                         params={"version": "v1", "prettyPrint": "false"}) as response:
            assert response.status == 200
            document = await response.json()
        assert emu.log[-1]["op"] == "discovery"
    assert document["rootUrl"] == f"{emu.url}/" and document["baseUrl"] == f"{emu.url}/"
    methods = document["resources"]["projects"]["resources"]["assets"]["methods"]
    assert methods["getPixels"]["path"].endswith(":getPixels")


async def test_discovery_is_404_without_earthengine_api(mixed_files: dict[str, Any],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import bulkpix.emulator.discovery as discovery

    monkeypatch.setattr(discovery, "packaged_ee_json", lambda resource: None)
    async with run_emulator(make_config(mixed_files)) as emu, aiohttp.ClientSession() as s, \
            s.get(f"{emu.url}/$discovery/rest?version=v1beta") as response:
        assert response.status == 404
        assert (await response.json())["error"]["status"] == "NOT_FOUND"


async def test_crs_wkt_is_the_same_grid_as_crs_code(mixed_files: dict[str, Any]) -> None:
    wkt = rasterio.crs.CRS.from_user_input(CRS).to_wkt()
    by_code = grid_body(3, 4, 20, 10, bandIds=["height"])
    by_code["grid"]["crsCode"] = CRS
    by_wkt = grid_body(3, 4, 20, 10, bandIds=["height"])
    by_wkt["grid"]["crsWkt"] = wkt
    async with run_emulator(make_config(mixed_files)) as emu, aiohttp.ClientSession() as s:
        _, code_payload, _ = await post(s, emu.url, MIXED, by_code)
        _, wkt_payload, _ = await post(s, emu.url, MIXED, by_wkt)
        assert emu.log[-1]["col_off"] == 3  # the same CRS spelled as WKT is still native
    assert code_payload == wkt_payload
    np.testing.assert_array_equal(np.load(io.BytesIO(wkt_payload))["height"],
                                  mixed_files["arrays"]["height"][4:14, 3:23])


def test_emulator_in_thread_reports_a_bad_asset(tmp_path: Path) -> None:
    from bulkpix.emulator import emulator_in_thread

    config = EmulatorConfig(assets={MIXED: [str(tmp_path / "missing.tif")]})
    with pytest.raises(ValueError, match=r"missing\.tif"), emulator_in_thread(config):
        pass


async def test_client_leaving_mid_body_is_survived(mixed_files: dict[str, Any]) -> None:
    faults = FaultConfig(bandwidth_bps=200_000)
    async with run_emulator(make_config(mixed_files, faults=faults)) as emu:
        async with aiohttp.ClientSession() as s, s.post(
                f"{emu.url}/v1/{SYN}:getPixels",
                json=grid_body(0, 0, 256, 256)) as response:
            await response.content.readexactly(10_000)  # then drop the connection
        while emu.quota.in_flight:  # the paced writer notices and frees its slot
            await asyncio.sleep(0.01)
        async with aiohttp.ClientSession() as s:
            status, _, _ = await post(s, emu.url, SYN, grid_body(0, 0, 4, 4))
        assert status == 200
        assert [r["status"] for r in emu.log] == [200, 200]


async def test_a_client_gone_mid_body_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A client that drops its connection while a large body is being sent: the server
    logs the call and says nothing else (no "emulator failed" traceback on the user's
    terminal, as the in-process emulator shares it)."""
    import socket

    from bulkpix.emulator import EmulatorConfig, SyntheticAsset, run_emulator

    name = "projects/demo/assets/synth"
    config = EmulatorConfig(synthetic={name: SyntheticAsset(width=4000, height=4000)})
    body = json.dumps({
        "fileFormat": "NPY",
        "grid": {"dimensions": {"width": 1792, "height": 1792},
                 "affineTransform": {"scaleX": 10, "shearX": 0, "translateX": 600000,
                                     "shearY": 0, "scaleY": -10, "translateY": 5200000},
                 "crsCode": "EPSG:32633"},
    }).encode()
    async with run_emulator(config) as emu:
        host, port = emu.url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"POST /v1/{name}:getPixels HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            f"\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
        )
        await writer.drain()
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        await reader.readexactly(1 << 16)  # a little of the ~29 MB body, then gone
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.close()
        for _ in range(200):  # until the server has logged the call (bounded by turns)
            if any(r["op"] == "get_pixels" for r in emu.log):
                break
            await asyncio.sleep(0.01)
    assert [r["op"] for r in emu.log] == ["get_pixels"]
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
