"""Under faults and quotas: finish what can be finished, never retry what cannot, leak nothing."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from bulkpix.cli import main
from bulkpix.emulator import EmulatorConfig, FaultConfig, SyntheticAsset, run_emulator
from bulkpix.emulator.synthetic import SYNTHETIC_BANDS, synthetic_pixels
from bulkpix.job import parse_job
from bulkpix.pipeline import run_job
from bulkpix.store.record import TileRecord
from bulkpix.store.zarr_store import open_store
from tests.conftest import emulator_thread, write_job

ASSET = "projects/demo/assets/synth"
SYNTH = SyntheticAsset(width=4000, height=4000)
BAND_IDS = [band for band, _ in SYNTHETIC_BANDS]
# 1024 x 832 px at native offset (row 1232, col 200).
REGION = {"bbox": [602000, 5179360, 612240, 5187680], "region_crs": "EPSG:32633"}
ROWS = np.arange(1232, 1232 + 832)
COLS = np.arange(200, 200 + 1024)


def _keys(url: str, output: Path, **more: Any) -> dict[str, Any]:
    return {
        "asset": ASSET,
        "output": str(output),
        "endpoint": url,
        "credentials": "none",
        "region": REGION,
        "chunk": 64,
        "tile": [64, 128],
        "concurrency": 8,
        "retries": {"max_attempts": 10, "backoff_base": 0.02, "backoff_cap": 0.2},
        **more,
    }


def _assert_exact(output: Path, bands: list[str] = BAND_IDS) -> None:
    group = zarr.open_group(output, mode="r")
    for band in bands:
        expected = synthetic_pixels(BAND_IDS.index(band), ROWS, COLS)
        np.testing.assert_array_equal(group[band][:], expected)


def _pixel_calls(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """getPixels calls the server read (a quota 429 is answered before the body is read)."""
    return [r for r in log if r["op"] == "get_pixels" and r["affine"] is not None]


def _window(record: dict[str, Any]) -> tuple[Any, ...]:
    return (tuple(record["affine"]), record["width"], record["height"])


def test_fault_injection_finishes_bit_exact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    faults = FaultConfig(
        p503=0.10,
        p429=0.05,
        retry_after_share=0.5,
        retry_after_s=1.0,
        p_reset=0.02,
        p_truncate=0.02,
        p_stall=0.01,
        stall_s=5.0,
    )
    with emulator_thread(synthetic={ASSET: SYNTH}, faults=faults, seed=7) as emu:
        output = tmp_path / "out.zarr"
        job = write_job(
            tmp_path / "job.yaml",
            **_keys(emu.url, output, timeouts={"connect": 5, "read": 0.5, "total": 30}),
        )
        assert main(["run", str(job)]) == 0
        log = emu.log
    calls = _pixel_calls(log)
    seen = Counter(r["fault"] for r in calls if r["fault"])
    # The first 200 calls' faults are fixed by the seed; every kind is among them.
    assert {"503", "429", "reset", "truncate", "stall"} <= set(seen), seen
    assert any(r["fault"] == "429" and r["status"] == 429 for r in calls)
    successes = {_window(r) for r in calls if r["status"] == 200 and r["fault"] is None}
    assert len(successes) == 13 * 8  # every tile arrived whole once
    _assert_exact(output)
    err = capsys.readouterr().err
    retries = len(calls) - 13 * 8
    assert retries > 0
    assert f"{retries} retries" in err, err[-2000:]


async def test_throttled_client_backs_off(tmp_path: Path) -> None:
    config = EmulatorConfig(synthetic={ASSET: SYNTH}, max_concurrent=8, service_base_s=0.15)
    async with run_emulator(config) as emu:
        job = parse_job(_keys(emu.url, tmp_path / "out.zarr", concurrency=40, tile=[64, 64]))
        stats = await run_job(job)
        calls = [r for r in emu.log if r["op"] == "get_pixels"]
    assert stats.ok
    throttled = [r["status"] == 429 for r in calls]
    first = throttled[: len(throttled) // 4]
    rest = throttled[len(throttled) // 2 :]
    assert sum(first) > 0, "the client started above the quota: it must have met 429s"
    assert sum(rest) / len(rest) < sum(first) / len(first), "the 429 share must fall"
    assert stats.governor is not None and stats.governor.limit < 40
    _assert_exact(tmp_path / "out.zarr")


async def test_permanent_errors_one_request_per_tile_then_rerun(tmp_path: Path) -> None:
    faults = FaultConfig(p400=0.04, p403=0.04, p404=0.04)
    output = tmp_path / "out.zarr"
    config = EmulatorConfig(synthetic={ASSET: SYNTH}, faults=faults, seed=3)
    async with run_emulator(config) as emu:
        job = parse_job(_keys(emu.url, output))
        stats = await run_job(job)
        calls = _pixel_calls(emu.log)
        failed_calls = [r for r in calls if r["status"] in (400, 403, 404)]
        assert failed_calls and not stats.ok
        assert stats.failed == len(failed_calls)
        per_window = Counter(_window(r) for r in calls)
        for record in failed_calls:
            assert per_window[_window(record)] == 1, "a permanent error must not be retried"
        store = await open_store(str(output))
        reasons = await TileRecord(store, "").failed()
        assert len(reasons) == len(failed_calls)
        assert all(
            any(f"HTTP {code}" in reason for code in (400, 403, 404)) for reason in reasons.values()
        )

        # The next run fetches only what is missing.
        emu.config.faults = FaultConfig()
        before = len(emu.log)
        stats2 = await run_job(job)
        assert stats2.ok
        again = _pixel_calls(emu.log[before:])
        assert {_window(r) for r in again} == {_window(r) for r in failed_calls}
        assert await TileRecord(store, "").failed() == {}
    _assert_exact(output)


async def test_request_too_large_splits_in_four(tmp_path: Path) -> None:
    # The server counts a smaller limit than the client: each 128 x 128 tile is refused.
    config = EmulatorConfig(synthetic={ASSET: SYNTH}, max_request_bytes=128 * 128 * 13 - 1)
    output = tmp_path / "out.zarr"
    async with run_emulator(config) as emu:
        stats = await run_job(parse_job(_keys(emu.url, output, tile=[128, 128])))
        calls = _pixel_calls(emu.log)
    assert stats.ok
    refused = [r for r in calls if r["status"] == 400]
    # 832 x 1024 px: 6 full rows of 128 x 128 tiles are refused once each and split in
    # four; the last row's 64 x 128 tiles fit as they are.
    assert len(refused) == 6 * 8
    assert all((r["height"], r["width"]) == (128, 128) for r in refused)
    ok = Counter((r["height"], r["width"]) for r in calls if r["status"] == 200)
    assert ok == {(64, 64): 6 * 8 * 4, (64, 128): 8}
    _assert_exact(output)
    assert stats.finished == stats.total == 7 * 8  # the plan's tiles, parts not counted

    store = await open_store(str(output))
    record = TileRecord(store, "")
    async with run_emulator(config) as emu:
        # A finished job with split tiles: a rerun fetches nothing at all.
        again = await run_job(parse_job(_keys(emu.url, output, tile=[128, 128])))
        assert again.ok and _pixel_calls(emu.log) == []
        # Lose two parts of one split tile (and so the tile): only those two are fetched,
        # after the tile itself is refused once more.
        parts = ["g0_r0_c0_h64_w64", "g0_r64_c64_h64_w64"]
        parent = "g0_r0_c0_h128_w128"
        assert {*parts, parent} <= await record.done_keys()
        for key in [*parts, parent]:
            await store.delete(f".bulkpix/done/{key}")
        resumed = await run_job(parse_job(_keys(emu.url, output, tile=[128, 128])))
        calls = _pixel_calls(emu.log)
    assert resumed.ok and resumed.finished == 7 * 8
    assert [r["status"] for r in calls] == [400, 200, 200]
    assert parent in await record.done_keys()
    _assert_exact(output)


async def test_stop_during_backoff_issues_no_more_requests(tmp_path: Path) -> None:
    import asyncio

    config = EmulatorConfig(synthetic={ASSET: SYNTH}, faults=FaultConfig(p503=1.0))
    output = tmp_path / "out.zarr"
    async with run_emulator(config) as emu:
        job = parse_job(
            _keys(
                emu.url,
                output,
                retries={"max_attempts": 50, "backoff_base": 5, "backoff_cap": 30},
            )
        )
        stop = asyncio.Event()
        run = asyncio.create_task(run_job(job, stop=stop))
        while len(_pixel_calls(emu.log)) < 8:  # every worker has failed once, and waits
            await asyncio.sleep(0.01)
        stop.set()
        stats = await run
        calls = _pixel_calls(emu.log)
    assert stats.interrupted and not stats.ok
    assert len(calls) <= 8 + 8  # at most the requests already granted went out
    store = await open_store(str(output))
    assert await TileRecord(store, "").failed() == {}, "a stopped tile is not a failed tile"


def test_credentials_never_leak(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    secrets = {
        "token": "ya29.TOKEN-SECRET-0123456789",
        "refresh": "1//REFRESH-SECRET-abc",
        "client": "CLIENT-SECRET-xyz",
    }
    caplog.set_level(logging.DEBUG)
    faults = FaultConfig(p503=0.1, p_reset=0.05, p403=0.05)
    emu_log = tmp_path / "emulator.jsonl"
    with emulator_thread(
        synthetic={ASSET: SYNTH}, token=secrets["token"], faults=faults, log_path=str(emu_log)
    ) as emu:
        key = tmp_path / "credentials.json"
        key.write_text(
            json.dumps(
                {
                    "type": "authorized_user",
                    "client_id": "client-id",
                    "client_secret": secrets["client"],
                    "refresh_token": secrets["refresh"],
                    "token_uri": f"{emu.url}/token",
                }
            )
        )
        output = tmp_path / "out.zarr"
        job = write_job(tmp_path / "job.yaml", **_keys(emu.url, output, credentials=str(key)))
        code = main(["run", str(job)])
        status_code = main(["status", str(output)])
        denied = write_job(
            tmp_path / "denied.yaml",
            **_keys(
                emu.url, tmp_path / "o2.zarr", credentials=str(key), asset="projects/x/assets/none"
            ),
        )
        assert main(["run", str(denied)]) == 1
        authorised = [r for r in emu.log if r["op"] == "get_pixels" and r["status"] == 200]
    assert code == 1 and status_code == 1  # the injected 403s fail their tiles for good
    assert authorised, "the run must have used the token"
    captured = capsys.readouterr()
    texts = [captured.out, captured.err, caplog.text, emu_log.read_text()]
    for path in output.rglob("*"):
        if path.is_file():
            texts.append(path.read_bytes().decode("latin-1"))
    for name, secret in secrets.items():
        for text in texts:
            assert secret not in text, f"the {name} leaked"


def test_an_item_refused_everywhere_is_left_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Access is lost after the metadata call: every getPixels is refused with 403.
    with emulator_thread(synthetic={ASSET: SYNTH}, faults=FaultConfig(p403=1.0)) as emu:
        job = write_job(tmp_path / "job.yaml", **_keys(emu.url, tmp_path / "out.zarr"))
        assert main(["run", "--quiet", str(job)]) == 1
        calls = _pixel_calls(emu.log)
    err = capsys.readouterr().err
    assert "left the rest of item synth: 20 tiles in a row were refused access" in err
    assert "HTTP 403" in err and "Traceback" not in err
    # Not one request for each of the 104 tiles: the in-flight ones at most, past the 20th.
    assert 20 <= len(calls) <= 20 + 8


async def test_one_item_refused_does_not_stop_the_others(tmp_path: Path) -> None:
    import asyncio

    locked = "projects/demo/assets/locked"
    config = EmulatorConfig(synthetic={locked: SYNTH, ASSET: SYNTH})
    async with run_emulator(config) as emu:
        keys = _keys(emu.url, tmp_path / "out.zarr", concurrency=4)
        keys["items"] = [{"name": "locked", "asset": locked}, {"name": "fine", "asset": ASSET}]
        keys.pop("asset")
        run = asyncio.create_task(run_job(parse_job(keys)))
        while not _pixel_calls(emu.log):  # planned, and fetching the first item
            await asyncio.sleep(0.005)
        emu.config.forbidden = {locked}  # access to one asset is lost mid-run
        stats = await run
        calls = [r for r in emu.log if r["op"] == "get_pixels"]  # 403s come before the body
    locked_stats, fine_stats = stats.items
    assert locked_stats.abandoned and "refused access" in locked_stats.abandoned
    assert fine_stats.finished == fine_stats.total == 104 and not fine_stats.failed
    # 20 in a row, and whatever was in flight around the switch (a success landing late
    # restarts the count): far from one request for each of the item's 104 tiles.
    refused = [r for r in calls if r["asset"] == locked and r["status"] == 403]
    assert 20 <= len(refused) <= 40
    assert not stats.ok and stats.aborted is None


async def test_a_split_tile_that_still_fails_is_one_failure(tmp_path: Path) -> None:
    # Even one chunk is over this server's limit: every tile splits, every part fails.
    config = EmulatorConfig(synthetic={ASSET: SYNTH}, max_request_bytes=1000)
    output = tmp_path / "out.zarr"
    async with run_emulator(config) as emu:
        stats = await run_job(parse_job(_keys(emu.url, output, tile=[128, 128])))
    assert stats.total == 7 * 8 and stats.finished == 0
    assert stats.failed == 6 * 8 + 8  # one per tile of the plan, parts not counted
    reasons = await TileRecord(await open_store(str(output)), "").failed()
    assert len(reasons) == stats.failed
    assert all("4 of 4 parts failed" in r for k, r in reasons.items() if "_h128_" in k)
