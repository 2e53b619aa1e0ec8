"""The Python API: run from sync code, from inside a running loop (a notebook), await it,
stop it gracefully, and open the result."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rasterio.crs import CRS

import bulkpix
from bulkpix.api import RunSummary, _run_on_thread, _stoppable
from bulkpix.emulator.synthetic import SYNTHETIC_BANDS, synthetic_pixels
from tests.conftest import emulator_thread

ASSET = "projects/demo/assets/src"


def _job(url: str, output: Path, **keys: Any) -> dict[str, Any]:
    return {"asset": ASSET, "output": str(output), "endpoint": url, "credentials": "none",
            "region": {"bbox": [600000, 5195000, 603000, 5197500], "region_crs": "EPSG:32633"},
            "chunk": 128, "tile": [256, 256], "concurrency": 4, **keys}


@pytest.fixture
def emulator() -> Any:
    from bulkpix.emulator import SyntheticAsset

    with emulator_thread(synthetic={ASSET: SyntheticAsset(width=2000, height=2000)}) as emu:
        yield emu


def test_sync_run_outside_a_loop_returns_a_plain_summary(emulator: Any, tmp_path: Path) -> None:
    summary = bulkpix.run(_job(emulator.url, tmp_path / "out.zarr"), progress=False)
    assert isinstance(summary, RunSummary)
    assert summary.complete and not summary.interrupted and summary.aborted is None
    assert summary.output == str(tmp_path / "out.zarr")
    assert summary.tiles == summary.finished == sum(i.tiles for i in summary.items) > 1
    assert summary.bytes == sum(i.bytes for i in summary.items) > 0
    assert summary.seconds > 0 and summary.mb_per_s > 0
    # A rerun fetches nothing and says so.
    again = bulkpix.run(_job(emulator.url, tmp_path / "out.zarr"), progress=False)
    assert again.complete and again.bytes == 0 and again.items[0].fetched == 0


async def test_sync_run_works_inside_a_running_loop(emulator: Any, tmp_path: Path) -> None:
    # As in a notebook cell: a loop is running, and asyncio.run would be refused.
    summary = bulkpix.run(_job(emulator.url, tmp_path / "out.zarr"), progress=False)
    assert summary.complete
    plans = bulkpix.plan(_job(emulator.url, tmp_path / "other.zarr"))
    assert plans[0].tiles.n_tiles == summary.tiles


async def test_arun_awaits_on_the_callers_loop(emulator: Any, tmp_path: Path) -> None:
    summary = await bulkpix.arun(_job(emulator.url, tmp_path / "out.zarr"), progress=False)
    assert summary.complete
    plans = await bulkpix.aplan(_job(emulator.url, tmp_path / "out.zarr"))
    assert plans[0].grid.width == 300 and plans[0].grid.height == 250


def test_open_gives_the_dataset_with_crs_and_transform(emulator: Any, tmp_path: Path) -> None:
    output = tmp_path / "out.zarr"
    bulkpix.run(_job(emulator.url, output), progress=False)
    ds = bulkpix.open(output)
    assert ds.rio.crs == CRS.from_epsg(32633)
    plan = bulkpix.plan(_job(emulator.url, output))[0]
    assert ds.rio.transform() == plan.grid.transform
    # The region is rows 250..500 and columns 0..300 of the synthetic asset's grid.
    rows, cols = np.arange(250, 500), np.arange(0, 300)
    for index, (band, _dtype) in enumerate(SYNTHETIC_BANDS):
        np.testing.assert_array_equal(ds[band].values, synthetic_pixels(index, rows, cols))


async def test_first_interrupt_stops_gracefully_second_goes_through() -> None:
    async def job(stop: asyncio.Event | None) -> str:
        assert stop is not None
        await stop.wait()
        return "stopped cleanly"

    task = asyncio.ensure_future(_stoppable(job, asyncio.Event()))
    await asyncio.sleep(0)
    task.cancel()  # Ctrl-C once: the job is asked to stop and returns its result
    assert await task == "stopped cleanly"

    async def stubborn(stop: asyncio.Event | None) -> str:
        await asyncio.Event().wait()
        return "never"

    task = asyncio.ensure_future(_stoppable(stubborn, asyncio.Event()))
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.sleep(0)
    assert not task.done()  # still finishing gracefully
    task.cancel()  # twice: through
    with pytest.raises(asyncio.CancelledError):
        await task


def test_errors_cross_the_thread_as_they_are() -> None:
    async def fails(stop: asyncio.Event | None) -> None:
        raise bulkpix_error("no such asset")

    from bulkpix.errors import NotFound as bulkpix_error

    with pytest.raises(bulkpix_error, match="no such asset"):
        _run_on_thread(fails)


def test_import_bulkpix_loads_no_heavy_library() -> None:
    code = ("import sys, bulkpix; heavy = [m for m in ('aiohttp', 'zarr', 'rasterio', "
            "'google.auth', 'pydantic', 'numpy') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_open_without_the_output_raises_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        bulkpix.open(tmp_path / "missing.zarr")
