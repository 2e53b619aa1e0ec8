"""Time cubes of a collection (issue #12, layout: cube): a (time, y, x) array per band."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
import zarr
from affine import Affine

import bulkpix
from bulkpix.cli import main
from bulkpix.emulator.config import SyntheticCollection
from bulkpix.job import Job, parse_job
from bulkpix.pipeline import plan_job, run_job
from tests.conftest import emulator_thread, write_job

COLL = "projects/p/assets/coll"
# One granule a day over 5 days, in one UTM zone; the region lies inside it.
FIVE_DAYS: dict[str, Any] = {
    "tiles": [1, 1], "tile_size": 96, "overlap": 0, "scale": 30, "dates": 5,
    "start": "2024-05-01", "crs": ["EPSG:32633"], "origin": [11.98, 46.0],
}
# Two overlapping granules a day (side by side) over 3 days: a pass each day.
TWO_GRANULES: dict[str, Any] = {**FIVE_DAYS, "tiles": [1, 2], "overlap": 16, "dates": 3}
REGION = [11.985, 45.985, 12.03, 45.999]  # crosses the two granules' overlap
SCALE = 0.0004


def _keys(collection: dict[str, Any], output: Path, **more: Any) -> dict[str, Any]:
    return {
        "output": str(output),
        "endpoint": "emulator",
        "collection": COLL,
        "layout": "cube",
        "region": REGION,
        "crs": "EPSG:4326",
        "scale": SCALE,
        "bands": ["u16", "u8"],
        "chunk": 16,
        "tile": [32, 32],
        "emulator": {"collections": {COLL: collection}, "max_qps": None},
        **more,
    }


def _job(tmp_path: Path, collection: dict[str, Any], **more: Any) -> Job:
    return parse_job(_keys(collection, tmp_path / "out.zarr", **more), base_dir=tmp_path)


def _spec(collection: dict[str, Any]) -> SyntheticCollection:
    return SyntheticCollection(**{
        k: tuple(v) if isinstance(v, list) else v for k, v in collection.items()})


def _whole_grid(crs_grid: dict[str, Any]) -> Any:
    from rasterio.crs import CRS as RioCRS

    from bulkpix.emulator.resample import OutputGrid

    return OutputGrid(RioCRS.from_epsg(4326), Affine(*crs_grid["transform"][:6]),
                      crs_grid["width"], crs_grid["height"], None)


def _check_against_references(output: Path, collection: dict[str, Any], by_day: bool) -> None:
    from bulkpix.emulator.collections import build_collection
    from bulkpix.emulator.resample import read_grid

    images = sorted(build_collection(COLL, _spec(collection)).images,
                    key=lambda i: (i.start, i.asset.name))
    steps: list[list[Any]] = []
    for image in images:
        if by_day and steps and steps[-1][0].start.date() == image.start.date():
            steps[-1].append(image)
        else:
            steps.append([image])
    group = zarr.open_group(str(output), mode="r")
    whole = _whole_grid(group.attrs["bulkpix"]["grid"])
    for band in ("u16", "u8"):
        got = np.asarray(group[band][:])
        assert got.shape == (len(steps), whole.height, whole.width)
        assert group[band].chunks == (1, 16, 16)
        for index, step in enumerate(steps):
            want = np.zeros((whole.height, whole.width), got.dtype)
            for image in step:  # rule last: later images on top
                (values,), _ = read_grid(image.asset, [image.asset.band_index(band) or 0], whole)
                want = np.where(values != 0, values, want)
            assert (want != 0).mean() > 0.5  # the step holds data: the test means something
            np.testing.assert_array_equal(got[index], want, err_msg=f"{band} step {index}")
    ids = ["+".join(i.asset.name.rsplit("/", 1)[-1] for i in step) for step in steps]
    assert list(np.asarray(group["image_id"][:])) == ids


def test_a_cube_over_five_dates_equals_the_per_date_references(tmp_path: Path) -> None:
    stats = asyncio.run(run_job(_job(tmp_path, FIVE_DAYS)))
    assert stats.ok and stats.finished == stats.total
    output = tmp_path / "out.zarr"
    _check_against_references(output, FIVE_DAYS, by_day=False)

    dataset = xr.open_zarr(output, decode_coords="all")
    assert dataset["u16"].dims == ("time", "y", "x")
    assert np.issubdtype(dataset["time"].dtype, np.datetime64)
    assert [str(t)[:10] for t in dataset["time"].values] == [
        f"2024-05-0{day}" for day in range(1, 6)]
    assert list(dataset["image_id"].values) == [
        f"EPSG32633_r0_c0_d00{day}" for day in range(5)]
    assert dataset.rio.crs.to_epsg() == 4326
    grid = zarr.open_group(str(output), mode="r").attrs["bulkpix"]["grid"]
    assert tuple(dataset["u16"].rio.transform())[:6] == pytest.approx(grid["transform"][:6])
    assert zarr.open_group(str(output), mode="r").attrs["bulkpix"]["complete"] is True
    opened = bulkpix.open(output)
    assert list(opened.data_vars) == ["u16", "u8"] and opened["u8"].dims == ("time", "y", "x")


def test_group_by_day_merges_the_granules_of_one_pass(tmp_path: Path) -> None:
    stats = asyncio.run(run_job(_job(tmp_path, TWO_GRANULES, group_by="day")))
    assert stats.ok
    _check_against_references(tmp_path / "out.zarr", TWO_GRANULES, by_day=True)
    ids = list(np.asarray(zarr.open_group(str(tmp_path / "out.zarr"), mode="r")["image_id"][:]))
    assert ids[0] == "EPSG32633_r0_c0_d000+EPSG32633_r0_c1_d000" and len(ids) == 3


def test_the_record_holds_each_steps_images_and_time(tmp_path: Path) -> None:
    from bulkpix.store.record import TileRecord
    from bulkpix.store.zarr_store import open_store

    asyncio.run(run_job(_job(tmp_path, TWO_GRANULES, group_by="day")))

    async def fingerprint() -> dict[str, Any]:
        return await TileRecord(await open_store(str(tmp_path / "out.zarr"))).fingerprint()

    cube = asyncio.run(fingerprint())["cube"]
    assert cube["group_by"] == "day"
    assert [s["time"] for s in cube["steps"]] == [
        "2024-05-01T00:00:00Z", "2024-05-02T00:00:00Z", "2024-05-03T00:00:00Z"]
    assert cube["steps"][2]["images"] == [
        f"{COLL}/EPSG32633_r0_c0_d002", f"{COLL}/EPSG32633_r0_c1_d002"]


# --------------------------------------------------------------------------- resume

RESUME_TAG = "resume"


def _step_tiles(log: list[dict[str, Any]], transform: Affine, side: int) -> list[Any]:
    """(image, output tile row, col) of each answered getPixels call: one image is one step."""
    out = []
    for record in log:
        if record["op"] != "get_pixels" or record.get("status") != 200:
            continue
        col, row = ~transform @ (record["affine"][2], record["affine"][5])
        out.append((record["asset"], round(row) // side, round(col) // side))
    return out


def test_a_sigkilled_cube_resumes_bit_exact_without_fetching_a_finished_step_tile(
    tmp_path: Path,
) -> None:
    from bulkpix.geometry.tiling import parse_tile_key

    with emulator_thread(collections={COLL: _spec(FIVE_DAYS)}, max_qps=None,
                         service_base_s=0.02) as emu:
        keys = _keys(FIVE_DAYS, tmp_path / "out.zarr", endpoint=emu.url, emulator=None,
                     credentials="none", tile=[16, 16], concurrency=2)
        path = write_job(tmp_path / "job.yaml", **keys)
        proc = subprocess.Popen([sys.executable, "-m", "bulkpix", "run", "--quiet", str(path)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        done_dir = tmp_path / "out.zarr" / ".bulkpix" / "done"
        try:
            # Killed once some (step, tile)s are recorded: the point we wait for, not a race.
            while not (done_dir.is_dir() and len(list(done_dir.glob("s*"))) >= 12):
                assert proc.poll() is None, "the run ended before it could be killed"
                time.sleep(0.005)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        done = {m.name for m in done_dir.iterdir() if not m.name.endswith(".partial")}
        tiles = [parse_tile_key(key) for key in done]
        assert all(t.step is not None for t in tiles) and len(done) >= 12
        start = len(emu.log)
        assert main(["run", "--quiet", "--workload-tag", RESUME_TAG, str(path)]) == 0
        resumed = [r for r in emu.log[start:] if r.get("workload_tag") == RESUME_TAG]
        grid = zarr.open_group(str(tmp_path / "out.zarr"), mode="r").attrs["bulkpix"]["grid"]
        fetched = _step_tiles(resumed, Affine(*grid["transform"][:6]), 16)
        assert fetched
        day_of = {f"{COLL}/EPSG32633_r0_c0_d00{d}": d for d in range(5)}
        finished = {(t.step, t.window.row_off // 16, t.window.col_off // 16) for t in tiles}
        again = {(day_of[image], row, col) for image, row, col in fetched}
        assert not again & finished, "a finished (step, tile) was fetched again"
        assert len(fetched) == len(again)  # nothing fetched twice by the resume
    _check_against_references(tmp_path / "out.zarr", FIVE_DAYS, by_day=False)


def test_verify_refetches_exactly_the_step_tile_of_a_corrupted_chunk(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with emulator_thread(collections={COLL: _spec(FIVE_DAYS)}, max_qps=None) as emu:
        keys = _keys(FIVE_DAYS, tmp_path / "out.zarr", endpoint=emu.url, emulator=None,
                     credentials="none")
        path = write_job(tmp_path / "job.yaml", **keys)
        assert main(["run", "--quiet", str(path)]) == 0
        output = tmp_path / "out.zarr"
        chunk = output / "u16" / "c" / "3" / "1" / "0"  # step 3, chunk row 1, col 0
        assert chunk.is_file()
        chunk.write_bytes(b"not the chunk")
        before = {m.name for m in (output / ".bulkpix" / "done").iterdir()}
        assert main(["verify", str(output)]) != 0
        after = {m.name for m in (output / ".bulkpix" / "done").iterdir()}
        (cleared,) = before - after
        assert cleared.startswith("s3_g0_r0_c0_") and after < before
        start = len(emu.log)
        assert main(["run", "--quiet", "--workload-tag", RESUME_TAG, str(path)]) == 0
        again = [r for r in emu.log[start:] if r["op"] == "get_pixels"]
        grid = zarr.open_group(str(output), mode="r").attrs["bulkpix"]["grid"]
        assert _step_tiles(again, Affine(*grid["transform"][:6]), 32) == [
            (f"{COLL}/EPSG32633_r0_c0_d003", 0, 0)]
    capsys.readouterr()
    _check_against_references(tmp_path / "out.zarr", FIVE_DAYS, by_day=False)


# --------------------------------------------------------------------------- keys, plan, configs


def test_tile_keys_carry_the_step_only_in_a_cube() -> None:
    from bulkpix.geometry.grid import Window
    from bulkpix.geometry.tiling import Tile, TilePlan, parse_tile_key, split_tile
    from bulkpix.store.verify import _contains

    flat = Tile(Window(0, 32, 32, 32), 1)
    assert flat.key == "g1_r0_c32_h32_w32" and parse_tile_key(flat.key) == flat  # as before
    cube = Tile(Window(0, 32, 32, 32), 1, step=3)
    assert cube.key == "s3_g1_r0_c32_h32_w32" and parse_tile_key(cube.key) == cube
    assert {part.step for part in split_tile(cube, 16)} == {3}
    part = split_tile(cube, 16)[0]
    assert _contains(cube.key, part.key) and _contains(cube.key, part.key + "_b0-1")
    assert not _contains(cube.key, split_tile(Tile(cube.window, 1, step=2), 16)[0].key)
    plan = TilePlan(64, 64, 16, 32, 32, ((0,),), steps=5)
    assert plan.n_tiles == 20 and len(list(plan.tiles())) == 20
    assert plan.has_tile_key("s4_g0_r32_c32_h32_w32")
    assert not plan.has_tile_key("s5_g0_r32_c32_h32_w32") and not plan.has_tile_key(flat.key)
    assert not TilePlan(64, 64, 16, 32, 32, ((0,),)).has_tile_key(cube.key)


def test_plan_shows_the_cube_and_export_refuses_it_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_job(tmp_path / "job.yaml", **_keys(TWO_GRANULES, tmp_path / "out.zarr",
                                                      group_by="day"))
    assert main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"collection {COLL}: cube of 3 steps (a day each, last) of 6 images" in out
    job = parse_job(_keys(TWO_GRANULES, tmp_path / "out.zarr", group_by="day"))
    (plan,) = asyncio.run(plan_job(job))
    assert plan.pixel_bytes == 3 * plan.grid.width * plan.grid.height * 3  # 3 steps, u16 + u8
    assert main(["run", "--quiet", str(path)]) == 0
    capsys.readouterr()
    assert main(["export", str(tmp_path / "out.zarr"), str(tmp_path / "x.tif")]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "is a time cube of 3 steps" in lines[0]
    assert not (tmp_path / "x.tif").exists()


def test_the_shipped_cube_and_dem_configs_load_as_annotated() -> None:
    from bulkpix.job import load_job

    configs = Path(__file__).resolve().parent.parent / "configs"
    (cube,) = load_job(configs / "s2_cube.yaml").resolved_items()
    assert cube.collection == "projects/earthengine-public/assets/COPERNICUS/S2_SR_HARMONIZED"
    assert (cube.layout_name, cube.group_by, cube.mosaic_rule) == ("cube", "day", "last")
    assert cube.filter and "CLOUDY_PIXEL_PERCENTAGE" in cube.filter
    assert cube.time_range() == ("2023-07-01T00:00:00Z", "2023-08-01T00:00:00Z")
    (dem,) = load_job(configs / "dem_mosaic.yaml").resolved_items()
    assert dem.collection == "projects/earthengine-public/assets/COPERNICUS/DEM/GLO30"
    assert dem.layout_name == "mosaic" and (dem.crs, dem.scale) == ("EPSG:3035", 30)


def test_a_cube_resumes_on_its_recorded_steps_and_a_restart_takes_the_new_ones(
    tmp_path: Path,
) -> None:
    from tests.test_collections import _interrupted

    first = asyncio.run(_interrupted(_job(tmp_path, FIVE_DAYS, tile=[16, 16], concurrency=2), 8))
    assert first.interrupted and first.finished < first.total
    grown = {**FIVE_DAYS, "dates": 6}
    second = asyncio.run(run_job(_job(tmp_path, grown, tile=[16, 16])))
    assert second.ok and second.items[0].done_before >= 8
    assert any("resuming with the 5 images its record holds; the collection now lists 6"
               in notice for notice in second.notices)
    _check_against_references(tmp_path / "out.zarr", FIVE_DAYS, by_day=False)
    third = asyncio.run(run_job(_job(tmp_path, grown, tile=[16, 16]), restart=True))
    assert third.ok and third.items[0].done_before == 0
    _check_against_references(tmp_path / "out.zarr", grown, by_day=False)
    assert len(xr.open_zarr(tmp_path / "out.zarr")["time"]) == 6
