"""The output's lease: one writer job at a time, shared by runs of the same job, named when
it refuses, taken over when stale, and a run that lost it stops before its next marker."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import LocalStore, MemoryStore

from bulkpix.cli import main
from bulkpix.emulator import SyntheticAsset
from bulkpix.emulator.synthetic import synthetic_pixels
from bulkpix.errors import LeaseLost, OutputInUse
from bulkpix.store.lease import LEASE_KEY, LEASE_LOCK_KEY, Lease, LeaseInfo, read_lease
from bulkpix.store.output import OutputKind, inspect_output
from bulkpix.store.record import TileRecord
from tests.conftest import emulator_thread, loop_now, run_virtual, write_job

ASSET = "projects/demo/assets/synth"
SYNTH = SyntheticAsset(width=4000, height=4000)


async def _put_lease(store: Any, **fields: Any) -> None:
    info = {
        "run_id": "other",
        "job": "another-job",
        "exclusive": False,
        "host": "elsewhere",
        "pid": 4242,
        "since": "2026-01-01T00:00:00+00:00",
        "expires": time.time() + 60,
        **fields,
    }
    buffer = default_buffer_prototype().buffer.from_bytes(json.dumps(info).encode())
    await store.set(LEASE_KEY, buffer)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_another_job_is_refused_with_the_holder_named() -> None:
    async def go() -> None:
        store = MemoryStore()
        async with Lease(store, "job-a", output="out.zarr") as held:
            for other in (
                Lease(store, "job-b", output="out.zarr"),
                Lease(store, "job-a", exclusive=True, output="out.zarr"),  # a --restart
            ):
                with pytest.raises(OutputInUse) as caught:
                    await other.acquire()
                message = str(caught.value)
                assert f"host {socket.gethostname()}" in message
                assert f"pid {os.getpid()}" in message and f"since {held.since}" in message
            _, info = await read_lease(store)
            assert info is not None and info.run_id == held.run_id
        # Released on exit: the next job takes it at once.
        assert await read_lease(store) == (False, None)
        async with Lease(store, "job-b"):
            pass

    asyncio.run(go())


def test_runs_of_the_same_job_share_the_lease() -> None:
    async def go() -> None:
        store = MemoryStore()
        async with Lease(store, "job-a") as first, Lease(store, "job-a") as second:
            assert not first.joined and second.joined
            first.check()
            second.check()
            await first.renew()
            await second.renew()
            first.check()
            second.check()
        # Whoever renewed last released it; the other run found it shared, not lost.
        assert await read_lease(store) == (False, None)

    asyncio.run(go())


@pytest.mark.parametrize(
    "stale",
    [
        {"expires": time.time() - 1},  # expired
        {"host": socket.gethostname(), "pid": "DEAD"},  # its process is gone
        {"broken": True},  # torn: not JSON
    ],
    ids=["expired", "dead-pid", "torn"],
)
def test_a_stale_lease_is_taken_over(stale: dict[str, Any]) -> None:
    store = MemoryStore()
    if stale.get("broken"):
        asyncio.run(store.set(LEASE_KEY, default_buffer_prototype().buffer.from_bytes(b'{"run')))
    else:
        if stale.get("pid") == "DEAD":
            stale = {**stale, "pid": _dead_pid()}
        asyncio.run(_put_lease(store, **stale))

    async def go() -> None:
        async with Lease(store, "job-b", exclusive=True) as lease:
            _, info = await read_lease(store)
            assert info is not None and info.run_id == lease.run_id

    asyncio.run(go())


def test_a_run_that_lost_its_lease_writes_no_more_markers() -> None:
    async def go() -> None:
        store = MemoryStore()
        lease = Lease(store, "job-a")
        await lease.acquire()
        record = TileRecord(store, "", guard=lease.check)
        await record.mark_done("g0_r0_c0_h16_w16")
        # Another job takes the output (say this run was paused past its expiry).
        await _put_lease(store, job="job-b", host="elsewhere")
        await lease.renew()
        with pytest.raises(LeaseLost, match="lost its lease to a run on host elsewhere"):
            await record.mark_done("g0_r0_c16_h16_w16")
        assert await record.done_keys() == {"g0_r0_c0_h16_w16"}
        await lease.release()  # not its lease any more: left alone
        _, info = await read_lease(store)
        assert info is not None and info.job == "job-b"

    asyncio.run(go())


def test_the_lease_is_renewed_while_the_run_lives_and_lost_when_renewals_fail() -> None:
    async def go() -> None:
        store = MemoryStore()
        async with Lease(store, "job-a", ttl_s=60, clock=loop_now, monotonic=loop_now) as lease:
            await asyncio.sleep(600)  # ten virtual minutes: forty renewals
            _, info = await read_lease(store)
            assert info is not None and info.expires > loop_now() + 30
            lease.check()

            async def failing_set(*args: Any) -> None:
                raise OSError("the store went away")

            store.set = failing_set  # type: ignore[method-assign]
            # The last renewal was at most ttl / 4 ago: the lease holds for 45 s more.
            await asyncio.sleep(40)
            lease.check()  # renewals failing, but not yet for a whole ttl
            await asyncio.sleep(21)
            with pytest.raises(LeaseLost, match="could not be renewed"):
                lease.check()
            del store.set

    run_virtual(go)


def test_a_shared_lease_stays_while_another_run_of_the_job_still_writes() -> None:
    store = MemoryStore()

    def lease(job: str, **more: Any) -> Lease:
        return Lease(store, job, clock=loop_now, monotonic=loop_now, ttl_s=60, **more)

    async def go() -> None:
        first, second = lease("job-a"), lease("job-a")
        async with first:
            async with second:
                assert second.joined
                await asyncio.sleep(30)  # both renew
            # The run that renewed last has ended; the first still writes.
            for other in (lease("job-b"), lease("job-c", exclusive=True)):
                with pytest.raises(OutputInUse):
                    await other.acquire()
            await asyncio.sleep(600)  # its renewals carry the lease on, as its own
            first.check()
            _, info = await read_lease(store)
            assert info is not None and [h.run_id for h in info.holders] == [first.run_id]
            with pytest.raises(OutputInUse):
                await lease("job-b", exclusive=True).acquire()
            # A run that stopped renewing (killed) holds it no longer once it expired.
            killed = lease("job-a")
            await killed.acquire()
            await asyncio.sleep(120)
            first.check()
        assert await read_lease(store) == (False, None)  # the last holder deleted it
        async with lease("job-b", exclusive=True):
            pass

    run_virtual(go)


def test_a_holder_whose_process_is_gone_does_not_hide_a_live_one() -> None:
    async def go() -> None:
        store = MemoryStore()
        now = time.time()
        dead = {"run_id": "dead", "host": socket.gethostname(), "pid": _dead_pid()}
        live = {"run_id": "live", "host": "elsewhere", "pid": 4242}
        holders = [
            {**h, "since": "2026-01-01T00:00:00+00:00", "expires": now + 60} for h in (dead, live)
        ]
        # The run that renewed last is gone on this host; the other still runs elsewhere.
        await _put_lease(store, **dead, job="job-a", holders=holders)
        with pytest.raises(OutputInUse):
            await Lease(store, "job-b", exclusive=True).acquire()
        async with Lease(store, "job-a") as joined:
            _, info = await read_lease(store)
            assert info is not None
            assert {h.run_id for h in info.holders} == {joined.run_id, "live"}
        _, info = await read_lease(store)
        assert info is not None and [h.run_id for h in info.holders] == ["live"]

    asyncio.run(go())


def test_lease_document_round_trips() -> None:
    info = LeaseInfo("r", "j", True, "h", 1, "s", 12.5)
    assert LeaseInfo.from_json(info.to_json()) == info
    assert LeaseInfo.from_json(b"[]") is None


# ----------------------------------------------------------------------------- the race


def _race_keys(url: str, output: Path, bbox: list[int]) -> dict[str, Any]:
    return {
        "asset": ASSET,
        "output": str(output),
        "endpoint": url,
        "credentials": "none",
        "bands": ["u16"],
        "region": {"bbox": bbox, "region_crs": "EPSG:32633"},
        "chunk": 128,
        "tile": [128, 128],
        "concurrency": 2,
    }


def test_a_restart_of_another_job_is_refused_while_a_run_writes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's race: job A running against a slow server; job B, --restart with another
    region, on the same output. B is refused naming A; A finishes bit-exact."""
    output = tmp_path / "out.zarr"
    # 640 x 640 px: 25 tiles, two at a time at 0.15 s each, about 2 s of run.
    bbox_a = [602000, 5181280, 608400, 5187680]
    bbox_b = [620000, 5165000, 625120, 5170120]
    with emulator_thread(synthetic={ASSET: SYNTH}, service_base_s=0.15) as emu:
        job_a = write_job(tmp_path / "a.yaml", **_race_keys(emu.url, output, bbox_a))
        job_b = write_job(tmp_path / "b.yaml", **_race_keys(emu.url, output, bbox_b))
        proc = subprocess.Popen(
            [sys.executable, "-m", "bulkpix", "run", "--quiet", str(job_a)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 60
            # A new output's first tiles are requested while it is made: A holds the output
            # once its lease is written, and is writing once a tile is done.
            done = output / ".bulkpix" / "done"
            while not ((output / LEASE_KEY).exists() and done.is_dir() and any(done.iterdir())):
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline
                time.sleep(0.01)  # waiting for A to be writing: the moment the race needs
            capsys.readouterr()
            assert main(["run", "--quiet", "--restart", str(job_b)]) == 2
            err = capsys.readouterr().err
            assert "in use by a run on host" in err and f"pid {proc.pid}" in err
            assert proc.poll() is None, "B was refused while A still ran"
            assert proc.wait(60) == 0
        finally:
            proc.kill()
        requests_a = sum(1 for r in emu.log if r["op"] == "get_pixels")
    assert requests_a == 25  # B fetched nothing
    rows = np.arange(1232, 1232 + 640)
    cols = np.arange(200, 200 + 640)
    root = zarr.open_group(output, mode="r")
    np.testing.assert_array_equal(root["u16"][:], synthetic_pixels(2, rows, cols))
    assert len(list((output / ".bulkpix" / "done").iterdir())) == 25
    assert main(["status", str(output)]) == 0
    # Once A is done the output is free: B's --restart goes through.
    with emulator_thread(synthetic={ASSET: SYNTH}) as emu:
        job_b = write_job(tmp_path / "b.yaml", **_race_keys(emu.url, output, bbox_b))
        assert main(["run", "--quiet", "--restart", str(job_b)]) == 0


def test_a_run_whose_lease_is_taken_stops_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import bulkpix.store.lease as lease_module

    # Renewed every second; a tile takes 0.8 s, so each of the two workers finishes at most
    # two tiles between the theft and the renewal that finds it.
    monkeypatch.setattr(lease_module, "DEFAULT_TTL_S", 4.0)
    output = tmp_path / "out.zarr"
    bbox = [602000, 5181280, 608400, 5187680]
    with emulator_thread(synthetic={ASSET: SYNTH}, service_base_s=0.8) as emu:
        job = write_job(tmp_path / "a.yaml", **_race_keys(emu.url, output, bbox))
        done = output / ".bulkpix" / "done"
        lease_path = output / LEASE_KEY
        taken_with = 0

        def take_it_when_two_tiles_are_done() -> None:
            nonlocal taken_with
            deadline = time.monotonic() + 60
            while not (done.is_dir() and len(list(done.iterdir())) >= 2):
                assert time.monotonic() < deadline
                time.sleep(0.005)  # polling for the moment to take the lease
            document = json.loads(lease_path.read_text())
            document.update(job="someone-else", run_id="x", host="elsewhere", pid=1)
            document["expires"] = time.time() + 60
            (output / "lease.tmp").write_text(json.dumps(document))
            os.replace(output / "lease.tmp", lease_path)  # whole, as a store writes it
            taken_with = len(list(done.iterdir()))

        thief = threading.Thread(target=take_it_when_two_tiles_are_done)
        thief.start()
        capsys.readouterr()
        try:
            assert main(["run", "--quiet", str(job)]) == 1
        finally:
            thief.join(60)
    err = capsys.readouterr().err
    assert "lost its lease to a run on host elsewhere" in err and "Traceback" not in err
    # Stopped within one renewal of the theft: at most two tiles more for each worker, far
    # from the 25 the job has.
    assert len(list(done.iterdir())) <= taken_with + 4
    assert json.loads(lease_path.read_text())["job"] == "someone-else"


def test_two_processes_of_the_same_job_share_the_output(tmp_path: Path) -> None:
    """Cooperating runs of one job (what the Dask issue needs) are not refused."""
    output = tmp_path / "out.zarr"
    bbox = [602000, 5181280, 608400, 5187680]
    with emulator_thread(synthetic={ASSET: SYNTH}, service_base_s=0.05) as emu:
        job = write_job(tmp_path / "a.yaml", **_race_keys(emu.url, output, bbox))
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "bulkpix", "run", "--quiet", str(job)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for _ in range(2)
        ]
        try:
            results = [
                (proc.wait(60), proc.stderr.read() if proc.stderr else b"") for proc in procs
            ]
        finally:
            for proc in procs:
                proc.kill()
    assert [code for code, _ in results] == [0, 0], results
    root = zarr.open_group(output, mode="r")
    rows, cols = np.arange(1232, 1232 + 640), np.arange(200, 200 + 640)
    np.testing.assert_array_equal(root["u16"][:], synthetic_pixels(2, rows, cols))
    assert len(list((output / ".bulkpix" / "done").iterdir())) == 25
    lease_path = output / LEASE_KEY
    # The last one out released it.
    assert not lease_path.exists(), lease_path.read_text()


def test_a_run_that_lost_its_lease_stores_no_more_chunks() -> None:
    from bulkpix.store.checksum import ChecksumStore

    async def go() -> None:
        store = MemoryStore()
        lease = Lease(store, "job-a")
        await lease.acquire()
        chunks = ChecksumStore(store, guard=lease.check)
        chunks.track(["B4"])
        data = default_buffer_prototype().buffer.from_bytes(b"chunk")
        await chunks.set("B4/c/0/0", data)
        await _put_lease(store, job="job-b")
        await lease.renew()
        with pytest.raises(LeaseLost):
            await chunks.set("B4/c/0/1", data)
        assert await store.get("B4/c/0/1", prototype=default_buffer_prototype()) is None
        assert chunks.take(["B4/c/0/0", "B4/c/0/1"]) == {"B4/c/0/0": 0x4A6B8E44}  # crc32c(b"chunk")

    asyncio.run(go())


def test_two_runs_creating_the_lease_at_once_on_a_check_then_put_store() -> None:
    """fsspec object stores create-if-absent by checking, then putting: both runs may put.
    Reading back only after the settling time, both read the same winner."""

    class CheckThenPut(MemoryStore):
        async def set_if_not_exists(self, key: str, value: Any) -> None:
            if not await self.exists(key):
                await asyncio.sleep(0.1)  # the request's latency: the other run checks too
                await self.set(key, value)

    async def go() -> None:
        store = CheckThenPut()
        runs = [Lease(store, f"job-{name}", settle_s=1.0) for name in "ab"]
        outcomes = await asyncio.gather(*(run.acquire() for run in runs), return_exceptions=True)
        assert sorted(type(o).__name__ for o in outcomes) == ["NoneType", "OutputInUse"]
        _, info = await read_lease(store)
        winner = runs[outcomes.index(None)]
        assert info is not None and info.run_id == winner.run_id

    run_virtual(go)


# ------------------------------------------------------------- races on a local disk


def _first_read_waits(lease: Lease, until: Callable[[], Awaitable[Any]]) -> asyncio.Event:
    """``lease``'s first read of the document returns only once ``until()`` has: its read and
    the write it makes from it then straddle whatever ``until`` lets the other run do. The
    event is set once that read is made."""
    real = lease._read
    read = asyncio.Event()

    async def read_then_wait() -> Any:
        found = await real()
        if not read.is_set():
            read.set()
            await until()
        return found

    lease._read = read_then_wait  # type: ignore[method-assign]
    return read


def test_two_holders_releasing_at_once_on_a_local_disk_leave_no_lease(tmp_path: Path) -> None:
    """The flaky two-process test's cause: both read the same two holders, and each wrote
    the other back, so a lease naming a run that had ended stayed behind."""

    async def go() -> None:
        store = LocalStore(tmp_path)
        first, second = Lease(store, "job-a"), Lease(store, "job-a")
        await first.acquire()
        await second.acquire()
        both_read = asyncio.Barrier(2)
        for lease in (first, second):
            _first_read_waits(lease, both_read.wait)
        await asyncio.gather(first.release(), second.release())
        assert await read_lease(store) == (False, None)

    asyncio.run(go())


def test_two_holders_renewing_at_once_on_a_local_disk_both_stay_renewed(tmp_path: Path) -> None:
    async def go() -> None:
        store = LocalStore(tmp_path)
        now = [1000.0]
        first, second = (Lease(store, "job-a", clock=lambda: now[0], ttl_s=60) for _ in "ab")
        await first.acquire()
        await second.acquire()
        now[0] = 1030.0
        both_read = asyncio.Barrier(2)
        for lease in (first, second):
            _first_read_waits(lease, both_read.wait)
        await asyncio.gather(first.renew(), second.renew())
        _, info = await read_lease(store)
        assert info is not None
        # Neither renewal wrote over the other's: both hold until 1030 + 60.
        assert {h.run_id: h.expires for h in info.holders} == {
            first.run_id: 1090.0,
            second.run_id: 1090.0,
        }

    asyncio.run(go())


def test_a_stale_lease_taken_over_at_once_on_a_local_disk_goes_to_one_run(
    tmp_path: Path,
) -> None:
    async def go() -> None:
        store = LocalStore(tmp_path)
        await _put_lease(store, expires=time.time() - 1)
        late = Lease(store, "job-b", exclusive=True)
        early = Lease(store, "job-c", exclusive=True)
        taken = asyncio.Event()
        late_read = _first_read_waits(late, taken.wait)
        late_acquiring = asyncio.create_task(late.acquire())
        await late_read.wait()  # the late run saw the stale lease too
        await early.acquire()
        taken.set()
        with pytest.raises(OutputInUse, match="in use by an exclusive run"):
            await late_acquiring
        _, info = await read_lease(store)
        assert info is not None and info.run_id == early.run_id

    asyncio.run(go())


def test_a_run_joining_as_the_last_holder_releases_on_a_local_disk_keeps_it(
    tmp_path: Path,
) -> None:
    async def go() -> None:
        store = LocalStore(tmp_path)
        leaving, joining = Lease(store, "job-a"), Lease(store, "job-a")
        await leaving.acquire()
        joined = asyncio.Event()
        _first_read_waits(leaving, joined.wait)
        releasing = asyncio.create_task(leaving.release())
        await joining.acquire()  # while the leaving run holds what it read: itself alone
        joined.set()
        await releasing
        _, info = await read_lease(store)
        assert info is not None and [h.run_id for h in info.holders] == [joining.run_id]

    asyncio.run(go())


def test_the_lease_lock_file_is_bulkpixs(tmp_path: Path) -> None:
    from bulkpix.store.output import _remove_if_no_files

    # What a run leaves when it was refused after taking the lease: the lock file alone, or
    # with a bare root group.
    lone = tmp_path / "lone.zarr"
    (lone / LEASE_LOCK_KEY).parent.mkdir(parents=True)
    (lone / LEASE_LOCK_KEY).touch()
    assert asyncio.run(inspect_output(str(lone))).kind is OutputKind.EMPTY
    zarr.open_group(lone, mode="w")
    (lone / LEASE_LOCK_KEY).parent.mkdir()
    (lone / LEASE_LOCK_KEY).touch()
    assert asyncio.run(inspect_output(str(lone))).kind is OutputKind.EMPTY
    (lone / "zarr.json").unlink()
    _remove_if_no_files(lone)  # a directory the refused run made goes, lock file and all
    assert not lone.exists()

    output = tmp_path / "out.zarr"
    bbox = [602000, 5185120, 604560, 5187680]  # 4 tiles
    with emulator_thread(synthetic={ASSET: SYNTH}) as emu:
        job = write_job(tmp_path / "a.yaml", **_race_keys(emu.url, output, bbox))
        assert main(["run", "--quiet", str(job)]) == 0
        assert (output / LEASE_LOCK_KEY).is_file() and not (output / LEASE_KEY).exists()
        assert asyncio.run(inspect_output(str(output))).kind is OutputKind.SINGLE
        assert main(["run", "--quiet", str(job)]) == 0  # resumed: nothing left to do
        assert main(["run", "--quiet", "--restart", str(job)]) == 0
        assert main(["verify", str(output)]) == 0
    assert len(list((output / ".bulkpix" / "done").iterdir())) == 4
