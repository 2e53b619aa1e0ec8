"""A job on a local Dask cluster (worker processes) under one shared quota."""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
import zarr
from rich.console import Console

from benchmarks.request_stats import most_in_any_window
from bulkpix.emulator import EmulatorConfig, SyntheticAsset, run_emulator
from bulkpix.emulator.synthetic import SYNTHETIC_BANDS, synthetic_pixels
from bulkpix.job import parse_job
from bulkpix.pipeline import run_job
from tests.conftest import local_cluster, write_job
from tests.test_emulator_compute import data  # noqa: F401  (the computed test's fixture)

ASSET = "projects/demo/assets/src"
SIDE = 512


# One cluster for the module (starting one costs seconds): its tests share the module's loop.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster() -> AsyncIterator[Any]:
    """Two worker processes (one thread each) and a client, on 127.0.0.1."""
    async with local_cluster(2) as client:
        yield client


CAP, QPS = 3, 20.0  # the job's quota, and the stand-in's: 64 tiles take about 3 s at it


def _quota_emulator() -> EmulatorConfig:
    """The stand-in with the job's quota, 0.1 s a call: a 429 would show any overbooking."""
    return EmulatorConfig(
        synthetic={ASSET: SyntheticAsset(width=SIDE, height=SIDE)},
        max_concurrent=CAP,
        max_qps=QPS,
        service_base_s=0.1,
    )


def _job(url: str, output: Path, **keys: Any) -> Any:
    return parse_job(
        {
            "asset": ASSET,
            "output": str(output),
            "endpoint": url,
            "credentials": "none",
            "chunk": 64,
            "tile": [64, 64],
            **keys,
        }
    )


def _assert_synthetic(output: Path) -> None:
    group = zarr.open_group(output, mode="r")
    rows = cols = np.arange(SIDE)
    for index, (band, _) in enumerate(SYNTHETIC_BANDS):
        np.testing.assert_array_equal(group[band][:], synthetic_pixels(index, rows, cols))


def _pixel_calls(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in log if r["op"] == "get_pixels"]


async def test_two_workers_share_one_quota_bit_exact(cluster: Any, tmp_path: Path) -> None:
    cap, qps = CAP, QPS
    config = _quota_emulator()
    async with run_emulator(config) as emu:
        job = _job(emu.url, tmp_path / "out.zarr", concurrency=cap, qps=qps)
        stats = await run_job(job, dask_client=cluster)
        calls = _pixel_calls(emu.log)
    assert stats.ok, [i.failed for i in stats.items]
    assert stats.finished == stats.total == (SIDE // 64) ** 2
    _assert_synthetic(tmp_path / "out.zarr")
    # Both worker processes fetched tiles, and the summary names each.
    assert len(stats.workers) == 2 and all(w.tiles > 0 for w in stats.workers.values())
    assert sum(w.tiles for w in stats.workers.values()) == stats.total
    # The server never saw more than the cap in flight, nor a 429, nor a rate above qps
    # beyond the first wave (aiolimiter's burst is the concurrency cap).
    assert len(calls) == stats.total
    assert all(r["status"] == 200 for r in calls)
    assert max(r["in_flight"] for r in calls) <= cap
    times = [r["time"] for r in calls]
    for window in (1.0, 2.0):
        assert most_in_any_window(times, window) <= cap + qps * window
    # ...and the cluster did use the quota it was given (two requests at once, or more).
    assert max(r["in_flight"] for r in calls) >= 2


async def _wait_for_markers(output: Path, at_least: int, run: asyncio.Task[Any]) -> None:
    done = output / ".bulkpix" / "done"
    while not (done.is_dir() and len(list(done.iterdir())) >= at_least):
        assert not run.done(), "the run ended before the worker could be killed"
        await asyncio.sleep(0.02)


async def test_a_killed_worker_loses_nothing(cluster: Any, tmp_path: Path) -> None:
    cap, qps = CAP, QPS
    config = _quota_emulator()
    output = tmp_path / "out.zarr"
    async with run_emulator(config) as emu:
        job = _job(emu.url, output, concurrency=cap, qps=qps)
        run = asyncio.create_task(run_job(job, dask_client=cluster))
        await _wait_for_markers(output, 8, run)
        pids = await cluster.run(os.getpid)
        victim = sorted(pids.values())[0]
        os.kill(victim, signal.SIGKILL)
        stats = await run
        calls = _pixel_calls(emu.log)
    assert stats.ok, [i.failed for i in stats.items]
    assert stats.finished == stats.total == (SIDE // 64) ** 2
    _assert_synthetic(output)
    # The killed worker's slots came back: the server never saw more than the cap.
    assert max(r["in_flight"] for r in calls) <= cap
    # No 429: only answers, and the killed worker's calls the server saw the client leave.
    statuses = {r["status"] for r in calls}
    assert statuses <= {200, 499, None}, sorted(map(str, statuses))
    # Its batch ran again elsewhere: the new worker process joined or the other took it.
    assert victim not in (await cluster.run(os.getpid)).values()
    await cluster.wait_for_workers(2)  # the nanny's new worker, for the module's next tests


def _cli_job(tmp_path: Path, **keys: Any) -> Path:
    job = {
        "asset": ASSET,
        "output": str(tmp_path / "out.zarr"),
        "endpoint": "emulator",
        "emulator": {
            "synthetic": {ASSET: f"{SIDE}x{SIDE}"},
            "max_concurrent": 4,
            "max_qps": 50,
            "service_base_s": 0.05,
        },
        "concurrency": 4,
        "qps": 50,
        "chunk": 64,
        "tile": [64, 64],
        **keys,
    }
    return write_job(tmp_path / "job.yaml", **job)


async def _bulkpix(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bulkpix", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_command_line_runs_on_the_cluster(cluster: Any, tmp_path: Path) -> None:
    """`bulkpix run JOB --dask ADDRESS`: the stand-in starts in the submitting process and
    the workers reach it; the summary shows each worker's share."""
    job = _cli_job(tmp_path)
    code, _, err = await _bulkpix("run", str(job), "--dask", cluster.scheduler.address)
    assert code == 0, err
    _assert_synthetic(tmp_path / "out.zarr")
    assert "workers" in err  # the summary (on stderr, beside the progress bar)
    addresses = list((await cluster.scheduler.identity())["workers"])
    assert sum(address in err for address in addresses) >= 1
    # A rerun finds everything done and fetches nothing (from the cluster or off it).
    code, _, err = await _bulkpix("run", str(job))
    assert code == 0, err
    assert re.search(r"src\s*│\s*64/64\s*│\s*0\s*│", err), err  # 64 of 64, fetched now 0


async def test_an_unreachable_scheduler_is_one_line_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bulkpix.cluster import submit
    from bulkpix.errors import JobError

    monkeypatch.setattr(submit, "CONNECT_TIMEOUT_S", 1.0)
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    job = parse_job(
        {"asset": ASSET, "output": str(tmp_path / "out.zarr"), "endpoint": "emulator",
         "emulator": {"synthetic": {ASSET: "64x64"}},
         "executor": {"dask": f"tcp://127.0.0.1:{port}"}},
        base_dir=tmp_path,
    )
    with pytest.raises(JobError) as caught:
        await run_job(job)
    message = str(caught.value)
    assert message.startswith(f"cannot reach the Dask scheduler at tcp://127.0.0.1:{port}")
    assert "\n" not in message
    assert not (tmp_path / "out.zarr").exists()


async def test_an_output_the_workers_cannot_reach_is_refused_before_anything_runs(
    cluster: Any,
) -> None:
    from bulkpix.errors import JobError

    job = parse_job(
        {"asset": ASSET, "output": "memory://bulkpix-cluster/out.zarr", "endpoint": "emulator",
         "emulator": {"synthetic": {ASSET: "64x64"}}}
    )
    with pytest.raises(JobError, match="workers cannot reach it"):
        await run_job(job, dask_client=cluster)


async def _wait_for_file_markers(done: Path, at_least: int, process: Any) -> None:
    while not (done.is_dir() and len(list(done.iterdir())) >= at_least):
        assert process.returncode is None, "the run ended before it could be killed"
        await asyncio.sleep(0.02)


async def test_a_killed_submitting_client_leaves_a_resumable_output(
    cluster: Any, tmp_path: Path
) -> None:
    """The client dies mid-run: its batches stop on the workers (the scheduler closes its
    quota), and a new client resumes on the cluster, bit-exact, without the finished tiles."""
    job = _cli_job(tmp_path)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bulkpix", "run", str(job), "--dask", cluster.scheduler.address,
        "--quiet", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    done = tmp_path / "out.zarr" / ".bulkpix" / "done"
    await _wait_for_file_markers(done, 8, process)
    process.kill()
    await process.wait()
    code, _, err = await _bulkpix("run", str(job), "--dask", cluster.scheduler.address)
    assert code == 0, err
    _assert_synthetic(tmp_path / "out.zarr")
    row = re.search(r"src\s*│\s*64/64\s*│\s*(\d+)\s*│", err)
    assert row is not None, err
    assert int(row.group(1)) < 64  # the first run's tiles were not fetched again


async def test_a_stop_ends_the_cluster_run_and_a_rerun_off_the_cluster_finishes(
    cluster: Any, tmp_path: Path
) -> None:
    cap, qps = CAP, QPS
    config = _quota_emulator()
    output = tmp_path / "out.zarr"
    async with run_emulator(config) as emu:
        job = _job(emu.url, output, concurrency=cap, qps=qps)
        stop = asyncio.Event()
        run = asyncio.create_task(run_job(job, dask_client=cluster, stop=stop))
        await _wait_for_markers(output, 8, run)
        stop.set()  # Ctrl-C on the submitting client
        first = await run
        first_calls = len(_pixel_calls(emu.log))
        second = await run_job(job)  # off the cluster
        second_calls = len(_pixel_calls(emu.log)) - first_calls
    assert first.interrupted and not first.ok
    assert 8 <= first.finished < first.total
    assert second.ok and second.finished == second.total
    # The rerun fetched exactly the tiles the stopped run had not recorded.
    assert second_calls == second.total - first.finished
    _assert_synthetic(output)


async def test_the_api_takes_a_scheduler_address_and_reports_each_worker(
    cluster: Any, tmp_path: Path
) -> None:
    import bulkpix

    config = EmulatorConfig(synthetic={ASSET: SyntheticAsset(width=SIDE, height=SIDE)})
    async with run_emulator(config) as emu:
        job = _job(emu.url, tmp_path / "out.zarr", concurrency=8)
        drawn = io.StringIO()
        console = Console(file=drawn, force_terminal=True, width=160)
        summary = await bulkpix.arun(
            job, dask=cluster.scheduler.address, progress=True, console=console
        )
        again = await bulkpix.arun(job, dask=cluster, progress=False)  # nothing left to do
        calls = _pixel_calls(emu.log)
    assert again.complete and again.finished == 64 and again.items[0].fetched == 0
    assert len(calls) == 64
    assert summary.complete and summary.finished == 64
    assert {w.address for w in summary.workers} <= set(
        (await cluster.scheduler.identity())["workers"]
    )
    assert sum(w.tiles for w in summary.workers) == 64
    assert sum(w.bytes for w in summary.workers) == summary.bytes > 0
    # The live bars on the submitting client: the total, and each worker as it reports.
    text = drawn.getvalue()
    assert "total" in text and "64/64" in text
    assert any(w.address in text for w in summary.workers), text[-2000:]
    _assert_synthetic(tmp_path / "out.zarr")


async def test_a_mosaic_and_a_time_cube_run_on_the_cluster_bit_exact(
    cluster: Any, tmp_path: Path
) -> None:
    """Collections run distributed too: a mosaic across two UTM zones, and a 5-date cube,
    each equal to its whole-grid reference."""
    from tests import test_collections, test_cube

    mosaic_job = test_collections._mosaic_job(tmp_path, "mosaic.zarr", mosaic="last")
    stats = await run_job(mosaic_job, dask_client=cluster)
    assert stats.ok and len(stats.workers) >= 1
    got = test_collections._read(tmp_path / "mosaic.zarr")
    for band, want in test_collections._reference(mosaic_job, "last").items():
        np.testing.assert_array_equal(got[band], want)

    cube_dir = tmp_path / "cube"
    cube_dir.mkdir()
    stats = await run_job(test_cube._job(cube_dir, test_cube.FIVE_DAYS), dask_client=cluster)
    assert stats.ok and stats.finished == stats.total
    test_cube._check_against_references(cube_dir / "out.zarr", test_cube.FIVE_DAYS, by_day=False)


async def test_a_batch_with_a_computed_image_runs_on_the_cluster(
    cluster: Any, data: dict[str, Any], tmp_path: Path  # noqa: F811
) -> None:
    """A batch of two items, one of them computed (an NDVI expression), in one cluster run."""
    from tests.test_computed import job as computed_job
    from tests.test_computed import read
    from tests.test_emulator_compute import NDVI, S2, ndvi_reference

    async with run_emulator(EmulatorConfig(assets=data["assets"])) as emu:
        keys = computed_job(tmp_path / "batch.zarr", emu.url, NDVI)
        keys.pop("expression")
        keys["items"] = [{"name": "ndvi", "expression": NDVI}, {"name": "raw", "asset": S2}]
        stats = await run_job(parse_job(keys), dask_client=cluster)
    assert stats.ok and stats.finished == stats.total == 8
    np.testing.assert_array_equal(read(tmp_path / "batch.zarr" / "ndvi")["nd"],
                                  ndvi_reference(data["s2"]))
    raw = read(tmp_path / "batch.zarr" / "raw")
    np.testing.assert_array_equal(raw["B4"], data["s2"][0])
    np.testing.assert_array_equal(raw["B8"], data["s2"][1])
