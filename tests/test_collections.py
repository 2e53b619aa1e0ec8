"""Collections: the job keys, listing, mosaics and their resume (issue #12)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
import zarr
from affine import Affine

from bulkpix.cli import main
from bulkpix.errors import JobError
from bulkpix.job import Job, parse_job
from bulkpix.pipeline import RunStats, run_job
from tests.conftest import write_job

BASE: dict[str, Any] = {"output": "out.zarr", "endpoint": "emulator"}
COLL = "projects/p/assets/coll"


def test_a_collection_item_resolves_with_its_defaults() -> None:
    dates = ["2024-01-01", "2024-02-01T12:00:00+01:00"]
    job = parse_job({**BASE, "collection": COLL, "dates": dates})
    (item,) = job.resolved_items()
    assert (item.asset, item.collection, item.source) == ("", COLL, COLL)
    assert (item.layout_name, item.mosaic_rule) == ("mosaic", "last")
    assert item.time_range() == ("2024-01-01T00:00:00Z", "2024-02-01T11:00:00Z")


def test_a_batch_mixes_assets_and_collections() -> None:
    job = parse_job({**BASE, "items": [
        {"collection": COLL, "layout": "items"}, {"asset": "projects/p/assets/a"}]})
    first, second = job.resolved_items()
    assert (first.source, first.layout_name) == (COLL, "items")
    assert (second.source, second.layout_name, second.collection) == (
        "projects/p/assets/a", None, None)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"asset": "projects/p/assets/a", "collection": COLL}, "asset or collection, not both"),
        ({}, "asset is missing"),
        ({"collection": COLL, "dates": ["2024-03-01", "2024-02-01"]}, "start must come before"),
        ({"collection": COLL, "dates": ["2024-03-01", "2024-03-01"]}, "start must come before"),
        ({"collection": COLL, "dates": ["2024-03-01", "March"]}, "not a date"),
        ({"collection": COLL, "group_by": "day"}, "group_by goes with layout cube"),
        ({"collection": COLL, "layout": "items", "mosaic": "min"}, "mosaic goes with layout"),
        ({"asset": "projects/p/assets/a", "filter": "x < 1"}, "filter goes with collection"),
        ({"collection": COLL, "mosaic": "median"}, "mosaic"),
    ],
)
def test_bad_collection_keys_are_one_line(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(JobError, match=message) as caught:
        parse_job({**BASE, **extra})
    assert "\n" not in str(caught.value)


# --------------------------------------------------------------------------- mosaics

# 2 x 2 tiles of 96 px at 30 m (overlapping by 16 px), over 2 days, in two UTM zones (their
# grids repeat around the same corner near 12 E, the zones' border): 16 overlapping images.
SYNTH: dict[str, Any] = {
    "tiles": [2, 2], "tile_size": 96, "overlap": 16, "scale": 30, "dates": 2,
    "start": "2024-05-01", "crs": ["EPSG:32632", "EPSG:32633"], "origin": [11.98, 46.0],
}
# Crosses tile edges and both zones' grids; a little past the images in the north-west.
REGION = [11.975, 45.96, 12.02, 46.004]
SCALE = 0.0004  # degrees: a 113 x 110 px output


def _mosaic_job(tmp_path: Path, name: str = "out.zarr", **keys: Any) -> Job:
    data = {
        "output": str(tmp_path / name),
        "endpoint": "emulator",
        "collection": COLL,
        "region": REGION,
        "crs": "EPSG:4326",
        "scale": SCALE,
        "bands": ["u16", "u8"],
        "chunk": 16,
        "tile": [32, 32],
        "emulator": {"collections": {COLL: SYNTH}, "max_qps": None},
        **keys,
    }
    return parse_job(data, base_dir=tmp_path)


def _reference(job: Job, rule: str) -> dict[str, np.ndarray]:
    """The mosaic computed over the whole grid at once: each image resampled (pixel centre,
    nearest) onto the output grid in one piece, then combined pixel by pixel with ``rule``."""
    from rasterio.crs import CRS as RioCRS

    from bulkpix.emulator.collections import build_collection
    from bulkpix.emulator.config import SyntheticCollection
    from bulkpix.emulator.resample import OutputGrid, read_grid
    from bulkpix.geometry.grid import aligned_grid, region_bounds

    spec = SyntheticCollection(
        tiles=(2, 2), tile_size=96, overlap=16, scale=30, dates=2, start="2024-05-01",
        crs=("EPSG:32632", "EPSG:32633"), origin=(11.98, 46.0))
    collection = build_collection(COLL, spec)
    images = sorted(collection.images, key=lambda i: (i.start, i.asset.name))
    union = (min(i.bbox[0] for i in images), min(i.bbox[1] for i in images),
             max(i.bbox[2] for i in images), max(i.bbox[3] for i in images))
    bounds = region_bounds(list(union), "EPSG:4326", "EPSG:4326")
    clipped = (max(REGION[0], bounds[0]), max(REGION[1], bounds[1]),
               min(REGION[2], bounds[2]), min(REGION[3], bounds[3]))
    grid = aligned_grid("EPSG:4326", SCALE, clipped)
    whole = OutputGrid(RioCRS.from_epsg(4326), grid.transform, grid.width, grid.height, None)
    out: dict[str, np.ndarray] = {}
    for band in ("u16", "u8"):
        stack = []
        for image in images:
            (values,), _ = read_grid(image.asset, [image.asset.band_index(band) or 0], whole)
            stack.append(values)
        cube = np.stack(stack)
        valid = cube != 0
        if rule in ("last", "first"):
            order = range(len(images)) if rule == "first" else reversed(range(len(images)))
            result = np.zeros(cube.shape[1:], cube.dtype)
            done = np.zeros(cube.shape[1:], bool)
            for index in order:
                take = valid[index] & ~done
                result[take] = cube[index][take]
                done |= take
        elif rule == "min":
            big = np.where(valid, cube, np.iinfo(cube.dtype).max)
            result = np.where(valid.any(0), big.min(0), 0).astype(cube.dtype)
        else:
            result = np.where(valid, cube, 0).max(0).astype(cube.dtype)
        out[band] = result
    assert (out["u16"] == 0).any() and (out["u16"] != 0).mean() > 0.5  # the test means something
    return out


def _read(output: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(output), mode="r")
    return {band: np.asarray(group[band][:]) for band in ("u16", "u8")}


@pytest.mark.parametrize("rule", ["last", "min"])
def test_a_mosaic_across_two_utm_zones_equals_the_whole_grid_reference(
    tmp_path: Path, rule: str
) -> None:
    job = _mosaic_job(tmp_path, mosaic=rule)
    stats = asyncio.run(run_job(job))
    assert stats.ok, stats
    got, want = _read(tmp_path / "out.zarr"), _reference(job, rule)
    for band in want:
        assert got[band].shape == want[band].shape
        np.testing.assert_array_equal(got[band], want[band])


# --------------------------------------------------------------------------- bad input


def _job_file(tmp_path: Path, **keys: Any) -> Path:
    job = {
        "output": str(tmp_path / "out.zarr"), "endpoint": "emulator", "collection": COLL,
        "region": REGION, "crs": "EPSG:4326", "scale": SCALE,
        "emulator": {"collections": {COLL: SYNTH}}, **keys,
    }
    return write_job(tmp_path / "job.yaml", **job)


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"collection": "projects/p/assets/none"}, "collection projects/p/assets/none not found"),
        ({"filter": "cloud < "}, "the service refused the listing: Invalid filter"),
        ({"dates": ["2024-06-01", "2024-05-01"]}, "the start must come before the end"),
        ({"region": [20.0, 40.0, 20.1, 40.1]}, "no image falls in the region"),
        ({"dates": ["2023-01-01", "2023-02-01"]}, "no image falls in the region and dates"),
        ({"filter": "cloud > 1000"}, "no image falls in the region and the filter"),
        ({"asset": "projects/p/assets/a"}, "give asset or collection, not both"),
        ({"crs": None, "scale": None}, "the images do not share one grid"),
        ({"crs": None}, "a mosaic needs both crs and scale"),
        # Masked pixels arrive as 0: another nodata would let them overwrite real data.
        ({"nodata": 7}, "its nodata must be 0"),
        ({"nodata": {"u16": 0, "f32": -1}}, "its nodata must be 0"),
    ],
)
def test_bad_collection_input_is_one_line_exit_2_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keys: dict[str, Any], expected: str
) -> None:
    path = _job_file(tmp_path, **{k: v for k, v in keys.items() if v is not None})
    if any(v is None for v in keys.values()):
        text = path.read_text()
        path.write_text("\n".join(
            line for line in text.splitlines() if line.split(":")[0] not in keys))
    assert main(["run", str(path)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], lines
    assert "Traceback" not in lines[0]
    assert not (tmp_path / "out.zarr").exists()


# --------------------------------------------------------------------------- resume


def _request_tiles(log: list[dict[str, Any]], grid: Any, side: int) -> list[tuple[int, int]]:
    """The output tile (row, col) of each getPixels call in the log (each asks inside one)."""
    tiles = []
    for record in log:
        if record["op"] != "get_pixels" or record.get("status") != 200:
            continue
        col, row = ~grid.transform @ (record["affine"][2], record["affine"][5])
        row0, col0 = round(row), round(col)
        assert (row0 + record["height"] - 1) // side == row0 // side  # within one tile
        tiles.append((row0 // side, col0 // side))
    return tiles


async def _interrupted(job: Job, after: int) -> RunStats:
    """Run ``job`` and stop it once ``after`` tiles are written."""
    stop = asyncio.Event()
    ready: asyncio.Future[RunStats] = asyncio.get_running_loop().create_future()
    running = asyncio.ensure_future(run_job(job, stop=stop, stats_ready=ready))
    await asyncio.wait([ready, running], return_when=asyncio.FIRST_COMPLETED)
    stats = ready.result()
    while stats.finished < after and not running.done():  # some tiles written, most not
        await asyncio.sleep(0.002)
    stop.set()
    return await running


def test_a_resume_keeps_the_recorded_images_when_the_collection_grew(tmp_path: Path) -> None:
    first = asyncio.run(_interrupted(_mosaic_job(tmp_path, tile=[16, 16], concurrency=2), 5))
    assert first.interrupted and first.finished < first.total
    grown = {**SYNTH, "dates": 3}  # a day more: 8 more images, on top with rule last
    job = _mosaic_job(tmp_path, tile=[16, 16],
                      emulator={"collections": {COLL: grown}, "max_qps": None})
    second = asyncio.run(run_job(job))
    assert second.ok
    assert any("resuming with the 16 images its record holds; the collection now lists 24 "
               "(8 new, 0 gone or changed)" in notice for notice in second.notices)
    got, want = _read(tmp_path / "out.zarr"), _reference(job, "last")
    for band in want:
        np.testing.assert_array_equal(got[band], want[band])


def test_an_interrupted_mosaic_resumes_without_fetching_a_finished_tile_again(
    tmp_path: Path,
) -> None:
    from bulkpix.emulator import EmulatorConfig
    from bulkpix.emulator.config import SyntheticCollection
    from bulkpix.pipeline import plan_job
    from bulkpix.store.record import TileRecord
    from bulkpix.store.zarr_store import open_store
    from tests.conftest import emulator_thread

    spec = SyntheticCollection(
        tiles=(2, 2), tile_size=96, overlap=16, scale=30, dates=2, start="2024-05-01",
        crs=("EPSG:32632", "EPSG:32633"), origin=(11.98, 46.0))
    with emulator_thread(collections={COLL: spec}, max_qps=None) as emu:
        assert isinstance(emu.config, EmulatorConfig)

        def job(name: str) -> Job:
            return _mosaic_job(tmp_path, name, endpoint=emu.url, emulator=None, tile=[16, 16],
                               concurrency=2, credentials="none")

        first = asyncio.run(_interrupted(job("out.zarr"), after=10))
        assert first.interrupted and 10 <= first.finished < first.total
        (plan,) = asyncio.run(plan_job(job("out.zarr")))

        async def done_keys() -> set[str]:
            return await TileRecord(await open_store(str(tmp_path / "out.zarr"))).done_keys()

        done = asyncio.run(done_keys())
        windows = {t.key: t.window for t in plan.tiles.tiles()}
        done_tiles = {(windows[k].row_off // 16, windows[k].col_off // 16) for k in done}
        assert len(done_tiles) == len(done) >= 10
        calls_before = len(emu.log)
        second = asyncio.run(run_job(job("out.zarr")))
        assert second.ok and second.finished == second.total
        assert second.items[0].done_before == len(done)
        fetched = _request_tiles(emu.log[calls_before:], plan.grid, 16)
        assert fetched and not set(fetched) & done_tiles
    resumed, reference = _read(tmp_path / "out.zarr"), _reference(job("x"), "last")
    for band in reference:
        np.testing.assert_array_equal(resumed[band], reference[band])


# --------------------------------------------------------------------------- layout items


def test_layout_items_writes_one_group_per_image_named_from_its_id(tmp_path: Path) -> None:
    job = _mosaic_job(tmp_path, layout="items", crs=None, scale=None, filter="day = 1",
                      region=[11.975, 45.99, 11.985, 46.0])
    stats = asyncio.run(run_job(job))
    assert stats.ok
    root = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    names = sorted(name for name, _ in root.groups())
    # The region meets the north-west tile of each zone's grid; the filter keeps day 1.
    assert names == ["EPSG32632_r0_c0_d001", "EPSG32633_r0_c0_d001"]
    group = root["EPSG32632_r0_c0_d001"]
    assert group.attrs["asset"] == f"{COLL}/EPSG32632_r0_c0_d001"
    assert (np.asarray(group["u16"][:]) != 0).all()  # on the image's own grid: all inside


def test_metadata_calls_run_concurrently_up_to_the_jobs_concurrency() -> None:
    from bulkpix.sources import fetch_assets

    names = [f"projects/p/assets/a{i}" for i in range(12)]
    job = parse_job({**BASE, "concurrency": 5, "items": [{"asset": n} for n in names]})
    in_flight, peak, gate = 0, 0, asyncio.Event()

    class Client:
        async def get_asset(self, name: str) -> dict[str, Any]:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            if peak == 5:
                gate.set()  # the fifth call in flight opens the gate for all
            await gate.wait()
            in_flight -= 1
            grid = {"crsCode": "EPSG:4326", "dimensions": {"width": 4, "height": 4},
                    "affineTransform": {"scaleX": 1, "scaleY": -1, "translateY": 4}}
            return {"type": "IMAGE", "name": name,
                    "bands": [{"id": "b", "dataType": {"precision": "INT"}, "grid": grid}]}

    retried: list[str] = []

    async def retry(call: Any) -> Any:
        retried.append("call")
        return await call()

    infos = asyncio.run(fetch_assets(job, Client(), retry))  # type: ignore[arg-type]
    assert list(infos) == names and peak == 5 and len(retried) == 12


def test_plan_prints_the_images_found_with_their_dates_and_tiles(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _job_file(tmp_path, tile=[32, 32], chunk=16, bands=["u16"],
                     filter='zone = "EPSG32633" AND day = 0')
    assert main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"collection {COLL}: mosaic (last) of 4 images" in out
    lines = [line for line in out.splitlines() if line.strip().startswith("image ")]
    assert len(lines) == 4
    assert "EPSG32633_r0_c0_d000  2024-05-01T00:00:00Z .. 2024-05-02T00:00:00Z" in lines[0]
    tiles = [int(line.rsplit(" ", 2)[-2]) for line in lines]
    assert all(count >= 1 for count in tiles) and sum(tiles) > 4  # footprints span tiles
    assert not (tmp_path / "out.zarr").exists()


def test_the_demo_mosaic_job_runs_and_covers_its_region(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    data = yaml.safe_load((root / "configs" / "demo_mosaic.yaml").read_text())
    data["output"] = str(tmp_path / "demo.zarr")
    data["emulator"].update(service_base_s=0, service_per_mb_s=0)
    job = parse_job(data, base_dir=tmp_path)
    stats = asyncio.run(run_job(job))
    assert stats.ok
    values = np.asarray(zarr.open_group(str(tmp_path / "demo.zarr"), mode="r")["u16"][:])
    assert (values != 0).all()  # the region lies inside the collection: every pixel covered


def test_a_native_grid_mosaic_of_a_tiled_collection_is_bit_exact_at_every_tile_edge(
    tmp_path: Path,
) -> None:
    """One UTM zone: the tiles share one 30 m lattice, so no crs or scale is needed and the
    output is that lattice; the region crosses the tiles' edges and overlaps."""
    from bulkpix.emulator.collections import build_collection
    from bulkpix.emulator.config import SyntheticCollection
    from bulkpix.emulator.resample import OutputGrid, read_grid

    one_zone = {**SYNTH, "crs": ["EPSG:32633"], "tiles": [2, 3]}
    job = _mosaic_job(tmp_path, crs=None, scale=None, mosaic="first",
                      emulator={"collections": {COLL: one_zone}, "max_qps": None})
    stats = asyncio.run(run_job(job))
    assert stats.ok
    group = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    transform = group.attrs["bulkpix"]["grid"]["transform"]
    assert transform[0] == 30 and transform[4] == -30  # the images' own pixel size
    assert transform[2] % 30 == 0 and transform[5] % 30 == 0  # on their lattice
    got = _read(tmp_path / "out.zarr")
    spec = SyntheticCollection(tiles=(2, 3), tile_size=96, overlap=16, scale=30, dates=2,
                               start="2024-05-01", crs=("EPSG:32633",), origin=(11.98, 46.0))
    images = sorted(build_collection(COLL, spec).images, key=lambda i: (i.start, i.asset.name))
    height, width = got["u16"].shape
    whole = OutputGrid(images[0].asset.crs, Affine(*transform[:6]), width, height, None)
    for band in ("u16", "u8"):
        want = np.zeros((height, width), got[band].dtype)
        done = np.zeros((height, width), bool)
        for image in images:  # rule first: the earliest image with a value wins
            (values,), _ = read_grid(image.asset, [image.asset.band_index(band) or 0], whole)
            take = (values != 0) & ~done
            want[take] = values[take]
            done |= take
        assert done.all()  # clipped to the images' extent, which the tiles cover, no gap
        np.testing.assert_array_equal(got[band], want)


def test_images_of_different_band_types_are_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.conftest import write_tif

    for name, dtype in (("a", np.uint8), ("b", np.uint16)):
        write_tif(tmp_path / f"{name}.tif", [np.ones((8, 8), dtype)])
    files = [{"file": "a.tif", "start": "2024-01-01"}, {"file": "b.tif", "start": "2024-01-02"}]
    path = write_job(tmp_path / "job.yaml", output=str(tmp_path / "out.zarr"),
                     endpoint="emulator", collection=COLL,
                     emulator={"collections": {COLL: {"files": files}}})
    assert main(["run", str(path)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "band B1 is uint8 in" in lines[0] and "but uint16 in" in lines[0]
    assert not (tmp_path / "out.zarr").exists()


def test_a_collection_of_geotiffs_on_one_grid_mosaics_natively(tmp_path: Path) -> None:
    from tests.conftest import SRC_TRANSFORM, write_tif

    # Two 8 x 8 images, the second 4 px east of the first: a 12 px wide mosaic.
    write_tif(tmp_path / "a.tif", [np.full((8, 8), 5, np.uint8)])
    write_tif(tmp_path / "b.tif", [np.full((8, 8), 9, np.uint8)],
              transform=SRC_TRANSFORM @ Affine.translation(4, 0))
    files = [{"file": "b.tif", "start": "2024-01-02"}, {"file": "a.tif", "start": "2024-01-01"}]
    for rule, middle in (("last", 9), ("first", 5), ("min", 5)):
        job = parse_job({"output": str(tmp_path / f"{rule}.zarr"), "endpoint": "emulator",
                         "collection": COLL, "mosaic": rule,
                         "emulator": {"collections": {COLL: {"files": files}}}},
                        base_dir=tmp_path)
        assert asyncio.run(run_job(job)).ok
        values = np.asarray(zarr.open_group(str(tmp_path / f"{rule}.zarr"), mode="r")["B1"][:])
        assert values.shape == (8, 12)
        assert (values[:, :4] == 5).all() and (values[:, 8:] == 9).all()
        assert (values[:, 4:8] == middle).all(), rule


def test_the_mosaic_benchmark_asks_each_image_only_for_what_it_covers() -> None:
    from benchmarks.mosaic import mosaic_run, planning

    plan = planning(300, 60)
    assert plan["output_tiles"] >= 250 and plan["footprints"] >= 50 and plan["calls"] > 0
    run = mosaic_run(2, tile_px=64, service_base_s=0.0)
    assert run["images"] == 8 and run["requests"] >= run["output_tiles"]
    # Bytes requested equal the footprints' windows over the output: no call asks for more.
    assert run["overfetch_over_depth"] == 1.0


def test_a_mosaic_killed_mid_run_resumes_bit_exact_without_refetching_a_finished_tile(
    tmp_path: Path,
) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from bulkpix.emulator.config import SyntheticCollection
    from bulkpix.geometry.tiling import parse_tile_key
    from bulkpix.pipeline import plan_job
    from tests.conftest import emulator_thread

    spec = SyntheticCollection(
        tiles=(2, 2), tile_size=96, overlap=16, scale=30, dates=2, start="2024-05-01",
        crs=("EPSG:32632", "EPSG:32633"), origin=(11.98, 46.0))
    output = tmp_path / "out.zarr"
    with emulator_thread(collections={COLL: spec}, max_qps=None, service_base_s=0.01) as emu:
        path = _job_file(tmp_path, endpoint=emu.url, emulator=None, credentials="none",
                         bands=["u16", "u8"], chunk=16, tile=[16, 16], concurrency=4)
        text = path.read_text()
        path.write_text("\n".join(line for line in text.splitlines()
                                  if not line.startswith("emulator:")))
        proc = subprocess.Popen([sys.executable, "-m", "bulkpix", "run", "--quiet", str(path)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + 60
        done_dir = output / ".bulkpix" / "done"
        while not (done_dir.is_dir() and len(list(done_dir.iterdir())) >= 8):
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.005)  # polling for the kill point, not hiding a race
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        keys = [m.name for m in done_dir.iterdir() if not m.name.endswith(".partial")]
        done_tiles = {(parse_tile_key(k).window.row_off // 16,
                       parse_tile_key(k).window.col_off // 16) for k in keys}
        assert len(done_tiles) >= 8
        job = parse_job(yaml.safe_load(path.read_text()), base_dir=tmp_path)
        (plan,) = asyncio.run(plan_job(job))
        assert len(done_tiles) < plan.tiles.n_tiles  # killed mid-run
        assert main(["run", "--quiet", "--workload-tag", "resume", str(path)]) == 0
        resumed = [r for r in emu.log if r.get("workload_tag") == "resume"]
        fetched = _request_tiles(resumed, plan.grid, 16)
        assert fetched and not set(fetched) & done_tiles
    got, want = _read(output), _reference(job, "last")
    for band in want:
        np.testing.assert_array_equal(got[band], want[band])
