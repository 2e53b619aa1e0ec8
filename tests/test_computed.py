"""Computed images (issue #13, the client side): an expression graph downloaded in tiles
through image:computePixels, against the in-process emulator."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import bulkpix
from bulkpix.emulator import EmulatorConfig, emulator_in_thread
from bulkpix.emulator.config import ComputeConfig
from bulkpix.errors import JobError, StoreMismatch
from bulkpix.job import load_job
from tests.conftest import write_job
from tests.test_emulator_compute import (  # noqa: F401  (data: the module's fixture)
    HEIGHT,
    NDVI,
    S2,
    UTM,
    WIDTH,
    call,
    data,
    graph,
    load,
    ndvi_reference,
)

# The assets' own 10 m grid: 50 x 40 px from (500000, 4600000).
REGION = {"bbox": [500000, 4599600, 500500, 4600000], "region_crs": UTM}


def job(output: Path, url: str, expression: Any, **keys: Any) -> dict[str, Any]:
    """A computed-image job: 16 px chunks, 32 px tiles (4 tiles over the 50 x 40 grid)."""
    return {"expression": expression, "crs": UTM, "scale": 10, "region": REGION,
            "project": "demo-project", "endpoint": url, "credentials": "none",
            "output": str(output), "chunk": 16,
            "tile": [32, 32], "retries": {"backoff_base": 0.01, "backoff_cap": 0.02},
            **keys}


def read(output: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(output), mode="r")
    return {name: array[:] for name, array in group.arrays() if name not in ("x", "y")
            and array.ndim == 2}


def computed_calls(emu: Any) -> list[dict[str, Any]]:
    return [r for r in emu.log if r["op"] == "compute_pixels"]


@pytest.fixture
def emu(data: dict[str, Any]) -> Iterator[Any]:  # noqa: F811
    with emulator_in_thread(EmulatorConfig(assets=data["assets"])) as emulator:
        yield emulator


@pytest.fixture
def ee(emu: Any) -> Iterator[Any]:
    ee = pytest.importorskip("ee")
    import google.oauth2.credentials

    ee.data.initialize(credentials=google.oauth2.credentials.Credentials(token="x"),
                       cloud_api_base_url=emu.url, project="demo-project")
    try:
        yield ee
    finally:
        ee.Reset()


# -- downloads equal the reference ------------------------------------------------------------


def test_ee_ndvi_in_tiles_equals_numpy(ee: Any, emu: Any, data: dict[str, Any],  # noqa: F811
                                       tmp_path: Path) -> None:
    ndvi = ee.Image(S2).normalizedDifference(["B8", "B4"])
    summary = bulkpix.run(job(tmp_path / "o.zarr", emu.url, ndvi), progress=False)
    assert summary.complete
    out = read(tmp_path / "o.zarr")
    assert list(out) == ["nd"] and out["nd"].dtype == np.float32
    np.testing.assert_array_equal(out["nd"], ndvi_reference(data["s2"]))
    calls = computed_calls(emu)
    assert len(calls) == 4 and all(r["status"] == 200 for r in calls)
    assert [r["op"] for r in emu.log].count("compute_value") == 1


def test_ee_masked_band_in_tiles_equals_numpy(ee: Any, emu: Any, data: dict[str, Any],  # noqa: F811
                                              tmp_path: Path) -> None:
    image = ee.Image(S2)
    masked = image.select("B8").updateMask(image.select("B4").gt(1500)).multiply(2)
    assert bulkpix.run(job(tmp_path / "o.zarr", emu.url, masked), progress=False).complete
    out = read(tmp_path / "o.zarr")
    red, nir = data["s2"][0].astype(np.int64), data["s2"][1].astype(np.int64)
    assert out["B8"].dtype == np.uint32  # uint16 x 2: the described range, not the payload's
    np.testing.assert_array_equal(out["B8"], np.where(red > 1500, nir * 2, 0))


def test_yaml_expression_file_equals_the_whole_grid_evaluation(
    emu: Any, data: dict[str, Any], tmp_path: Path  # noqa: F811
) -> None:
    (tmp_path / "ndvi.json").write_text(json.dumps(NDVI))
    path = write_job(tmp_path / "job.yaml", **job(tmp_path / "o.zarr", emu.url, "ndvi.json"))
    assert bulkpix.run(path, progress=False).complete
    # The emulator's own evaluation of the whole grid in one call: the tiles put together
    # equal it bit for bit.
    import io

    import requests

    body = {"expression": NDVI, "fileFormat": "NPY", "grid": {
        "crsCode": UTM, "dimensions": {"width": WIDTH, "height": HEIGHT},
        "affineTransform": {"scaleX": 10, "translateX": 500000, "scaleY": -10,
                            "translateY": 4600000}}}
    response = requests.post(f"{emu.url}/v1/projects/p/image:computePixels", json=body,
                             timeout=30)
    whole = np.load(io.BytesIO(response.content))
    assert read(tmp_path / "o.zarr")["nd"].tobytes() == whole["nd"].tobytes()
    sent = computed_calls(emu)[0]
    assert sent["path"] == "/v1/projects/demo-project/image:computePixels"
    assert sent["bands"] == ["nd"] and sent["format"] == "NPY"


# -- errors of computation ------------------------------------------------------------------


def limited(data: dict[str, Any], **compute: Any) -> Any:  # noqa: F811
    return emulator_in_thread(EmulatorConfig(assets=data["assets"],
                                             compute=ComputeConfig(**compute)))


def test_a_tile_over_the_memory_limit_is_split_and_finishes(
    data: dict[str, Any], tmp_path: Path  # noqa: F811
) -> None:
    from bulkpix.pipeline import run_job

    with limited(data, memory_limit_pixels=300) as emu:  # a 16 x 16 chunk fits, 32 x 32 not
        import asyncio

        stats = asyncio.run(run_job(bulkpix.load(job(tmp_path / "o.zarr", emu.url, NDVI))))
        calls = computed_calls(emu)
    assert stats.ok and stats.computation_limits == 2  # the 32 x 32 and 18 x 32 tiles
    np.testing.assert_array_equal(read(tmp_path / "o.zarr")["nd"], ndvi_reference(data["s2"]))
    refused = [(r["width"], r["height"]) for r in calls if r["status"] == 400]
    assert sorted(refused) == [(18, 32), (32, 32)]  # each once: never retried unchanged
    assert all(r["width"] * r["height"] <= 300 for r in calls if r["status"] == 200)


def test_a_tile_too_costly_at_one_chunk_fails_with_the_service_message(
    data: dict[str, Any], tmp_path: Path  # noqa: F811
) -> None:
    from bulkpix.pipeline import run_job

    with limited(data, timeout_pixels=200) as emu:  # not even one 16 x 16 chunk
        import asyncio

        stats = asyncio.run(run_job(bulkpix.load(job(tmp_path / "o.zarr", emu.url, NDVI,
                                                     tile=[16, 16]))))
        calls = computed_calls(emu)
    # 12 tiles; the 16 x 16 ones (6) fail, the narrower ones at the edges (2 x 16 = 32, 8 x
    # 16 = 128 px) succeed. Each failing tile was asked for once, not retried.
    failed = stats.items[0].failed
    assert len(failed) == 6 and stats.retries == 0 and stats.computation_limits == 6
    assert all("Computation timed out." in why for why in failed.values())
    assert len(calls) == 12


def test_too_many_concurrent_aggregations_is_a_computation_limit(
    data: dict[str, Any], tmp_path: Path  # noqa: F811
) -> None:
    import asyncio

    from bulkpix.ee.auth import load_credentials
    from bulkpix.ee.client import EEClient
    from bulkpix.errors import ComputationLimited, QuotaExceeded
    from bulkpix.transfer.limits import Governor

    body = {"expression": NDVI, "fileFormat": "NPY", "grid": {
        "crsCode": UTM, "dimensions": {"width": 4, "height": 4},
        "affineTransform": {"scaleX": 10, "translateX": 500000, "scaleY": -10,
                            "translateY": 4600000}}}

    async def fetch(url: str) -> BaseException:
        governor = Governor(4, 100)
        async with EEClient(url, auth=load_credentials("none"), governor=governor,
                            project="demo-project") as client:
            with pytest.raises(ComputationLimited) as info:
                async with client.stream_computed(body) as response:
                    await response.read()
        assert governor.throttles == 0  # not a quota cut: the concurrency stays
        return info.value

    with limited(data, max_concurrent=0) as emu:
        error = asyncio.run(fetch(emu.url))
        # value:compute is a computation too: the job is refused before anything is written.
        with pytest.raises(JobError, match=r"refused the expression: Too many concurrent "
                                           r"aggregations\."):
            bulkpix.run(job(tmp_path / "o.zarr", emu.url, NDVI), progress=False)
    assert error.status == 429 and not isinstance(error, QuotaExceeded)
    assert "Too many concurrent aggregations." in error.message
    assert not (tmp_path / "o.zarr").exists()


# -- resume, notices, bad input ----------------------------------------------------------------


def test_a_changed_expression_is_refused_on_resume(emu: Any, tmp_path: Path) -> None:
    assert bulkpix.run(job(tmp_path / "o.zarr", emu.url, NDVI), progress=False).complete
    other = graph(call("Image.normalizedDifference", input=load(S2), bandNames=["B4", "B8"]))
    with pytest.raises(StoreMismatch, match=r"expression\..*\['B8', 'B4'\] -> \['B4', 'B8'\]"):
        bulkpix.run(job(tmp_path / "o.zarr", emu.url, other), progress=False)
    # The same expression resumes (nothing left to fetch).
    before = len(computed_calls(emu))
    assert bulkpix.run(job(tmp_path / "o.zarr", emu.url, NDVI), progress=False).complete
    assert len(computed_calls(emu)) == before


def test_the_quota_status_notice_is_shown_once(data: dict[str, Any],  # noqa: F811
                                               tmp_path: Path) -> None:
    import io

    from rich.console import Console

    with limited(data, budget_pixels=1) as emu:
        console = Console(file=io.StringIO(), width=200)
        summary = bulkpix.run(job(tmp_path / "o.zarr", emu.url, NDVI), progress=True,
                              console=console)
    assert summary.complete
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert text.count("restricted this project's parallel computation") == 1


@pytest.mark.parametrize(("keys", "message"), [
    ({"crs": None}, "has no native grid: give crs"),
    ({"region": None}, "has no native grid: give region"),
    ({"scale": None}, "has no native grid: give scale (or dimensions)"),
    ({"project": None}, "key 'project' is required for a computed image"),
    ({"asset": S2}, "give one of asset, collection or expression"),
    ({"expression": {"result": "0", "values": {}}}, "names none of its values"),
    ({"expression": "missing.json"}, "cannot read it"),
    ({"expression": 5}, "must be a graph file path"),
    ({"scale_factor": 2}, "scale_factor goes with reduce"),
])
def test_bad_computed_jobs_are_one_line(tmp_path: Path, keys: dict[str, Any],
                                        message: str) -> None:
    spec = {k: v for k, v in {**job(tmp_path / "o.zarr", "emulator", NDVI), **keys}.items()
            if v is not None}
    path = write_job(tmp_path / "job.yaml", **spec)
    with pytest.raises(JobError) as info:
        load_job(path)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "o.zarr").exists()


def test_an_expression_the_service_refuses_is_one_line(emu: Any, tmp_path: Path) -> None:
    bad = graph(call("Image.focal_max", input=load(S2)))
    with pytest.raises(JobError, match=r"refused the expression: Unknown algorithm"):
        bulkpix.run(job(tmp_path / "o.zarr", emu.url, bad), progress=False)
    assert not (tmp_path / "o.zarr").exists()


# -- reduce: a collection composited by the service ---------------------------------------------


@pytest.fixture
def served(emu: Any, data: dict[str, Any]) -> Any:  # noqa: F811
    """The emulator with the collection served as its listing serves one (footprints,
    times), the images those of test_emulator_compute."""
    import datetime as dt

    from bulkpix.emulator.assets import FileAsset
    from bulkpix.emulator.collections import Collection, CollectionImage, footprint_of
    from tests.test_emulator_compute import COLLECTION, collection_source

    assets = {name: FileAsset(name, paths) for name, paths in data["assets"].items()}
    images = []
    for member in collection_source(assets)(COLLECTION) or []:
        start = dt.datetime.fromtimestamp(member.start_ms / 1000, dt.UTC)
        footprint, bbox = footprint_of(member.asset)
        images.append(CollectionImage(member.asset, start, start + dt.timedelta(days=1),
                                      footprint, bbox, {}))
    emu.collections = {COLLECTION: Collection(COLLECTION, images)}
    return emu


@pytest.mark.parametrize("reduction", ["median", "mean", "min", "max", "mosaic"])
def test_reduce_equals_the_composite_built_with_earthengine_api(
    ee: Any, served: Any, tmp_path: Path, reduction: str
) -> None:
    from tests.test_emulator_compute import COLLECTION, ee_grid

    spec = job(tmp_path / "o.zarr", served.url, None, collection=COLLECTION,
               dates=["2024-01-10", "2024-02-05"], reduce=reduction, bands=["B8"])
    del spec["expression"]
    assert bulkpix.run(spec, progress=False).complete
    out = read(tmp_path / "o.zarr")
    assert list(out) == ["B8"]
    collection = ee.ImageCollection(COLLECTION).filterDate("2024-01-10", "2024-02-05") \
        .filterBounds(ee.Geometry.Rectangle([14.0, 41.0, 16.0, 42.0]))
    composite = collection.mosaic() if reduction == "mosaic" \
        else getattr(collection, reduction)()
    want = ee.data.computePixels({"expression": composite.select(["B8"]),
                                  "fileFormat": "NUMPY_NDARRAY",
                                  "grid": ee_grid(0, 0, WIDTH, HEIGHT)})
    assert out["B8"].dtype == want["B8"].dtype
    assert out["B8"].tobytes() == want["B8"].tobytes()
    # Three of the five images fall in the dates: the composite is not any one of them.
    assert (out["B8"] != 0).any()


@pytest.mark.parametrize(("reduction", "reference", "dtype"), [
    ("median", np.median, np.float64), ("mean", np.mean, np.float64),
    ("min", np.min, np.uint16), ("max", np.max, np.uint16),
])
def test_reduce_of_the_dates_equals_numpy(served: Any, data: dict[str, Any],  # noqa: F811
                                          tmp_path: Path, reduction: str, reference: Any,
                                          dtype: Any) -> None:
    from tests.test_emulator_compute import COLLECTION

    spec = job(tmp_path / "o.zarr", served.url, None, collection=COLLECTION,
               dates=["2024-01-10", "2024-02-05"], reduce=reduction)
    del spec["expression"]
    assert bulkpix.run(spec, progress=False).complete
    out = read(tmp_path / "o.zarr")
    members = np.stack(data["members"][1:4]).astype(np.float64)  # 01-12, 01-19, 02-02
    want = reference(members, axis=0)
    assert sorted(out) == ["B4", "B8"] and out["B4"].dtype == dtype
    np.testing.assert_array_equal(out["B4"], want[0].astype(dtype))
    np.testing.assert_array_equal(out["B8"], want[1].astype(dtype))


@pytest.mark.parametrize(("keys", "message"), [
    ({"filter": "x < 1"}, "filter does not go with reduce"),
    ({"layout": "items"}, "layout does not go with reduce"),
    ({"region": None}, "a reduced collection has no native grid: give region"),
    ({"collection": None, "asset": S2}, "reduce goes with collection"),
    ({"reduce": None, "offset": 1}, "offset goes with reduce"),
])
def test_bad_reduce_jobs_are_one_line(tmp_path: Path, keys: dict[str, Any],
                                      message: str) -> None:
    spec = {**job(tmp_path / "o.zarr", "emulator", None),
            "collection": "projects/demo-project/assets/col", "reduce": "median", **keys}
    spec = {k: v for k, v in spec.items() if v is not None}
    with pytest.raises(JobError) as info:
        load_job(write_job(tmp_path / "job.yaml", **spec))
    assert message in str(info.value) and "\n" not in str(info.value)


# -- the Done-when: composites built with earthengine-api, YAML alike, SIGKILL ----------


def test_ee_median_composite_ndvi_in_tiles_equals_numpy(
    ee: Any, served: Any, data: dict[str, Any], tmp_path: Path  # noqa: F811
) -> None:
    from tests.test_emulator_compute import COLLECTION

    composite = ee.ImageCollection(COLLECTION).filterDate("2024-01-01", "2024-03-01").median()
    ndvi = composite.normalizedDifference(["B8", "B4"])
    assert bulkpix.run(job(tmp_path / "o.zarr", served.url, ndvi), progress=False).complete
    median = np.median(np.stack(data["members"]).astype(np.float64), axis=0)  # all 5 dates
    np.testing.assert_array_equal(read(tmp_path / "o.zarr")["nd"], ndvi_reference(median))
    assert len(computed_calls(served)) == 4  # in several tiles


def test_yaml_reduce_median_gives_the_bytes_of_the_python_composite(
    ee: Any, served: Any, tmp_path: Path
) -> None:
    from tests.test_emulator_compute import COLLECTION

    keys = job(tmp_path / "yaml.zarr", served.url, None, collection=COLLECTION,
               dates=["2024-01-10", "2024-02-05"], reduce="median", bands=["B8", "B4"])
    del keys["expression"]
    assert bulkpix.run(write_job(tmp_path / "job.yaml", **keys), progress=False).complete
    composite = ee.ImageCollection(COLLECTION).filterDate("2024-01-10", "2024-02-05") \
        .median().select(["B8", "B4"])
    python = job(tmp_path / "py.zarr", served.url, composite)
    assert bulkpix.run(python, progress=False).complete
    from_yaml, from_python = read(tmp_path / "yaml.zarr"), read(tmp_path / "py.zarr")
    assert sorted(from_yaml) == sorted(from_python) == ["B4", "B8"]
    for band in ("B8", "B4"):
        assert from_yaml[band].dtype == from_python[band].dtype
        assert from_yaml[band].tobytes() == from_python[band].tobytes()


def test_sigkill_mid_job_then_resume_is_bit_exact(data: dict[str, Any],  # noqa: F811
                                                  tmp_path: Path) -> None:
    import hashlib
    import os
    import signal
    import subprocess
    import sys
    import time

    from bulkpix.cli import main

    def digests(output: Path) -> dict[str, str]:
        return {p.relative_to(output).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(output.rglob("*")) if p.is_file()
                and ".bulkpix" not in p.relative_to(output).as_posix()}

    (tmp_path / "ndvi.json").write_text(json.dumps(NDVI))
    config = EmulatorConfig(assets=data["assets"], service_base_s=0.05)
    with emulator_in_thread(config) as emu:
        # 12 tiles of 16 x 16 px, two at a time.
        reference = write_job(tmp_path / "ref.yaml", **job(
            tmp_path / "ref.zarr", emu.url, "ndvi.json", tile=[16, 16], concurrency=2))
        assert main(["run", "--quiet", str(reference)]) == 0
        killed = write_job(tmp_path / "kill.yaml", **job(
            tmp_path / "kill.zarr", emu.url, "ndvi.json", tile=[16, 16], concurrency=2))
        start = len(emu.log)
        proc = subprocess.Popen([sys.executable, "-m", "bulkpix", "run", "--quiet", str(killed)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + 60
        while len([r for r in emu.log[start:] if r["op"] == "compute_pixels"]) < 5:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.005)  # polling the log for the kill point
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        done = list((tmp_path / "kill.zarr" / ".bulkpix" / "done").glob("*"))
        assert 0 < len(done) < 12  # killed mid-job
        assert main(["run", "--quiet", str(killed)]) == 0
    assert digests(tmp_path / "kill.zarr") == digests(tmp_path / "ref.zarr")


def test_reduce_with_scale_factor_and_offset_equals_the_python_form(
    ee: Any, served: Any, tmp_path: Path
) -> None:
    from tests.test_emulator_compute import COLLECTION

    keys = job(tmp_path / "yaml.zarr", served.url, None, collection=COLLECTION,
               reduce="max", bands=["B8"], scale_factor=0.0001, offset=-0.1)
    del keys["expression"]
    assert bulkpix.run(keys, progress=False).complete
    composite = ee.ImageCollection(COLLECTION).max().select(["B8"]).multiply(0.0001).add(-0.1)
    assert bulkpix.run(job(tmp_path / "py.zarr", served.url, composite), progress=False).complete
    from_yaml, from_python = read(tmp_path / "yaml.zarr")["B8"], read(tmp_path / "py.zarr")["B8"]
    assert from_yaml.dtype == np.float64 and from_yaml.tobytes() == from_python.tobytes()
    assert np.nanmin(from_yaml) < 0 < np.nanmax(from_yaml) < 0.3  # rescaled, not raw counts


def test_the_expression_command_writes_a_graph_a_job_runs(
    emu: Any, data: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    pytest.importorskip("ee")
    from bulkpix.cli import main

    snippet = tmp_path / "ndvi.py"
    snippet.write_text(f"image = ee.Image({S2!r}).normalizedDifference(['B8', 'B4'])\n")
    assert main(["expression", str(snippet), "--endpoint", emu.url, "--project",
                 "demo-project", "-o", str(tmp_path / "ndvi.json")]) == 0
    spec = write_job(tmp_path / "job.yaml", **job(tmp_path / "o.zarr", emu.url, "ndvi.json"))
    assert main(["run", "--quiet", str(spec)]) == 0
    np.testing.assert_array_equal(read(tmp_path / "o.zarr")["nd"], ndvi_reference(data["s2"]))
    capsys.readouterr()
    # A snippet that builds no image, or fails: one line, exit 2.
    snippet.write_text("x = 1\n")
    assert main(["expression", str(snippet), "--endpoint", emu.url]) == 2
    snippet.write_text("image = ee.Image(1).focal_max(\n")
    assert main(["expression", str(snippet), "--endpoint", emu.url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "must assign the image to `image`" in err[0]
    assert "SyntaxError" in err[1]


def test_the_composite_benchmark_reports_splits_and_no_retries() -> None:
    from benchmarks.computed import composite_run

    figures = composite_run(2, 2, memory_limit=70_000, service_base_s=0.0)
    # Every 512 x 512 tile refused once, split in four 256 x 256 parts that fit.
    assert figures["retries"] == 0
    assert figures["splits"] == figures["refused_too_costly"] == figures["tiles"] > 0
    assert figures["requests"] == 5 * figures["tiles"]
    assert figures["wall_s"] > 0 and figures["ideal_s"] >= 0


def test_plan_and_a_batch_mixing_an_asset_and_an_expression(emu: Any, data: dict[str, Any],  # noqa: F811
                                                           tmp_path: Path) -> None:
    (plan,) = bulkpix.plan(job(tmp_path / "o.zarr", emu.url, NDVI))
    assert (plan.grid.width, plan.grid.height) == (WIDTH, HEIGHT)
    assert [b.id for b in plan.bands] == ["nd"] and plan.tiles.n_tiles == 4
    assert [r["op"] for r in emu.log] == ["compute_value"]  # no pixels for a plan
    spec = job(tmp_path / "batch.zarr", emu.url, NDVI)
    spec["items"] = [{"name": "ndvi"}, {"name": "raw", "asset": S2, "bands": ["B8"]}]
    assert bulkpix.run(spec, progress=False).complete
    group = zarr.open_group(str(tmp_path / "batch.zarr"), mode="r")
    np.testing.assert_array_equal(group["ndvi/nd"][:], ndvi_reference(data["s2"]))
    np.testing.assert_array_equal(group["raw/B8"][:], data["s2"][1])


def test_a_reduce_over_no_image_is_one_line(served: Any, tmp_path: Path) -> None:
    from tests.test_emulator_compute import COLLECTION

    spec = job(tmp_path / "o.zarr", served.url, None, collection=COLLECTION,
               dates=["2020-01-01", "2020-02-01"], reduce="median", bands=["B8"])
    del spec["expression"]
    with pytest.raises(JobError, match="no image falls in") as info:
        bulkpix.run(spec, progress=False)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "o.zarr").exists()


def test_a_reduce_resumed_on_a_changed_collection_is_refused(
    served: Any, tmp_path: Path
) -> None:
    # The graph names the collection, not its images: a composite resumed after the
    # collection changed would mix two composites, tile by tile.
    from tests.test_emulator_compute import COLLECTION

    spec = job(tmp_path / "o.zarr", served.url, None, collection=COLLECTION,
               dates=["2024-01-01", "2024-12-31"], reduce="median", bands=["B8"])
    del spec["expression"]
    assert bulkpix.run(spec, progress=False).complete
    before = read(tmp_path / "o.zarr")
    images = served.collections[COLLECTION].images
    gone = images.pop()  # the collection changed since
    try:
        with pytest.raises(StoreMismatch, match="composite_of"):
            bulkpix.run(spec, progress=False)
    finally:
        images.append(gone)
    np.testing.assert_array_equal(read(tmp_path / "o.zarr")["B8"], before["B8"])
    assert bulkpix.run(spec, restart=True, progress=False).complete
