"""bulkpix.store.record: finished/failed tile markers and the job fingerprint in the store."""

from __future__ import annotations

import asyncio
import multiprocessing
import warnings

import numpy as np
import pytest
import xarray as xr
import zarr
from affine import Affine
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import LocalStore, MemoryStore

from bulkpix.errors import StoreError
from bulkpix.geometry.grid import PixelGrid as Grid
from bulkpix.store.record import TileRecord, fingerprint_diff
from bulkpix.store.zarr_store import BandSpec, ItemWriter, consolidate


@pytest.fixture(params=["local", "memory"])
async def store(request, tmp_path):
    # MemoryStore stands in for object stores: no filesystem, no rename.
    if request.param == "local":
        return await LocalStore.open(str(tmp_path / "out.zarr"))
    return MemoryStore()


async def put_raw(store, key: str, data: bytes) -> None:
    await store.set(key, default_buffer_prototype().buffer.from_bytes(data))


async def test_mark_and_list_round_trip(store):
    record = TileRecord(store, "items/a")
    assert await record.done_keys() == set()
    for key in ("r0_c0_g0", "r0_c2048_g0", "r2048_c0_g1"):
        await record.mark_done(key)
    await record.mark_done("r0_c0_g0")  # idempotent
    assert await record.done_keys() == {"r0_c0_g0", "r0_c2048_g0", "r2048_c0_g1"}
    assert await record.done_keys(validate=False) == await record.done_keys()
    # Another item's record is separate.
    assert await TileRecord(store, "items/b").done_keys() == set()
    assert await TileRecord(store, "items").done_keys() == set()


async def test_leftover_partial_and_garbage_markers_do_not_count(store):
    record = TileRecord(store, "")
    await record.mark_done("good")
    done = ".bulkpix/done/"
    await put_raw(store, done + "r1.3f2a9c0d.partial", b'{"key": "r1"')  # crash mid-write
    await put_raw(store, done + "torn", b'{"key": "torn", "v"')  # torn object
    await put_raw(store, done + "junk", b"\x00\xff\x13")
    await put_raw(store, done + "other", b'{"key": "not-other"}')  # marker for another key
    await put_raw(store, done + "list", b'["list"]')
    await put_raw(store, done + "nested/deeper", b'{"key": "nested/deeper"}')
    assert await record.done_keys() == {"good"}
    # Trusting the listing still drops temp files and impossible names.
    assert await record.done_keys(validate=False) == {"good", "torn", "junk", "other", "list"}


async def test_failed_tiles_with_reasons(store):
    record = TileRecord(store, "a")
    await record.mark_failed("t1", "400 INVALID_ARGUMENT: band B9 not found")
    await record.mark_failed("t2", "too large after 3 splits")
    await put_raw(store, "a/.bulkpix/failed/t3", b"oops")
    assert await record.failed() == {
        "t1": "400 INVALID_ARGUMENT: band B9 not found",
        "t2": "too large after 3 splits",
    }
    await record.clear_failed("t2")
    await record.mark_done("t1")  # retried and succeeded later: no longer reported
    assert await record.failed() == {}
    await record.clear_failed("never-failed")  # no error


async def test_fingerprint_round_trip_and_corruption(store):
    record = TileRecord(store, "a")
    assert await record.fingerprint() is None
    fingerprint = {"asset": "X/Y", "bands": ["B4"], "grid": {"crs": "EPSG:32633"}}
    await record.write_fingerprint(fingerprint)
    assert await record.fingerprint() == fingerprint
    await put_raw(store, "a/.bulkpix/job.json", b"{not json")
    with pytest.raises(StoreError, match="fingerprint"):
        await record.fingerprint()


async def test_clear_forgets_everything(store):
    record = TileRecord(store, "a")
    await record.write_fingerprint({"asset": "X"})
    await record.mark_done("t1")
    await record.mark_failed("t2", "why")
    await record.clear()
    assert await record.fingerprint() is None
    assert await record.done_keys() == set()
    assert await record.failed() == {}


@pytest.mark.parametrize("key", ["", "a/b", ".hidden", "x.partial", "sp ace", "../up"])
async def test_unsafe_keys_are_refused(key):
    with pytest.raises(ValueError, match="tile key"):
        await TileRecord(MemoryStore(), "").mark_done(key)


def test_fingerprint_diff_names_what_changed():
    old = {"asset": "A", "bands": ["B4"], "grid": {"crs": "EPSG:1", "w": 10}, "chunk": 512}
    new = {"asset": "A", "bands": ["B4", "B3"], "grid": {"crs": "EPSG:1", "w": 12}, "z": 1}
    assert fingerprint_diff(old, new) == [
        "bands: ['B4'] -> ['B4', 'B3']",
        "chunk: 512 -> (absent)",
        "grid.w: 10 -> 12",
        "z: (absent) -> 1",
    ]
    assert fingerprint_diff(new, new) == []


async def test_zarr_and_xarray_ignore_the_record_inside_an_item(tmp_path):
    store = await LocalStore.open(str(tmp_path / "out.zarr"))
    grid = Grid("EPSG:32633", Affine(10, 0, 600000, 0, -10, 5200000), 16, 16)
    await ItemWriter.create(store, "item", grid, [BandSpec("B4", np.uint16)], 16)
    record = TileRecord(store, "item")
    await record.write_fingerprint({"asset": "X"})
    await record.mark_done("t0")
    await record.mark_failed("t1", "why")
    await consolidate(store)  # walks the hierarchy past .bulkpix
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(str(tmp_path / "out.zarr"), group="item", consolidated=True)
    assert list(ds.data_vars) == ["B4"]
    with warnings.catch_warnings():
        # Without consolidated metadata zarr lists the group and warns about .bulkpix.
        warnings.simplefilter("ignore")
        members = dict(
            zarr.open_group(store, path="item", mode="r", use_consolidated=False).members()
        )
        ds = xr.open_zarr(str(tmp_path / "out.zarr"), group="item", consolidated=False)
    assert sorted(members) == ["B4", "spatial_ref", "x", "y"]
    assert list(ds.data_vars) == ["B4"]


# --------------------------------------------------------------------------- processes


def _mark_many(root: str, prefix: str, count: int) -> None:
    async def run() -> None:
        record = TileRecord(await LocalStore.open(root), "item")
        await asyncio.gather(*(record.mark_done(f"{prefix}{i}") for i in range(count)))

    asyncio.run(run())


async def test_two_processes_marking_concurrently_both_land(tmp_path):
    root = str(tmp_path / "out.zarr")
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_mark_many, args=(root, prefix, 150)) for prefix in ("a", "b")
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    done = await TileRecord(await LocalStore.open(root), "item").done_keys()
    assert done == {f"{p}{i}" for p in ("a", "b") for i in range(150)}


def test_a_fingerprint_change_is_quoted_short() -> None:
    from bulkpix.store.record import fingerprint_diff

    steps = [{"time": f"2024-05-{d:02d}", "images": [f"img{d}"]} for d in range(1, 31)]
    [change] = fingerprint_diff({"cube": {"steps": steps}}, {"cube": {"steps": steps[:-1]}})
    assert change.startswith("cube.steps: [{") and len(change) < 300
    assert "(30 entries)" in change and "(29 entries)" in change
