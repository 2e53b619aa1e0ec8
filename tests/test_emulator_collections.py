"""The emulator's image collections: listing (pages, times, regions, filters) and their images."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from affine import Affine

from bulkpix.ee.auth import NoAuth
from bulkpix.ee.client import EEClient
from bulkpix.emulator import EmulatorConfig, run_emulator
from bulkpix.emulator.collections import parse_filter
from bulkpix.emulator.config import (
    FileCollection,
    FileImageSpec,
    SyntheticCollection,
)
from bulkpix.emulator.status import ApiError
from bulkpix.errors import NotFound, RequestInvalid
from bulkpix.transfer.limits import Governor
from tests.conftest import write_tif

COLL = "projects/p/assets/tiles"
# 3 x 2 tiles over 2 dates in two UTM zones: 24 images.
SPEC = SyntheticCollection(tiles=(3, 2), tile_size=64, overlap=8, scale=30, dates=2,
                           start="2024-05-01", crs=("EPSG:32632", "EPSG:32633"),
                           origin=(11.95, 46.0))


@pytest.fixture
async def emu_client() -> AsyncIterator[tuple[Any, EEClient]]:
    config = EmulatorConfig(collections={COLL: SPEC}, max_qps=None)
    async with run_emulator(config) as emu:
        client = EEClient(emu.url, auth=NoAuth(), governor=Governor(8, 1000))
        async with client:
            yield emu, client


async def _ids(client: EEClient, **kwargs: Any) -> list[str]:
    return [image["name"] async for image in client.list_images(COLL, **kwargs)]


async def test_listing_follows_every_page(emu_client: tuple[Any, EEClient]) -> None:
    emu, client = emu_client
    ids = await _ids(client, page_size=5)
    assert len(ids) == 24 == len(set(ids))
    pages = [r for r in emu.log if r["op"] == "list_images"]
    assert len(pages) == 5  # 5 + 5 + 5 + 5 + 4
    assert all(r["path"].startswith("/v1alpha/") for r in pages)
    image = await client.get_asset(ids[0])
    assert image["startTime"] == "2024-05-01T00:00:00Z"
    assert image["endTime"] == "2024-05-02T00:00:00Z"
    assert image["geometry"]["type"] == "Polygon"
    assert image["properties"]["zone"] == "EPSG32632"
    assert (await client.get_asset(COLL))["type"] == "IMAGE_COLLECTION"


async def test_listing_selects_by_time_region_and_filter(
    emu_client: tuple[Any, EEClient],
) -> None:
    _emu, client = emu_client
    second_day = await _ids(client, start="2024-05-02T00:00:00Z", end="2024-05-03T00:00:00Z")
    assert len(second_day) == 12 and all(i.endswith("_d001") for i in second_day)
    # Only the southern row of tiles reaches this far south of the origin (46.0 N).
    south = {"type": "Polygon", "coordinates": [[[11.96, 45.958], [11.961, 45.958],
                                                 [11.961, 45.96], [11.96, 45.958]]]}
    found = await _ids(client, region=south)
    assert found and all("_r2_" in i for i in found)
    assert {"EPSG32632", "EPSG32633"} == {i.rsplit("/", 1)[1].split("_")[0] for i in found}
    assert 4 <= len(found) <= 8
    cloudy = await _ids(client, filter='properties.cloud < 40 AND zone = "EPSG32632"')
    listed = [image async for image in client.list_images(COLL)]
    expected = [i["name"] for i in listed
                if i["properties"]["cloud"] < 40 and i["properties"]["zone"] == "EPSG32632"]
    assert cloudy == expected and 0 < len(cloudy) < 12


async def test_list_assets_takes_the_aip160_filter(emu_client: tuple[Any, EEClient]) -> None:
    _emu, client = emu_client
    page = await client.list_images_page(
        COLL, {"filter": 'startTime >= "2024-05-02T00:00:00Z" AND endTime < "2024-06-01T00:00:00Z"',
               "pageSize": "100"}, method="listAssets")
    assert len(page["images"]) == 12 and page["nextPageToken"] is None


async def test_unknown_collection_and_bad_filter_are_refused(
    emu_client: tuple[Any, EEClient],
) -> None:
    _emu, client = emu_client
    with pytest.raises(NotFound, match="not found"):
        [i async for i in client.list_images("projects/p/assets/nope")]
    with pytest.raises(RequestInvalid, match="Invalid filter"):
        [i async for i in client.list_images(COLL, filter="cloud <")]
    with pytest.raises(RequestInvalid, match="Invalid region"):
        [i async for i in client.list_images(COLL, region={"type": "Polygon"})]


@pytest.mark.parametrize("text", ["cloud <", "(cloud < 3", "cloud ~ 3", "and", "x < 1 y",
                                  'intersects("nope")', "startTime > 'yesterday'"])
def test_unparseable_filters_are_400(text: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_filter(text)
    assert caught.value.code == 400


async def test_images_are_masked_outside_their_footprint(
    emu_client: tuple[Any, EEClient],
) -> None:
    emu, client = emu_client
    name = (await _ids(client))[0]
    image = emu.assets[name]
    # A window reaching past the image's raster: the part outside is 0.
    grid = {"crsCode": "EPSG:32632", "dimensions": {"width": 32, "height": 32},
            "affineTransform": {"scaleX": 30, "scaleY": -30,
                                "translateX": image.transform.c - 16 * 30,
                                "translateY": image.transform.f}}
    payload = await client.get_pixels(name, {"fileFormat": "NPY", "bandIds": ["u16"],
                                             "grid": grid})
    from bulkpix.ee.decode import decode_pixels

    values = decode_pixels(payload, "NPY", ["u16"], [np.dtype("uint16")], 32, 32)["u16"]
    assert (values[:, :16] == 0).all() and (values[:, 16:] != 0).any()


async def test_a_collection_of_geotiffs(tmp_path: Path) -> None:
    paths = [write_tif(tmp_path / f"s{i}.tif", [np.full((20, 20), i + 1, np.uint8)],
                       transform=Affine(10, 0, 600000 + 100 * i, 0, -10, 5200000))
             for i in range(3)]
    spec = FileCollection(tuple(FileImageSpec(str(p), f"2024-0{i + 1}-01", properties={"n": i})
                                for i, p in enumerate(paths)))
    async with run_emulator(EmulatorConfig(collections={COLL: spec})) as emu:
        client = EEClient(emu.url, auth=NoAuth(), governor=Governor(4, 100))
        async with client:
            images = [i async for i in client.list_images(COLL, filter="n >= 1")]
    assert [i["startTime"] for i in images] == ["2024-02-01T00:00:00Z", "2024-03-01T00:00:00Z"]
    assert json.dumps(images[0]["geometry"]).startswith('{"type": "Polygon"')


async def test_every_page_goes_through_the_callers_retry_loop(
    emu_client: tuple[Any, EEClient],
) -> None:
    _emu, client = emu_client
    calls = 0

    async def call(fetch: Any) -> Any:
        nonlocal calls
        calls += 1
        return await fetch()

    images = [i async for i in client.list_images(COLL, page_size=7, call=call)]
    assert len(images) == 24 and calls == 4


def test_the_emulator_command_serves_a_synthetic_collection() -> None:
    from bulkpix.emulator.cli import _UsageError, build_parser, config_from_args

    args = build_parser().parse_args(
        ["--collection", "projects/p/assets/t:2x3x4:256@EPSG:32632,EPSG:32633"])
    spec = config_from_args(args).collections["projects/p/assets/t"]
    assert isinstance(spec, SyntheticCollection)
    assert (spec.tiles, spec.dates, spec.tile_size, spec.crs) == (
        (2, 3), 4, 256, ("EPSG:32632", "EPSG:32633"))
    with pytest.raises(_UsageError, match="expected NAME:ROWSxCOLSxDATES"):
        config_from_args(build_parser().parse_args(["--collection", "projects/p/assets/t:2x3"]))
