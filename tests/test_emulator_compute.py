"""The emulator computes: expression graphs, computePixels, value:compute, computation faults."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import rasterio
import requests
from affine import Affine
from pyproj import Transformer
from rasterio.crs import CRS

from bulkpix.emulator import EmulatorConfig, emulator_in_thread
from bulkpix.emulator.assets import Asset, FileAsset
from bulkpix.emulator.compute import CollectionImage, Context, Image, evaluate
from bulkpix.emulator.compute_api import QUOTA_STATUS_HEADER
from bulkpix.emulator.config import ComputeConfig
from bulkpix.emulator.resample import OutputGrid
from bulkpix.emulator.status import ApiError
from tests.conftest import write_tif

UTM = "EPSG:32633"
NATIVE = Affine(10, 0, 500000, 0, -10, 4600000)
WIDTH, HEIGHT = 50, 40
S2 = "projects/demo-project/assets/s2"
SIGNED = "projects/demo-project/assets/signed"
COLLECTION = "projects/demo-project/assets/col"
DATES = ["2024-01-05", "2024-01-12", "2024-01-19", "2024-02-02", "2024-02-09"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two assets on one 10 m UTM grid and a 5-date collection on the same grid."""
    directory = tmp_path_factory.mktemp("compute")
    rng = np.random.default_rng(13)
    s2 = rng.integers(0, 3000, (2, HEIGHT, WIDTH)).astype(np.uint16)
    s2[:, 0, 0] = 0  # a 0/0 normalized difference
    signed = np.stack([rng.integers(-500, 500, (HEIGHT, WIDTH)).astype(np.int16),
                       rng.integers(-500, 500, (HEIGHT, WIDTH)).astype(np.int16)])
    signed[1, :, :3] = 0  # divisions by zero
    floats = (rng.standard_normal((1, HEIGHT, WIDTH)) * 100).astype(np.float32)
    assets = {
        S2: [str(write_tif(directory / "s2.tif", s2, crs=UTM, transform=NATIVE,
                           descriptions=["B4", "B8"]))],
        SIGNED: [str(write_tif(directory / "signed.tif", signed, crs=UTM, transform=NATIVE,
                               descriptions=["a", "b"])),
                 str(write_tif(directory / "f.tif", floats, crs=UTM, transform=NATIVE,
                               descriptions=["f"]))],
    }
    members = []
    for i in range(len(DATES)):
        stack = rng.integers(0, 3000, (2, HEIGHT, WIDTH)).astype(np.uint16)
        stack[:, rng.random((HEIGHT, WIDTH)) < 0.3] = 0  # "clouds": masked by updateMask
        name = f"{COLLECTION}/img{i}"
        assets[name] = [str(write_tif(directory / f"c{i}.tif", stack, crs=UTM,
                                      transform=NATIVE, descriptions=["B4", "B8"]))]
        members.append(stack)
    return {"s2": s2, "signed": signed, "floats": floats[0], "assets": assets,
            "members": members}


def native_grid(col_off: int = 0, row_off: int = 0, width: int = WIDTH,
                height: int = HEIGHT) -> OutputGrid:
    return OutputGrid(CRS.from_user_input(UTM), NATIVE @ Affine.translation(col_off, row_off),
                      width, height, None)


def collection_source(assets: dict[str, Asset]) -> Any:
    """A collection given as a list of image assets with start times (the interface the
    server's collection listing fills in)."""
    def images(name: str) -> list[CollectionImage] | None:
        if name != COLLECTION:
            return None
        return [CollectionImage(assets[f"{COLLECTION}/img{i}"],
                                start_ms=int(np.datetime64(day, "ms").astype(np.int64)))
                for i, day in enumerate(DATES)]
    return images


@pytest.fixture(scope="module")
def assets(data: dict[str, Any]) -> dict[str, Asset]:
    return {name: FileAsset(name, paths) for name, paths in data["assets"].items()}


def context(assets: dict[str, Asset], grid: OutputGrid | None = None) -> Context:
    def asset(name: str) -> Asset:
        if name not in assets:
            raise ApiError(400, f"Image.load: Image asset '{name}' not found.")
        return assets[name]
    return Context(grid or native_grid(), asset, collection_source(assets))


# -- graph helpers: the nodes earthengine-api writes ------------------------------------------


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"functionInvocationValue": {"functionName": name, "arguments": {
        k: v if isinstance(v, dict) and len(v) == 1 and next(iter(v)) in _NODE_KINDS
        else {"constantValue": v} for k, v in arguments.items()}}}


_NODE_KINDS = {"functionInvocationValue", "valueReference", "constantValue"}


def load(name: str) -> dict[str, Any]:
    return call("Image.load", id=name)


def graph(node: dict[str, Any]) -> dict[str, Any]:
    return {"result": "0", "values": {"0": node}}


def run(assets: dict[str, Asset], node: dict[str, Any], grid: OutputGrid | None = None) -> Image:
    result = evaluate(graph(node), context(assets, grid))
    assert isinstance(result, Image)
    return result


def output(image: Image) -> dict[str, np.ndarray]:
    ids, arrays, _, _ = image.output()
    return dict(zip(ids, arrays, strict=True))


# -- each algorithm against numpy -------------------------------------------------------------


def test_load_reads_the_bands_with_their_types(assets: dict[str, Asset],
                                               data: dict[str, Any]) -> None:
    image = run(assets, load(SIGNED))
    assert image.describe() == {"type": "Image", "bands": [
        {"id": "a", "data_type": {"type": "PixelType", "precision": "int", "min": -32768,
                                  "max": 32767}},
        {"id": "b", "data_type": {"type": "PixelType", "precision": "int", "min": -32768,
                                  "max": 32767}},
        {"id": "f", "data_type": {"type": "PixelType", "precision": "float"}}]}
    out = output(image)
    np.testing.assert_array_equal(out["a"], data["signed"][0])
    np.testing.assert_array_equal(out["f"], data["floats"])
    assert out["f"].dtype == np.float32


def test_select_by_name_pattern_and_index_and_rename(assets: dict[str, Asset],
                                                     data: dict[str, Any]) -> None:
    image = run(assets, call("Image.select", input=load(SIGNED), bandSelectors=["f", "[ab]"]))
    assert image.band_ids() == ["f", "a", "b"]
    image = run(assets, call("Image.select", input=load(SIGNED), bandSelectors=[1],
                             newNames=["second"]))
    assert image.band_ids() == ["second"]
    np.testing.assert_array_equal(output(image)["second"], data["signed"][1])
    image = run(assets, call("Image.rename", input=load(S2), names=["red", "nir"]))
    assert image.band_ids() == ["red", "nir"]
    np.testing.assert_array_equal(output(image)["nir"], data["s2"][1])
    with pytest.raises(ApiError, match="Pattern 'B9' did not match any bands") as info:
        run(assets, call("Image.select", input=load(S2), bandSelectors=["B9"]))
    assert info.value.code == 400
    with pytest.raises(ApiError, match="Can't rename 2 bands to 1 names"):
        run(assets, call("Image.rename", input=load(S2), names=["x"]))


def test_constant_int_and_float(assets: dict[str, Asset]) -> None:
    image = run(assets, call("Image.constant", value=7))
    assert image.describe()["bands"] == [
        {"id": "constant", "data_type": {"type": "PixelType", "precision": "int", "min": 7,
                                         "max": 7}}]
    assert (output(image)["constant"] == 7).all() and output(image)["constant"].dtype == np.uint8
    image = run(assets, call("Image.constant", value=[0.5, -2]))
    assert image.band_ids() == ["constant_0", "constant_1"]
    out = output(image)
    assert out["constant_0"].dtype == np.float64 and (out["constant_0"] == 0.5).all()
    assert out["constant_1"].dtype == np.int16 and (out["constant_1"] == -2).all()


@pytest.mark.parametrize(("op", "reference", "expected_type"), [
    ("add", np.add, {"precision": "int", "min": -65536, "max": 65534}),
    ("subtract", np.subtract, {"precision": "int", "min": -65535, "max": 65535}),
    ("multiply", np.multiply, {"precision": "int", "min": -32768 * 32767, "max": 2 ** 30}),
    ("divide", None, {"precision": "int", "min": -32768, "max": 32767}),
])
def test_arithmetic_of_int_bands(assets: dict[str, Asset], data: dict[str, Any], op: str,
                                 reference: Any, expected_type: dict[str, Any]) -> None:
    a, b = (data["signed"][i].astype(np.int64) for i in (0, 1))
    node = call(f"Image.{op}", image1=call("Image.select", input=load(SIGNED),
                                           bandSelectors=["a"]),
                image2=call("Image.select", input=load(SIGNED), bandSelectors=["b"]))
    image = run(assets, node)
    assert image.band_ids() == ["a"]
    assert image.describe()["bands"][0]["data_type"] == {"type": "PixelType", **expected_type}
    if reference is None:
        # An int divide truncates toward zero; x / 0 is 0.
        want = np.where(b == 0, 0, np.trunc(a / np.where(b == 0, 1, b))).astype(np.int64)
    else:
        want = reference(a, b)
    got = output(image)["a"]
    np.testing.assert_array_equal(got.astype(np.int64), want)
    assert got.dtype == (np.int16 if op == "divide" else np.int32)


def test_arithmetic_broadcasts_one_band_and_promotes_to_float(assets: dict[str, Asset],
                                                              data: dict[str, Any]) -> None:
    image = run(assets, call("Image.multiply", image1=load(S2), image2=call(
        "Image.select", input=load(SIGNED), bandSelectors=["f"])))
    assert image.band_ids() == ["B4", "B8"]  # the longer image's names
    # uint16 with float32: float (a 16-bit int fits a float exactly).
    assert image.describe()["bands"][0]["data_type"] == {"type": "PixelType",
                                                         "precision": "float"}
    out = output(image)
    want = (data["s2"][1].astype(np.float64) * data["floats"].astype(np.float64))
    np.testing.assert_array_equal(out["B8"], want.astype(np.float32))
    image = run(assets, call("Image.divide", image1=load(S2), image2=call("Image.constant",
                                                                          value=2.0)))
    assert image.describe()["bands"][0]["data_type"]["precision"] == "double"
    np.testing.assert_array_equal(output(image)["B4"], data["s2"][0] / 2.0)
    with pytest.raises(ApiError, match=r"same number of bands or only 1 band\. Got 2 and 3"):
        run(assets, call("Image.add", image1=load(S2), image2=load(SIGNED)))


def test_casts_saturate_and_add_bands(assets: dict[str, Asset], data: dict[str, Any]) -> None:
    image = run(assets, call("Image.toByte", value=call("Image.select", input=load(SIGNED),
                                                        bandSelectors=["a", "f"])))
    assert [b["data_type"] for b in image.describe()["bands"]] == [
        {"type": "PixelType", "precision": "int", "min": 0, "max": 255}] * 2
    out = output(image)
    np.testing.assert_array_equal(out["a"], np.clip(data["signed"][0], 0, 255))
    np.testing.assert_array_equal(out["f"], np.clip(np.trunc(data["floats"]), 0, 255))
    assert out["a"].dtype == np.uint8
    image = run(assets, call("Image.toFloat", value=load(S2)))
    assert output(image)["B4"].dtype == np.float32

    image = run(assets, call("Image.addBands", dstImg=load(S2), srcImg=load(SIGNED),
                             names=["f"]))
    assert image.band_ids() == ["B4", "B8", "f"]
    np.testing.assert_array_equal(output(image)["f"], data["floats"])
    renamed = call("Image.rename", input=call("Image.select", input=load(SIGNED),
                                              bandSelectors=["a"]), names=["B8"])
    image = run(assets, call("Image.addBands", dstImg=load(S2), srcImg=renamed, overwrite=True))
    assert image.band_ids() == ["B4", "B8"]
    np.testing.assert_array_equal(output(image)["B8"], data["signed"][0])
    with pytest.raises(ApiError, match="Can't add a band named 'B8'"):
        run(assets, call("Image.addBands", dstImg=load(S2), srcImg=renamed))


def ndvi_reference(s2: np.ndarray) -> np.ndarray:
    red, nir = s2[0].astype(np.float64), s2[1].astype(np.float64)
    total = nir + red
    return np.where(total == 0, 0.0, (nir - red) / np.where(total == 0, 1, total)) \
        .astype(np.float32)


def test_normalized_difference(assets: dict[str, Asset], data: dict[str, Any]) -> None:
    image = run(assets, call("Image.normalizedDifference", input=load(S2),
                             bandNames=["B8", "B4"]))
    assert image.describe()["bands"] == [
        {"id": "nd", "data_type": {"type": "PixelType", "precision": "float"}}]
    out = output(image)["nd"]
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, ndvi_reference(data["s2"]))
    # A negative input masks the pixel, sent as 0.
    image = run(assets, call("Image.normalizedDifference", input=load(SIGNED)))
    a, b = (data["signed"][i].astype(np.float64) for i in (0, 1))
    total = a + b
    want = np.where((a < 0) | (b < 0), 0.0,
                    np.where(total == 0, 0.0, (a - b) / np.where(total == 0, 1, total)))
    np.testing.assert_array_equal(output(image)["nd"], want.astype(np.float32))
    assert not image.bands[0].mask[(a < 0) | (b < 0)].any()


def test_update_mask_and_unmask(assets: dict[str, Asset], data: dict[str, Any]) -> None:
    red = data["s2"][0]
    bright = call("Image.gt", image1=call("Image.select", input=load(S2), bandSelectors=["B4"]),
                  image2=call("Image.constant", value=1500))
    masked = call("Image.updateMask", image=load(S2), mask=bright)
    image = run(assets, masked)
    out = output(image)
    np.testing.assert_array_equal(out["B8"], np.where(red > 1500, data["s2"][1], 0))
    np.testing.assert_array_equal(image.bands[0].mask, red > 1500)
    # A mask image's own zeros mask too: updateMask(x, x) masks where x == 0.
    image = run(assets, call("Image.updateMask", image=load(SIGNED), mask=call(
        "Image.select", input=load(SIGNED), bandSelectors=["b"])))
    np.testing.assert_array_equal(image.bands[0].mask, data["signed"][1] != 0)

    filled = run(assets, call("Image.unmask", input=masked, value=call("Image.constant",
                                                                       value=-1)))
    assert filled.describe()["bands"][0]["data_type"] == {
        "type": "PixelType", "precision": "int", "min": -1, "max": 65535}
    np.testing.assert_array_equal(output(filled)["B4"],
                                  np.where(red > 1500, red.astype(np.int64), -1))
    assert all(band.mask.all() for band in filled.bands)


def test_unmask_keeps_the_footprint_unless_told(assets: dict[str, Asset],
                                                data: dict[str, Any]) -> None:
    # A grid reaching 5 pixels past the asset's right edge: outside is masked and stays so.
    grid = native_grid(col_off=10, width=WIDTH - 5)
    image = run(assets, call("Image.unmask", input=load(S2), value=call("Image.constant",
                                                                        value=9)), grid)
    inside = np.zeros((HEIGHT, WIDTH - 5), bool)
    inside[:, :WIDTH - 10] = True
    np.testing.assert_array_equal(image.bands[0].mask, inside)
    np.testing.assert_array_equal(output(image)["B4"][:, :WIDTH - 10], data["s2"][0][:, 10:])
    assert (output(image)["B4"][:, WIDTH - 10:] == 0).all()
    image = run(assets, call("Image.unmask", input=load(S2), value=call("Image.constant",
                                                                        value=9),
                             sameFootprint=False), grid)
    assert image.bands[0].mask.all()
    assert (output(image)["B4"][:, WIDTH - 10:] == 9).all()


# -- collections --------------------------------------------------------------------------------


def date_filtered(start: str, end: Any) -> dict[str, Any]:
    return call("Collection.filter", collection=call("ImageCollection.load", id=COLLECTION),
                filter=call("Filter.dateRangeContains",
                            leftValue=call("DateRange", start=start, end=end),
                            rightField="system:time_start"))


def test_filter_date_and_reducers(assets: dict[str, Asset], data: dict[str, Any]) -> None:
    # January holds the first three dates; a median of 3 needs no interpolation.
    result = evaluate(graph(date_filtered("2024-01-01", "2024-01-19")), context(assets))
    # The start inclusive, the end exclusive.
    assert [m.asset.name for m in result.images] == [f"{COLLECTION}/img{i}" for i in (0, 1)]
    values = np.stack(data["members"]).astype(np.float64)
    for name, reduce in (("reduce.median", np.median), ("reduce.mean", np.mean)):
        # A date given as milliseconds works as well as an ISO string.
        image = run(assets, call(name, collection=date_filtered("2024-01-01T00:00:00Z",
                                                                1.0e15)))
        assert image.describe()["bands"][0]["data_type"] == {"type": "PixelType",
                                                             "precision": "double"}
        np.testing.assert_array_equal(output(image)["B8"], reduce(values[:, 1], axis=0))


def test_mosaic_puts_the_last_image_on_top(assets: dict[str, Asset],
                                           data: dict[str, Any]) -> None:
    # No member is masked here, so the newest covers all.
    mosaic = call("ImageCollection.mosaic", collection=call("ImageCollection.load",
                                                            id=COLLECTION))
    image = run(assets, mosaic)
    np.testing.assert_array_equal(output(image)["B4"], data["members"][-1][0])
    assert image.describe()["bands"][0]["data_type"]["max"] == 65535


def test_mosaic_and_median_skip_masked_pixels(tmp_path: Any, assets: dict[str, Asset],
                                              data: dict[str, Any]) -> None:
    # A second image covering only rows 10-19, cols 20-29 of the grid: masked elsewhere.
    patch = np.full((2, 10, 10), 1000, np.uint16)
    small = FileAsset("projects/demo-project/assets/patch", [str(write_tif(
        tmp_path / "patch.tif", patch, crs=UTM, transform=NATIVE @ Affine.translation(20, 10),
        descriptions=["B4", "B8"]))])
    members = [CollectionImage(assets[f"{COLLECTION}/img0"]), CollectionImage(small)]
    ctx = context(assets)
    ctx.collection = lambda name: members if name == COLLECTION else None
    covered = np.zeros((HEIGHT, WIDTH), bool)
    covered[10:20, 20:30] = True
    first = data["members"][0][0].astype(np.float64)

    def reduced(name: str) -> np.ndarray:
        image = evaluate(graph(call(name, collection=call("ImageCollection.load",
                                                          id=COLLECTION))), ctx)
        assert isinstance(image, Image) and image.bands[0].mask.all()
        return output(image)["B4"]

    np.testing.assert_array_equal(reduced("ImageCollection.mosaic"),
                                  np.where(covered, 1000, first))
    np.testing.assert_array_equal(reduced("reduce.median"),
                                  np.where(covered, (first + 1000) / 2, first))


def test_filter_bounds_by_footprint(assets: dict[str, Asset]) -> None:
    # The collection's grid lies near 15 E 41.55 N; its centre, as a lon/lat point:
    lon, lat = Transformer.from_crs(UTM, "EPSG:4326", always_xy=True).transform(
        *(NATIVE @ (WIDTH / 2, HEIGHT / 2)))
    point = call("Feature", geometry=call("GeometryConstructors.Point", coordinates=[lon, lat]))
    far = call("Feature", geometry=call("GeometryConstructors.Point", coordinates=[100, 41]))
    for geometry, count in ((point, 5), (far, 0)):
        node = call("Collection.filter", collection=call("ImageCollection.load", id=COLLECTION),
                    filter=call("Filter.intersects", leftField=".all", rightValue=geometry))
        assert len(evaluate(graph(node), context(assets)).images) == count


def test_unknown_algorithm_and_user_functions_are_refused(assets: dict[str, Asset]) -> None:
    with pytest.raises(ApiError, match=r"Unknown algorithm: 'Image\.focal_max'") as info:
        run(assets, call("Image.focal_max", image=load(S2)))
    assert info.value.code == 400
    with pytest.raises(ApiError, match=r"functionDefinitionValue .* is not supported"):
        evaluate(graph({"functionDefinitionValue": {"argumentNames": ["x"], "body": "1"}}),
                 context(assets))
    with pytest.raises(ApiError, match="Unrecognized argument 'bogus'"):
        run(assets, call("Image.add", image1=load(S2), image2=load(S2), bogus=1))
    with pytest.raises(ApiError, match="Parameter 'image2' is required"):
        run(assets, call("Image.add", image1=load(S2)))
    with pytest.raises(ApiError, match="not found"):
        run(assets, load("projects/demo-project/assets/missing"))


def test_a_repeated_subgraph_is_referenced(assets: dict[str, Asset],
                                           data: dict[str, Any]) -> None:
    expression = {"result": "0", "values": {
        "1": load(S2),
        "0": call("Image.subtract", image1={"valueReference": "1"},
                  image2={"valueReference": "1"})}}
    image = evaluate(expression, context(assets))
    assert isinstance(image, Image)
    assert (output(image)["B4"] == 0).all()


# -- the routes, with earthengine-api as the client ---------------------------------------------


@pytest.fixture
def emulator(data: dict[str, Any]) -> Iterator[Any]:
    config = EmulatorConfig(assets=data["assets"])
    with emulator_in_thread(config) as emu:
        # The collection as the emulator's collection listing holds it: images with their
        # asset, start and end times and footprint.
        images = [SimpleNamespace(asset=member.asset, footprint=None,
                                  start=dt.datetime.fromtimestamp(member.start_ms / 1000, dt.UTC),
                                  end=None)
                  for member in collection_source(emu.assets)(COLLECTION) or []]
        emu.collections = {COLLECTION: SimpleNamespace(images=images)}
        yield emu


@pytest.fixture
def ee(emulator: Any) -> Iterator[Any]:
    ee = pytest.importorskip("ee")
    import google.oauth2.credentials
    ee.data.initialize(credentials=google.oauth2.credentials.Credentials(token="x"),
                       cloud_api_base_url=emulator.url, project="p")
    try:
        yield ee
    finally:
        ee.Reset()


def ee_grid(col_off: int, row_off: int, width: int, height: int) -> dict[str, Any]:
    t = NATIVE @ Affine.translation(col_off, row_off)
    return {"crsCode": UTM, "dimensions": {"width": width, "height": height},
            "affineTransform": {"scaleX": t.a, "shearX": t.b, "translateX": t.c,
                                "shearY": t.d, "scaleY": t.e, "translateY": t.f}}


def compute_tiles(ee: Any, image: Any) -> tuple[np.ndarray, np.ndarray]:
    """The whole grid in one call, and the same grid in two tiles put back together."""
    def fetch(col_off: int, width: int) -> np.ndarray:
        return ee.data.computePixels({"expression": image, "fileFormat": "NUMPY_NDARRAY",
                                      "grid": ee_grid(col_off, 0, width, HEIGHT)})
    whole = fetch(0, WIDTH)
    tiled = np.concatenate([fetch(0, 23), fetch(23, WIDTH - 23)], axis=1)
    return whole, tiled


def test_ee_ndvi_in_two_tiles_equals_the_whole_grid(ee: Any, data: dict[str, Any],
                                                    emulator: Any) -> None:
    ndvi = ee.Image(S2).normalizedDifference(["B8", "B4"])
    whole, tiled = compute_tiles(ee, ndvi)
    assert whole.dtype.names == ("nd",) and whole["nd"].dtype == np.float32
    assert tiled.tobytes() == whole.tobytes()  # bit for bit
    np.testing.assert_array_equal(whole["nd"], ndvi_reference(data["s2"]))
    calls = [r for r in emulator.log if r["op"] == "compute_pixels"]
    assert [r["status"] for r in calls] == [200, 200, 200]
    assert calls[0]["path"].startswith("/v1alpha/") and calls[0]["bands"] == ["nd"]


def test_ee_masked_band_in_two_tiles_equals_the_whole_grid(ee: Any,
                                                           data: dict[str, Any]) -> None:
    image = ee.Image(S2)
    masked = image.select("B8").updateMask(image.select("B4").gt(1500)).multiply(2)
    whole, tiled = compute_tiles(ee, masked)
    assert tiled.tobytes() == whole.tobytes()
    red, nir = data["s2"][0].astype(np.int64), data["s2"][1].astype(np.int64)
    np.testing.assert_array_equal(whole["B8"], np.where(red > 1500, nir * 2, 0))
    assert whole["B8"].dtype == np.uint32  # uint16 x 2 needs [0, 131070]


def test_ee_median_composite_of_the_collection(ee: Any, data: dict[str, Any]) -> None:
    collection = ee.ImageCollection(COLLECTION).filterDate("2024-01-01", "2024-03-01")
    composite = collection.median()
    whole, tiled = compute_tiles(ee, composite.normalizedDifference(["B8", "B4"]))
    assert tiled.tobytes() == whole.tobytes()
    values = np.stack(data["members"]).astype(np.float64)
    median = np.median(values, axis=0)
    np.testing.assert_array_equal(whole["nd"], ndvi_reference(median))


def test_a_resampled_grid_computes_each_pixel_at_its_centre(emulator: Any) -> None:
    # 7 m pixels offset 3 m from the asset's 10 m grid: nothing lines up with a source pixel.
    def grid(row_off: int, height: int) -> dict[str, Any]:
        return {"crsCode": UTM, "dimensions": {"width": 80, "height": height},
                "affineTransform": {"scaleX": 7, "translateX": 500003, "scaleY": -7,
                                    "translateY": 4599997 - 7 * row_off}}

    def fetch(method: str, body: dict[str, Any]) -> np.ndarray:
        url = f"{emulator.url}/v1/{method}" if method.startswith("projects/") \
            else f"{emulator.url}/v1/projects/p/{method}"
        response = requests.post(url, json={"fileFormat": "NPY", **body}, timeout=30)
        assert response.status_code == 200, response.text
        return np.load(io.BytesIO(response.content))

    bands = fetch(f"{S2}:getPixels", {"grid": grid(0, 50)})
    whole = fetch("image:computePixels", {"expression": NDVI, "grid": grid(0, 50)})
    tiled = np.concatenate([fetch("image:computePixels", {"expression": NDVI,
                                                          "grid": grid(0, 21)}),
                            fetch("image:computePixels", {"expression": NDVI,
                                                          "grid": grid(21, 29)})])
    assert tiled.tobytes() == whole.tobytes()
    # The same source pixels getPixels picks: the NDVI of its answer, pixel for pixel. The
    # grid reaches past the asset (80 x 7 m > 500 m): there both are masked, i.e. 0.
    reference = ndvi_reference(np.stack([bands["B4"], bands["B8"]]))
    np.testing.assert_array_equal(whole["nd"], reference)
    assert (whole["nd"][:, 72:] == 0).all() and (whole["nd"][:, :70] != 0).any()


def test_value_compute_describes_band_types(ee: Any) -> None:
    image = ee.Image(S2)
    info = image.normalizedDifference(["B8", "B4"]).getInfo()
    assert info == {"type": "Image", "bands": [
        {"id": "nd", "data_type": {"type": "PixelType", "precision": "float"}}]}
    info = image.add(1).getInfo()
    assert [b["data_type"] for b in info["bands"]] == [
        {"type": "PixelType", "precision": "int", "min": 1, "max": 65536}] * 2
    assert ee.Image.constant(0.5).getInfo()["bands"][0]["data_type"] == {
        "type": "PixelType", "precision": "double"}


def test_unknown_algorithm_is_a_400(ee: Any) -> None:
    with pytest.raises(ee.EEException, match=r"Unknown algorithm: 'Image\.focal_max'"):
        ee.data.computePixels({"expression": ee.Image(S2).focal_max(),
                               "fileFormat": "NUMPY_NDARRAY", "grid": ee_grid(0, 0, 4, 4)})


# -- the routes, by hand --------------------------------------------------------------------------


def post(emulator: Any, method: str, body: dict[str, Any],
         version: str = "v1") -> requests.Response:
    return requests.post(f"{emulator.url}/{version}/projects/p/{method}", json=body, timeout=30)


NDVI = graph(call("Image.normalizedDifference", input=load(S2), bandNames=["B8", "B4"]))


def test_compute_pixels_in_geotiff_and_png(emulator: Any, data: dict[str, Any]) -> None:
    response = post(emulator, "image:computePixels", {
        "expression": graph(load(S2)), "fileFormat": "GEO_TIFF", "bandIds": ["B8"],
        "grid": ee_grid(5, 5, 20, 10), "workloadTag": "w1"}, version="v1beta")
    assert response.status_code == 200
    with rasterio.open(io.BytesIO(response.content)) as dataset:
        np.testing.assert_array_equal(dataset.read(1), data["s2"][1][5:15, 5:25])
        assert dataset.transform == NATIVE @ Affine.translation(5, 5)
    response = post(emulator, "image:computePixels", {
        "expression": NDVI, "fileFormat": "PNG", "grid": ee_grid(0, 0, 8, 8),
        "visualizationOptions": {"ranges": [{"min": -1, "max": 1}]}})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/png"
    record = next(r for r in emulator.log if r["op"] == "compute_pixels")
    assert record["workload_tag"] == "w1" and record["bands"] == ["B8"]


def test_compute_pixels_refuses_bad_requests(emulator: Any) -> None:
    grid = ee_grid(0, 0, 8, 8)
    cases = [
        ({"expression": NDVI, "fileFormat": "NPY", "grid": {k: v for k, v in grid.items()
                                                            if k != "dimensions"}},
         "grid.dimensions is required"),
        ({"expression": NDVI, "fileFormat": "NPY", "grid": grid, "region": {}},
         'Unknown name "region"'),
        ({"fileFormat": "NPY", "grid": grid}, "Missing required field: expression"),
        ({"expression": NDVI, "fileFormat": "NPY", "grid": grid, "bandIds": ["B4"]},
         "Pattern 'B4' did not match any bands"),
        ({"expression": NDVI, "fileFormat": "NPY", "grid": ee_grid(0, 0, 40000, 8)},
         "must be less than or equal to 32768 pixels"),
        ({"expression": graph(load(S2)), "fileFormat": "PNG", "grid": grid},
         "needs 1 or 3 bands of 8-bit unsigned data"),
        ({"expression": graph(load("projects/demo-project/assets/nope")), "fileFormat": "NPY",
          "grid": grid}, "Image.load: Image asset 'projects/demo-project/assets/nope' not "
                         "found (does not exist or caller does not have access)."),
    ]
    for body, message in cases:
        response = post(emulator, "image:computePixels", body)
        assert response.status_code == 400, body
        assert message in response.json()["error"]["message"]


def test_value_compute_and_algorithm_list_by_hand(emulator: Any) -> None:
    response = post(emulator, "value:compute", {"expression": graph(call(
        "Image.select", input=load(SIGNED), bandSelectors=["f", "a"]))})
    assert response.json() == {"result": {"type": "Image", "bands": [
        {"id": "f", "data_type": {"type": "PixelType", "precision": "float"}},
        {"id": "a", "data_type": {"type": "PixelType", "precision": "int", "min": -32768,
                                  "max": 32767}}]}}
    response = post(emulator, "value:compute", {"expression": graph(call("Image.abs"))})
    assert response.status_code == 400
    assert response.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert "Unknown algorithm: 'Image.abs'" in response.json()["error"]["message"]
    pytest.importorskip("ee")
    listing = requests.get(f"{emulator.url}/v1alpha/projects/p/algorithms", timeout=30).json()
    names = {a["name"] for a in listing["algorithms"]}
    assert {"algorithms/Image.normalizedDifference", "algorithms/reduce.median"} <= names


# -- computation faults ---------------------------------------------------------------------------


def fault_emulator(data: dict[str, Any], compute: ComputeConfig) -> Any:
    return emulator_in_thread(EmulatorConfig(assets=data["assets"], compute=compute))


def test_memory_and_timeout_faults_above_a_size(data: dict[str, Any]) -> None:
    with fault_emulator(data, ComputeConfig(memory_limit_pixels=100, timeout_pixels=400)) as emu:
        def status(width: int, height: int) -> tuple[int, str | None]:
            response = post(emu, "image:computePixels", {
                "expression": NDVI, "fileFormat": "NPY",
                "grid": ee_grid(0, 0, width, height)})
            message = response.json()["error"]["message"] if response.status_code != 200 \
                else None
            return response.status_code, message
        assert status(10, 10) == (200, None)
        assert status(11, 10) == (400, "User memory limit exceeded.")
        with _set(emu.config.compute, memory_limit_pixels=None):
            assert status(20, 20) == (200, None)
            assert status(21, 20) == (400, "Computation timed out.")
        faults = [r["fault"] for r in emu.log if r["op"] == "compute_pixels"]
    assert faults == [None, "memory", None, "timeout"]


@contextlib.contextmanager
def _set(target: Any, **values: Any) -> Iterator[None]:
    """Attributes of a config set for the body of a with-block (the emulator reads its
    config live)."""
    old = {key: getattr(target, key) for key in values}
    for key, value in values.items():
        setattr(target, key, value)
    try:
        yield
    finally:
        for key, value in old.items():
            setattr(target, key, value)


def test_too_many_concurrent_aggregations_is_a_429(data: dict[str, Any]) -> None:
    with fault_emulator(data, ComputeConfig(max_concurrent=0)) as emu:
        response = post(emu, "image:computePixels", {
            "expression": NDVI, "fileFormat": "NPY", "grid": ee_grid(0, 0, 4, 4)})
    assert response.status_code == 429
    assert response.json()["error"] == {"code": 429, "status": "RESOURCE_EXHAUSTED",
                                        "message": "Too many concurrent aggregations."}


def test_quota_status_header_once_the_compute_budget_is_spent(data: dict[str, Any]) -> None:
    with fault_emulator(data, ComputeConfig(budget_pixels=30)) as emu:
        def fetch() -> requests.Response:
            return post(emu, "image:computePixels", {
                "expression": NDVI, "fileFormat": "NPY", "grid": ee_grid(0, 0, 4, 4)})
        first, second, third = fetch(), fetch(), fetch()
        value = post(emu, "value:compute", {"expression": NDVI})
    assert [r.status_code for r in (first, second, third)] == [200, 200, 200]
    assert QUOTA_STATUS_HEADER not in first.headers  # 16 pixels spent
    # The answer that spends the budget (32 pixels of 30) says so, and every one after it.
    assert second.headers[QUOTA_STATUS_HEADER] == "parallelism_restricted=true"
    assert third.headers[QUOTA_STATUS_HEADER] == "parallelism_restricted=true"
    assert value.headers[QUOTA_STATUS_HEADER] == "parallelism_restricted=true"
    np.load(io.BytesIO(third.content))  # still a whole answer


def test_compute_faults_from_the_command_line() -> None:
    from bulkpix.emulator.cli import build_parser, config_from_args
    args = build_parser().parse_args([
        "--synthetic", "projects/p/assets/x:10x10", "--compute-memory-limit", "100",
        "--compute-timeout", "200", "--compute-max-concurrent", "3", "--compute-budget", "9"])
    assert config_from_args(args).compute == ComputeConfig(100, 200, 3, 9)


def test_a_negative_compute_flag_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from bulkpix.emulator.cli import main
    assert main(["--synthetic", "projects/p/assets/x:10x10", "--compute-budget", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "budget_pixels must be >= 0" in err


def test_expression_json_round_trip(data: dict[str, Any], assets: dict[str, Asset]) -> None:
    # What a job file would hold: the graph as JSON text evaluates the same.
    text = json.dumps(NDVI)
    image = evaluate(json.loads(text), context(assets))
    np.testing.assert_array_equal(output(image)["nd"], ndvi_reference(data["s2"]))
