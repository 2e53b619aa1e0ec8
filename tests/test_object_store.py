"""Outputs on S3 (obstore through zarr's ObjectStore), against a moto server on 127.0.0.1.

The server is configured the way a user points bulkpix at MinIO: environment variables only.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("obstore")
pytest.importorskip("moto.server")
pytest.importorskip("s3fs")

from bulkpix.cli import main
from bulkpix.emulator import SyntheticAsset
from bulkpix.geometry.tiling import parse_tile_key
from tests.conftest import emulator_thread, local_cluster, write_job
from tests.s3_server import S3Server

ASSET = "projects/demo/assets/synth"
SYNTH = SyntheticAsset(width=4000, height=4000)
CONCURRENCY = 4
TILES = 48
# The region's origin in the asset's pixels (602000 E, 5187680 N): emulator log windows.
ORIGIN = (int((5200000 - 5187680) / 10), int((602000 - 600000) / 10))
RESUME_TAG = "resume"


def _job_keys(url: str, output: str, **more: Any) -> dict[str, Any]:
    return {
        "asset": ASSET,
        "output": output,
        "endpoint": url,
        "credentials": "none",
        # 1024 x 768 px of the asset, in 48 tiles of 128 x 128, one chunk each: few objects
        # (moto serves from this process, under its GIL).
        "region": {"bbox": [602000, 5180000, 612240, 5187680], "region_crs": "EPSG:32633"},
        "bands": ["u8", "f32"],
        "chunk": 128,
        "tile": [128, 128],
        "concurrency": CONCURRENCY,
        **more,
    }


@pytest.fixture(scope="module")
def server() -> Iterator[S3Server]:
    """The server, with this process's (and its children's) environment pointing at it, as
    a user points bulkpix at MinIO."""
    with pytest.MonkeyPatch.context() as env:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
            env.delenv(name, raising=False)
        s3 = S3Server().start()
        for name, value in s3.env().items():
            env.setenv(name, value)
        try:
            yield s3
        finally:
            s3.stop()


@pytest.fixture
def s3(server: S3Server) -> S3Server:
    return server


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The job's output written to a local path: what every S3 output must equal."""
    tmp = tmp_path_factory.mktemp("reference")
    with emulator_thread(synthetic={ASSET: SYNTH}) as emu:
        job = write_job(tmp / "ref.yaml", **_job_keys(emu.url, str(tmp / "reference.zarr")))
        assert main(["run", "--quiet", str(job)]) == 0
    return tmp / "reference.zarr"


@pytest.fixture(scope="module")
def finished(
    server: S3Server, reference: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, str]:
    """(bucket, URL) of the job's output written to S3 in one uninterrupted run."""
    tmp = tmp_path_factory.mktemp("finished")
    bucket = server.new_bucket()
    url = f"s3://{bucket}/out.zarr"
    with emulator_thread(synthetic={ASSET: SYNTH}) as emu:
        job = write_job(tmp / "s3.yaml", **_job_keys(emu.url, url))
        assert main(["run", "--quiet", str(job)]) == 0
    return bucket, url


def _files(root: Path) -> dict[str, bytes]:
    """Every stored object of a local output but the record, by key."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".bulkpix" not in p.relative_to(root).parts
    }


def _objects(s3: S3Server, bucket: str, prefix: str) -> dict[str, bytes]:
    return {
        key: data
        for key, data in s3.objects(bucket, prefix).items()
        if not key.startswith(".bulkpix/")
    }


def _done_markers(s3: S3Server, bucket: str, prefix: str) -> list[str]:
    return s3.keys(bucket, f"{prefix}.bulkpix/done/")


def _windows(markers: list[str]) -> set[tuple[int, int, int, int]]:
    windows = set()
    for marker in markers:
        w = parse_tile_key(marker).window
        windows.add((ORIGIN[0] + w.row_off, ORIGIN[1] + w.col_off, w.height, w.width))
    return windows


def _pixel_windows(records: list[dict[str, Any]]) -> list[tuple[int, int, int, int]]:
    return [
        (r["row_off"], r["col_off"], r["height"], r["width"])
        for r in records
        if r["op"] == "get_pixels"
    ]


def _spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bulkpix", "run", "--quiet", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


# --------------------------------------------------------------------------- resume


@pytest.mark.parametrize("how", ["sigint", "sigkill"])
def test_interrupted_s3_job_resumes_bit_exact_from_a_fresh_process(
    tmp_path: Path,
    s3: S3Server,
    reference: Path,
    how: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bucket = s3.new_bucket()
    url = f"s3://{bucket}/out.zarr"
    # Slow enough answers that the run is still going when the markers are seen.
    with emulator_thread(synthetic={ASSET: SYNTH}, service_base_s=0.05) as emu:
        job = write_job(tmp_path / "s3.yaml", **_job_keys(emu.url, url))
        start = len(emu.log)
        proc = _spawn(str(job))
        deadline = time.monotonic() + 60
        # Interrupt once some tiles are recorded in the store (the markers, not a sleep).
        while len(_done_markers(s3, bucket, "out.zarr/")) < 8:
            assert proc.poll() is None, proc.communicate()[1].decode()
            assert time.monotonic() < deadline, "the run recorded no tiles"
        proc.send_signal(signal.SIGINT if how == "sigint" else signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        if how == "sigint":
            assert proc.returncode == 130, err.decode()
        done_before = _done_markers(s3, bucket, "out.zarr/")
        assert 8 <= len(done_before) < TILES

        capsys.readouterr()
        assert main(["status", url]) == 1  # incomplete
        assert "out.zarr" in capsys.readouterr().out

        resume_start = len(emu.log)
        resumed = _spawn("--workload-tag", RESUME_TAG, str(job))
        _, err = resumed.communicate(timeout=90)
        assert resumed.returncode == 0, err.decode()
        later = emu.log[resume_start:]
        first = _pixel_windows(emu.log[start:resume_start])
        first += _pixel_windows([r for r in later if r.get("workload_tag") != RESUME_TAG])
        second = _pixel_windows([r for r in later if r.get("workload_tag") == RESUME_TAG])

    assert _objects(s3, bucket, "out.zarr/") == _files(reference)
    # No finished tile is fetched again; only the tiles in flight at the kill are.
    assert not set(second) & _windows(done_before)
    assert len(second) == len(set(second)) == TILES - len(done_before)
    assert len(set(first) & set(second)) <= (0 if how == "sigint" else CONCURRENCY)
    assert main(["status", url]) == 0


# --------------------------------------------------------------------------- reading back


def test_s3_output_is_bit_exact_and_opens_in_xarray_with_its_crs(
    tmp_path: Path, s3: S3Server, reference: Path, finished: tuple[str, str]
) -> None:
    import rasterio
    import xarray as xr

    import bulkpix

    bucket, url = finished
    assert _objects(s3, bucket, "out.zarr/") == _files(reference)
    local = bulkpix.open(reference)
    # xarray through s3fs, as a user without bulkpix would read it ...
    ds = xr.open_zarr(url, storage_options=s3.storage_options(), decode_coords="all")
    # ... and bulkpix.open with the same options.
    opened = bulkpix.open(url, storage_options=s3.storage_options())
    assert opened.rio.crs == local.rio.crs and opened.rio.crs.to_epsg() == 32633
    assert opened.rio.transform() == local.rio.transform()
    assert list(opened.data_vars) == list(local.data_vars)
    for band in local.data_vars:
        np.testing.assert_array_equal(ds[band].values, local[band].values)
        np.testing.assert_array_equal(opened[band].values, local[band].values)

    # export reads the S3 output through obstore, as the run wrote it.
    assert main(["export", "--bands", "f32", url, str(tmp_path / "s3.tif")]) == 0
    assert main(["export", "--bands", "f32", str(reference), str(tmp_path / "ref.tif")]) == 0
    with rasterio.open(tmp_path / "s3.tif") as got, rasterio.open(tmp_path / "ref.tif") as want:
        assert got.crs == want.crs and got.transform == want.transform
        np.testing.assert_array_equal(got.read(), want.read())


def test_status_and_verify_on_an_s3_output(
    s3: S3Server, finished: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    bucket, url = finished
    capsys.readouterr()
    assert main(["status", url]) == 0
    assert main(["verify", url]) == 0
    assert "48" in capsys.readouterr().out
    # A chunk changed behind bulkpix's back: verify finds it.
    chunk = next(k for k in s3.keys(bucket, "out.zarr/") if "/c/" in k)
    key = f"out.zarr/{chunk}"
    original = s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    s3.client().put_object(Bucket=bucket, Key=key, Body=b"not a chunk")
    try:
        assert main(["verify", url]) == 1
        assert chunk.split("/")[0] in capsys.readouterr().out
    finally:
        s3.client().put_object(Bucket=bucket, Key=key, Body=original)
    assert main(["verify", url]) == 0


def test_bad_s3_output_is_one_line(
    tmp_path: Path, s3: S3Server, capsys: pytest.CaptureFixture[str]
) -> None:
    with emulator_thread(synthetic={ASSET: SYNTH}) as emu:
        job = write_job(
            tmp_path / "s3.yaml", **_job_keys(emu.url, "s3://no-such-bucket-here/out.zarr")
        )
        capsys.readouterr()
        assert main(["run", "--quiet", str(job)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bulkpix: error:"), err
    assert "Traceback" not in err and s3.env()["AWS_SECRET_ACCESS_KEY"] not in err


def test_missing_obstore_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from bulkpix.errors import StoreError
    from bulkpix.store.zarr_store import open_store

    monkeypatch.setitem(sys.modules, "obstore.store", None)
    with pytest.raises(StoreError, match=r"pip install 'bulkpix\[cloud\]'"):
        asyncio.run(open_store("s3://bucket/out.zarr"))


# --------------------------------------------------------------------------- the loop rule


def _s3fs_store(s3: S3Server, url: str, **more: Any) -> Any:
    from zarr.storage import FsspecStore

    # A new filesystem: fsspec's cached one may hold a session on an earlier test's loop.
    options = {**s3.storage_options(), "skip_instance_cache": True, **more}
    return FsspecStore.from_url(url, storage_options=options)


def test_loop_bound_s3fs_store_writes_from_the_pipeline(
    tmp_path: Path, s3: S3Server, reference: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """s3fs's store holds an aiohttp session on the loop that made it: its chunk writes run
    on the run's own loop (WriteLoop(store)), and the output is bit-exact."""
    from bulkpix.store import output, write_loop

    bucket = s3.new_bucket()
    url = f"s3://{bucket}/out.zarr"

    real_open_store = output.open_store

    async def s3fs_store(url: str, *, read_only: bool = False) -> Any:
        if url.startswith("s3://"):
            return _s3fs_store(s3, url)
        return await real_open_store(url, read_only=read_only)

    monkeypatch.setattr(output, "open_store", s3fs_store)
    assert not write_loop.second_loop_safe(_s3fs_store(s3, url))
    with emulator_thread(synthetic={ASSET: SYNTH}) as emu:
        job = write_job(tmp_path / "s3.yaml", **_job_keys(emu.url, url))
        assert main(["run", "--quiet", str(job)]) == 0
    assert _objects(s3, bucket, "out.zarr/") == _files(reference)


async def test_which_stores_may_be_written_from_a_second_loop(tmp_path: Path) -> None:
    from zarr.storage import FsspecStore, LocalStore, MemoryStore

    from bulkpix.store.checksum import ChecksumStore
    from bulkpix.store.write_loop import second_loop_safe

    local = await LocalStore.open(str(tmp_path / "out.zarr"))
    in_memory = FsspecStore.from_url("memory://bulkpix-loop-test/out.zarr")  # sync fs: threads
    for store in (local, MemoryStore(), in_memory):
        assert second_loop_safe(store) and second_loop_safe(ChecksumStore(store))


async def test_s3fs_store_breaks_on_a_second_loop_and_obstore_does_not(s3: S3Server) -> None:
    """Why the loop rule exists: the same writes, from the write loop's thread."""
    from zarr.core.buffer import default_buffer_prototype

    from bulkpix.store.checksum import ChecksumStore
    from bulkpix.store.write_loop import WriteLoop, second_loop_safe
    from bulkpix.store.zarr_store import open_store

    bucket = s3.new_bucket()
    data = default_buffer_prototype().buffer.from_bytes(b"chunk")
    obstore_store = await open_store(f"s3://{bucket}/a.zarr")
    # One attempt: botocore would retry the failing call with back-off first.
    s3fs_store = _s3fs_store(
        s3, f"s3://{bucket}/b.zarr", config_kwargs={"retries": {"max_attempts": 1}}
    )
    assert second_loop_safe(ChecksumStore(obstore_store))
    assert not second_loop_safe(ChecksumStore(s3fs_store))
    for store in (obstore_store, s3fs_store):
        await store.set("marker", data)  # on this loop first, as the record does

    async with WriteLoop() as forced:  # a second loop whatever the store
        await forced.run(obstore_store.set("chunk", data))
        with pytest.raises(Exception):  # noqa: B017  (aiohttp's, via botocore: any will do)
            await asyncio.wait_for(forced.run(s3fs_store.set("chunk", data)), 30)
    async with WriteLoop(ChecksumStore(s3fs_store)) as chosen:
        assert not chosen.second_loop
        await chosen.run(s3fs_store.set("chunk", data))
    assert sorted(s3.keys(bucket)) == ["a.zarr/chunk", "a.zarr/marker", "b.zarr/chunk",
                                       "b.zarr/marker"]


# --------------------------------------------------------------------------- the lease


async def test_racing_runs_create_the_s3_lease_once(s3: S3Server) -> None:
    """Several runs of different jobs find no lease and create it at the same instant: the
    conditional PUT lets exactly one win; the others are told who holds it."""
    from zarr.storage import WrapperStore

    from bulkpix.errors import OutputInUse
    from bulkpix.store.lease import Lease, read_lease
    from bulkpix.store.zarr_store import open_store

    bucket = s3.new_bucket()
    url = f"s3://{bucket}/out.zarr"
    runs = 6
    arrived = 0
    all_there = asyncio.Event()

    class Together(WrapperStore[Any]):
        """Holds each run's create until every run has found no lease and got there."""

        async def set_if_not_exists(self, key: str, value: Any) -> None:
            nonlocal arrived
            arrived += 1
            if arrived == runs:
                all_there.set()
            await all_there.wait()
            await self._store.set_if_not_exists(key, value)

    leases = [
        Lease(Together(await open_store(url)), f"job{i}", output=url) for i in range(runs)
    ]
    assert all(lease.settle_s == 0 for lease in leases)  # atomic: no settling wait
    outcomes = await asyncio.gather(*(lease.acquire() for lease in leases), return_exceptions=True)
    assert arrived == runs
    winners = [lease for lease, outcome in zip(leases, outcomes, strict=True) if outcome is None]
    assert len(winners) == 1, outcomes
    assert all(isinstance(o, OutputInUse) for o in outcomes if o is not None), outcomes
    _, held = await read_lease(await open_store(url))
    assert held is not None and held.run_id == winners[0].run_id
    await winners[0].release()
    assert (await read_lease(await open_store(url)))[0] is False


async def test_a_late_create_does_not_replace_a_won_lease(s3: S3Server) -> None:
    """The race a read-back cannot settle: run B found no lease, but its create reaches the
    store only after run A created it and read itself back. A plain PUT would replace A's
    lease and both would write; the conditional PUT fails and B is refused."""
    from zarr.storage import WrapperStore

    from bulkpix.errors import OutputInUse
    from bulkpix.store.lease import Lease, read_lease
    from bulkpix.store.zarr_store import open_store

    bucket = s3.new_bucket()
    url = f"s3://{bucket}/out.zarr"
    a_holds = asyncio.Event()
    b_creating = asyncio.Event()

    class Late(WrapperStore[Any]):
        async def set_if_not_exists(self, key: str, value: Any) -> None:
            b_creating.set()
            await a_holds.wait()
            await self._store.set_if_not_exists(key, value)

    a = Lease(await open_store(url), "job a", output=url)
    b = Lease(Late(await open_store(url)), "job b", output=url)

    async def run_a() -> None:
        await a.acquire()
        a_holds.set()

    b_run = asyncio.ensure_future(b.acquire())
    await b_creating.wait()  # b found no lease and waits in its create ...
    await run_a()  # ... while a creates it and reads itself back
    with pytest.raises(OutputInUse):
        await b_run
    _, held = await read_lease(await open_store(url))
    assert held is not None and held.run_id == a.run_id


async def test_holders_on_object_stores_live_by_their_expiry(s3: S3Server) -> None:
    """A holder that names this host and a pid that is gone may be a run on another machine
    of the same name: on an object store only its expiry counts. On this machine's own store
    (memory here, a local disk alike), the dead pid frees the lease at once (unchanged)."""
    import socket

    from zarr.core.buffer import default_buffer_prototype
    from zarr.storage import MemoryStore

    from bulkpix.errors import OutputInUse
    from bulkpix.store.lease import LEASE_KEY, Lease, LeaseInfo
    from bulkpix.store.zarr_store import open_store

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    other = LeaseInfo(
        run_id="other",
        job="another job",
        exclusive=False,
        host=socket.gethostname(),
        pid=gone.pid,
        since="2026-01-01T00:00:00+00:00",
        expires=time.time() + 300,
    )
    bucket = s3.new_bucket()
    cloud = await open_store(f"s3://{bucket}/out.zarr")
    local = MemoryStore()
    for store in (cloud, local):
        await store.set(LEASE_KEY, default_buffer_prototype().buffer.from_bytes(other.to_json()))
    with pytest.raises(OutputInUse, match="expires 60 s after its last renewal"):
        await Lease(cloud, "this job").acquire()
    mine = Lease(local, "this job")
    await mine.acquire()
    await mine.release()


def _delayed_until(store: Any, event: asyncio.Event, reached: asyncio.Event) -> None:
    """This store's conditional replaces wait for ``event`` (after setting ``reached``)."""
    replace = store.set_if_version

    async def later(key: str, value: bytes, version: Any) -> bool:
        reached.set()
        await event.wait()
        return bool(await replace(key, value, version))

    store.set_if_version = later


async def test_two_runs_taking_over_a_stale_s3_lease_cannot_both_hold_it(s3: S3Server) -> None:
    """Both read the same stale lease; A replaces it first; B's replace, made over the
    version it read, fails, and B then finds A's live lease."""
    from zarr.core.buffer import default_buffer_prototype

    from bulkpix.errors import OutputInUse
    from bulkpix.store.lease import LEASE_KEY, Lease, LeaseInfo, read_lease
    from bulkpix.store.zarr_store import open_store

    bucket = s3.new_bucket()
    url = f"s3://{bucket}/out.zarr"
    stale = LeaseInfo("dead", "old job", False, "elsewhere", 1, "2026-01-01", time.time() - 1)
    first = await open_store(url)
    await first.set(LEASE_KEY, default_buffer_prototype().buffer.from_bytes(stale.to_json()))

    a_holds, b_replacing = asyncio.Event(), asyncio.Event()
    b_store = await open_store(url)
    _delayed_until(b_store, a_holds, b_replacing)
    a = Lease(await open_store(url), "job a", output=url)
    b = Lease(b_store, "job b", output=url)
    b_run = asyncio.ensure_future(b.acquire())
    await b_replacing.wait()  # B read the stale lease and is replacing it ...
    await a.acquire()  # ... when A replaces it first
    a_holds.set()
    with pytest.raises(OutputInUse):
        await b_run
    _, held = await read_lease(first)
    assert held is not None and held.run_id == a.run_id


async def test_holders_renewing_at_the_same_instant_both_stay_listed(s3: S3Server) -> None:
    """Two runs of one job share the lease and renew from the same read: the second replace
    fails, re-reads and writes both (a plain read-modify-write would drop the first)."""
    from bulkpix.store.lease import Lease, read_lease
    from bulkpix.store.zarr_store import open_store

    bucket = s3.new_bucket()
    url = f"s3://{bucket}/out.zarr"
    a = Lease(await open_store(url), "job", output=url)
    b_store = await open_store(url)
    b = Lease(b_store, "job", output=url)
    await a.acquire()
    await b.acquire()
    assert b.joined
    a_renewed, b_renewing = asyncio.Event(), asyncio.Event()
    _delayed_until(b_store, a_renewed, b_renewing)
    b_renewal = asyncio.ensure_future(b.renew())
    await b_renewing.wait()  # B read the lease and is writing it back ...
    await a.renew()  # ... when A renews
    _, renewed = await read_lease(await open_store(url))
    assert renewed is not None
    a_newest = next(h for h in renewed.all_holders() if h.run_id == a.run_id)
    a_renewed.set()
    await b_renewal
    _, held = await read_lease(await open_store(url))
    assert held is not None
    assert {h.run_id for h in held.all_holders()} == {a.run_id, b.run_id}
    assert a_newest in held.all_holders()  # A's renewal kept, not its previous entry
    a.check()
    b.check()


# --------------------------------------------------------------------------- on a cluster


@pytest.mark.slow  # ~16 s here: two worker processes start
async def test_a_dask_cluster_writes_the_s3_output_bit_exact(
    s3: S3Server, reference: Path
) -> None:
    """Worker processes (each writing from its own loop) share the S3 output; their
    credentials come from the environment they inherit, as on any cluster."""
    from bulkpix.emulator import EmulatorConfig, run_emulator
    from bulkpix.job import parse_job
    from bulkpix.pipeline import run_job

    bucket = s3.new_bucket()
    url = f"s3://{bucket}/out.zarr"
    config = EmulatorConfig(synthetic={ASSET: SYNTH})
    async with run_emulator(config) as emu, local_cluster(2) as client:
        stats = await run_job(parse_job(_job_keys(emu.url, url)), dask_client=client)
    assert stats.ok and stats.finished == stats.total == TILES
    assert len(stats.workers) == 2
    assert _objects(s3, bucket, "out.zarr/") == _files(reference)


async def test_an_aws_profile_gives_the_credentials(
    tmp_path: Path, s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """object_store reads no AWS profiles; with AWS_PROFILE (and no keys) set, boto3's
    credentials and region for that profile are used."""
    pytest.importorskip("boto3")
    from bulkpix.store.zarr_store import open_store

    url = f"s3://{s3.new_bucket()}/out.zarr"
    (tmp_path / "credentials").write_text(
        "[bulkpix-test]\naws_access_key_id = profile-key\naws_secret_access_key = profile-secret\n"
    )
    (tmp_path / "config").write_text("[profile bulkpix-test]\nregion = eu-west-3\n")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_PROFILE", "bulkpix-test")
    store = await open_store(url)
    provider = store.store.credential_provider
    assert provider is not None
    credentials = provider()
    assert credentials["access_key_id"] == "profile-key"
    assert provider.config["region"] == "eu-west-3"


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("gs://bucket/out.zarr", "GCSStore"),
        ("az://container/out.zarr", "AzureStore"),
        ("abfs://container@account.dfs.core.windows.net/out.zarr", "AzureStore"),
        ("s3a://bucket/out.zarr", "S3Store"),
    ],
)
async def test_other_clouds_open_through_obstore(
    url: str, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing is sent when a store is opened: the URL and the environment configure it."""
    from bulkpix.store.cloud import CloudStore
    from bulkpix.store.zarr_store import open_store

    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", "account")
    store = await open_store(url)
    assert isinstance(store, CloudStore) and type(store.store).__name__ == kind
    assert store.store.prefix == "out.zarr"
