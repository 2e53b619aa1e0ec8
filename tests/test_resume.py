"""Resumable jobs: SIGKILL at random moments, Ctrl-C, batch items, changed jobs, --restart."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from bulkpix.cli import main
from bulkpix.emulator import SyntheticAsset
from bulkpix.emulator.synthetic import SYNTHETIC_BANDS, synthetic_pixels
from bulkpix.geometry.tiling import parse_tile_key, plan_tiles
from tests.conftest import emulator_thread, write_job

ASSET = "projects/demo/assets/synth"
SYNTH = SyntheticAsset(width=4000, height=4000)
BAND_IDS = [band for band, _ in SYNTHETIC_BANDS]
CONCURRENCY = 4


def _job_keys(url: str, output: Path, **more: Any) -> dict[str, Any]:
    return {
        "asset": ASSET,
        "output": str(output),
        "endpoint": url,
        "credentials": "none",
        # 1024 x 768 px of the asset, in 48 tiles of 128 x 128.
        "region": {"bbox": [602000, 5180000, 612240, 5187680], "region_crs": "EPSG:32633"},
        "chunk": 64,
        "tile": [128, 128],
        "concurrency": CONCURRENCY,
        **more,
    }


def _chunk_digests(output: Path) -> dict[str, str]:
    """Every stored data file but the record, by path -> sha256: 'bit-identical' made exact."""
    digests = {}
    for path in sorted(output.rglob("*")):
        rel = path.relative_to(output).as_posix()
        if path.is_file() and ".bulkpix" not in rel and not rel.endswith(".partial"):
            digests[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


# The resumed run tags its requests, so a late-logged call of the killed run is never taken
# for one of the resume's.
RESUME_TAG = "resume"
RESUMED = ("--workload-tag", RESUME_TAG)


def _pixel_windows(records: list[dict[str, Any]]) -> list[tuple[int, int, int, int]]:
    return [
        (r["row_off"], r["col_off"], r["height"], r["width"])
        for r in records
        if r["op"] == "get_pixels"
    ]


def _done_windows(output: Path, origin: tuple[int, int]) -> set[tuple[int, int, int, int]]:
    done = output / ".bulkpix" / "done"
    windows = set()
    if done.is_dir():
        for marker in done.iterdir():
            if marker.name.endswith(".partial"):
                continue
            tile = parse_tile_key(marker.name)
            w = tile.window
            windows.add((origin[0] + w.row_off, origin[1] + w.col_off, w.height, w.width))
    return windows


def _wait_for_requests(emu: Any, start: int, count: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while len(_pixel_windows(emu.log[start:])) < count:
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.005)  # polling the log, not hiding a race: the kill point is what we wait for


def _spawn(job: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bulkpix", "run", "--quiet", str(job)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


# A SIGKILL trial spawns a whole `bulkpix run` (imports included) and resumes it: about 3 s
# here, 7 s or more on a machine 2.5x slower. Trials are bounded by count and by time: after
# MIN_TRIALS, none starts once TRIAL_BUDGET_S is spent, so a test stays well inside the 120 s
# per-test timeout on a slow machine, and runs every trial on a fast one.
MIN_TRIALS = 3
TRIAL_BUDGET_S = 45.0


def _sigkill_trials(tmp_path: Path, trials: int, seed: int) -> int:
    """Kill and resume up to ``trials`` runs; return how many ran."""
    rng = random.Random(seed)
    with emulator_thread(synthetic={ASSET: SYNTH}, service_base_s=0.01, seed=seed) as emu:
        reference = tmp_path / "reference.zarr"
        ref_job = write_job(tmp_path / "ref.yaml", **_job_keys(emu.url, reference))
        assert main(["run", "--quiet", str(ref_job)]) == 0
        expected = _chunk_digests(reference)
        ref_tiles = len(_pixel_windows(emu.log))
        assert ref_tiles == 48
        # The region's origin in native pixels: 602000 E, 5187680 N.
        origin = (int((5200000 - 5187680) / 10), int((602000 - 600000) / 10))

        deadline = time.monotonic() + TRIAL_BUDGET_S
        for trial in range(trials):
            if trial >= MIN_TRIALS and time.monotonic() > deadline:
                return trial
            output = tmp_path / f"trial{trial}.zarr"
            job = write_job(tmp_path / f"trial{trial}.yaml", **_job_keys(emu.url, output))
            start = len(emu.log)
            proc = _spawn(job)
            _wait_for_requests(emu, start, rng.randint(1, ref_tiles - CONCURRENCY), proc)
            time.sleep(rng.uniform(0, 0.05))  # a random instant, not a synchronisation
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            first_run = _pixel_windows(emu.log[start:])
            done_after_kill = _done_windows(output, origin)

            resume_start = len(emu.log)
            assert main(["run", "--quiet", *RESUMED, str(job)]) == 0
            # A call of the killed run can be logged late (as 499, or as 200 when its answer
            # was sent before the server saw the client go): the resume's own calls carry
            # its workload tag.
            later = emu.log[resume_start:]
            first_run += _pixel_windows([r for r in later if r.get("workload_tag") != RESUME_TAG])
            second_run = _pixel_windows([r for r in later if r.get("workload_tag") == RESUME_TAG])

            assert _chunk_digests(output) == expected, f"trial {trial}: output differs"
            refetched = set(second_run) & set(first_run)
            assert not refetched & done_after_kill, "a finished tile was fetched again"
            # Only tiles that were in flight when the kill came are fetched twice.
            assert len(refetched) <= CONCURRENCY, (trial, len(refetched))
            assert len(second_run) == len(set(second_run)) == ref_tiles - len(done_after_kill)
    return trials


def test_sigkill_at_random_moments_resumes_bit_identical(
        tmp_path: Path, record_property: Any) -> None:
    record_property("trials", _sigkill_trials(tmp_path, trials=6, seed=1))


# Forty trials in all, ten per test, so that no one test runs long.
@pytest.mark.slow
@pytest.mark.parametrize("seed", [2, 3, 4, 5])
def test_sigkill_many_trials(tmp_path: Path, seed: int, record_property: Any) -> None:
    record_property("trials", _sigkill_trials(tmp_path, trials=10, seed=seed))


@pytest.mark.parametrize("how", ["ctrl-c", "sigkill"])
def test_interrupted_batch_of_items_resumes_bit_exact(tmp_path: Path, how: str) -> None:
    items = []
    for index in range(20):
        x0 = 600000 + 2560 * (index % 5)
        y1 = 5200000 - 2560 * (index // 5)
        items.append(
            {
                "name": f"area{index:02d}",
                "region": {"bbox": [x0, y1 - 2560, x0 + 2560, y1], "region_crs": "EPSG:32633"},
            }
        )
    with emulator_thread(synthetic={ASSET: SYNTH}, service_base_s=0.01) as emu:
        output = tmp_path / "batch.zarr"
        keys = _job_keys(emu.url, output, items=items)
        keys.pop("region")
        job = write_job(tmp_path / "batch.yaml", **keys)
        proc = _spawn(job)
        _wait_for_requests(emu, 0, 30, proc)
        if how == "ctrl-c":
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 130, err.decode()
            assert b"Resume with: bulkpix run" in err
        else:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=60)
        fetched_first = len(_pixel_windows(emu.log))
        assert 30 <= fetched_first < 20 * 4

        assert main(["status", str(output)]) == 1  # incomplete
        assert main(["run", "--quiet", *RESUMED, str(job)]) == 0
        fetched_again = [
            r for r in emu.log if r["op"] == "get_pixels" and r.get("workload_tag") == RESUME_TAG
        ]
        never_fetched = 20 * 4 - fetched_first
        if how == "ctrl-c":
            # The interrupted run finished what it had in flight: nothing is fetched twice.
            assert len(fetched_again) == never_fetched
        else:
            # Killed: only what was in flight (at most `concurrency` tiles) is fetched twice.
            assert never_fetched <= len(fetched_again) <= never_fetched + CONCURRENCY
        assert main(["status", str(output)]) == 0

    root = zarr.open_group(output, mode="r")
    for index in range(20):
        group = root[f"area{index:02d}"]
        rows = np.arange(256 * (index // 5), 256 * (index // 5) + 256)
        cols = np.arange(256 * (index % 5), 256 * (index % 5) + 256)
        for band_index, band in enumerate(BAND_IDS):
            np.testing.assert_array_equal(group[band][:], synthetic_pixels(band_index, rows, cols))


def test_changed_job_refused_then_restart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with emulator_thread(synthetic={ASSET: SYNTH}) as emu:
        output = tmp_path / "out.zarr"
        job = write_job(tmp_path / "a.yaml", **_job_keys(emu.url, output, bands=["u8"]))
        assert main(["run", "--quiet", str(job)]) == 0
        changed = write_job(
            tmp_path / "b.yaml", **_job_keys(emu.url, output, bands=["i16"], chunk=128)
        )
        capsys.readouterr()
        assert main(["run", "--quiet", str(changed)]) == 2
        err = capsys.readouterr().err
        assert "holds a different job" in err and "bands" in err and "chunk" in err
        assert "--restart" in err
        assert main(["run", "--quiet", "--restart", str(changed)]) == 0
    root = zarr.open_group(output, mode="r")
    assert "u8" not in root and "i16" in root
    assert root["i16"].chunks == (128, 128)
    rows = np.arange(1232, 1232 + 768)
    cols = np.arange(200, 200 + 1024)
    np.testing.assert_array_equal(root["i16"][:], synthetic_pixels(1, rows, cols))


def _digest(path: Path) -> dict[str, str]:
    return {
        p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def test_outputs_of_other_kinds_are_never_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with emulator_thread(synthetic={ASSET: SYNTH}) as emu:
        single = _job_keys(emu.url, tmp_path / "unused", bands=["u8"])
        single.pop("output")
        batch_items = [{"name": "a"}, {"name": "b"}]

        batch_out = tmp_path / "batch.zarr"
        batch_job = write_job(
            tmp_path / "b.yaml", **single, output=str(batch_out), items=batch_items
        )
        assert main(["run", "--quiet", str(batch_job)]) == 0
        before = _digest(batch_out)
        onto_batch = write_job(tmp_path / "s.yaml", **single, output=str(batch_out))
        capsys.readouterr()
        assert main(["run", "--quiet", str(onto_batch)]) == 2
        assert "holds a batch job" in capsys.readouterr().err
        assert _digest(batch_out) == before

        single_out = tmp_path / "single.zarr"
        assert (
            main(
                [
                    "run",
                    "--quiet",
                    str(write_job(tmp_path / "s2.yaml", **single, output=str(single_out))),
                ]
            )
            == 0
        )
        before = _digest(single_out)
        onto_single = write_job(
            tmp_path / "b2.yaml", **single, output=str(single_out), items=batch_items
        )
        assert main(["run", "--quiet", str(onto_single)]) == 2
        assert "holds a single-item job" in capsys.readouterr().err
        assert _digest(single_out) == before

        foreign = tmp_path / "foreign.zarr"
        zarr.create_array(foreign, name="precious", shape=(4, 4), dtype="uint8", fill_value=7)
        before = _digest(foreign)
        for args, expected in (([], "did not write"), (["--restart"], "will not delete it")):
            job = write_job(tmp_path / "f.yaml", **single, output=str(foreign))
            assert main(["run", "--quiet", *args, str(job)]) == 2
            assert expected in capsys.readouterr().err
            assert _digest(foreign) == before


def test_auto_tiles_resume_under_other_quota_settings(tmp_path: Path) -> None:
    with emulator_thread(synthetic={ASSET: SYNTH}) as emu:
        output = tmp_path / "out.zarr"
        keys = _job_keys(emu.url, output, tile="auto", chunk=128)
        assert main(["run", "--quiet", str(write_job(tmp_path / "a.yaml", **keys))]) == 0
        done = sorted((output / ".bulkpix" / "done").iterdir())
        assert len(done) >= 4
        first_shape = parse_tile_key(done[0].name).window.shape
        for marker in done[:3]:
            marker.unlink()
        start = len(emu.log)
        slower = {**keys, "concurrency": 2, "qps": 5, "memory_mb": 16}
        # On a fresh output these settings would cut other tiles ...
        fresh = plan_tiles(
            768, 1024, [1, 2, 2, 4], 128, concurrency=2, qps=5.0, max_inflight_bytes=16 * 2**20
        )
        assert (fresh.tile_height, fresh.tile_width) != first_shape
        assert main(["run", "--quiet", str(write_job(tmp_path / "b.yaml", **slower))]) == 0
        # The resumed run keeps the tile shape it was started with: only the 3 lost tiles.
        assert len(_pixel_windows(emu.log[start:])) == 3


def test_batch_outputs_from_before_roots_were_marked_still_resume(tmp_path: Path) -> None:
    with emulator_thread(synthetic={ASSET: SYNTH}) as emu:
        keys = _job_keys(emu.url, tmp_path / "out.zarr", bands=["u8"])
        keys["items"] = [{"name": "a"}, {"name": "b"}]
        job = write_job(tmp_path / "b.yaml", **keys)
        assert main(["run", "--quiet", str(job)]) == 0
        root = tmp_path / "out.zarr" / "zarr.json"
        document = json.loads(root.read_text())
        document["attributes"] = {}  # as an older run left it
        root.write_text(json.dumps(document))
        start = len(emu.log)
        assert main(["run", "--quiet", str(job)]) == 0
        assert not _pixel_windows(emu.log[start:])
        assert main(["run", "--quiet", "--restart", str(job)]) == 0


def test_foreign_files_without_zarr_metadata_are_not_deleted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import fsspec

    with emulator_thread(synthetic={ASSET: SYNTH}) as emu:
        # A batch item whose name is a plain folder of someone else's files.
        output = tmp_path / "out.zarr"
        keys = _job_keys(emu.url, output, bands=["u8"])
        keys["items"] = [{"name": "a"}]
        assert main(["run", "--quiet", str(write_job(tmp_path / "a.yaml", **keys))]) == 0
        (output / "b").mkdir()
        (output / "b" / "notes.txt").write_text("mine")
        keys["items"] = [{"name": "a"}, {"name": "b"}]
        capsys.readouterr()
        assert main(["run", "--quiet", str(write_job(tmp_path / "b.yaml", **keys))]) == 2
        assert "did not write at b" in capsys.readouterr().err
        assert (output / "b" / "notes.txt").read_text() == "mine"

        # An object-store prefix that holds someone else's object.
        memory = fsspec.filesystem("memory")
        bucket = f"bulkpix-foreign-{tmp_path.name}"
        memory.pipe(f"/{bucket}/data/precious.csv", b"1,2,3")
        try:
            url = f"memory://{bucket}/data"
            single = _job_keys(emu.url, tmp_path / "unused", bands=["u8"])
            single["output"] = url
            assert main(["run", "--quiet", str(write_job(tmp_path / "c.yaml", **single))]) == 2
            assert "did not write" in capsys.readouterr().err
            assert memory.cat(f"/{bucket}/data/precious.csv") == b"1,2,3"
        finally:
            memory.rm(f"/{bucket}", recursive=True)


def test_ctrl_c_while_the_metadata_call_waits_is_an_interruption(tmp_path: Path) -> None:
    import asyncio
    import socket

    from bulkpix.job import parse_job
    from bulkpix.pipeline import run_job

    with socket.socket() as probe:  # a port nobody listens on: every call is refused
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    job = parse_job(_job_keys(url, tmp_path / "out.zarr"))

    async def go() -> Any:
        stop = asyncio.Event()
        stop.set()  # already asked to stop when the first retry would wait
        return await run_job(job, stop=stop)

    stats = asyncio.run(go())
    assert stats.interrupted and not stats.ok
    assert not (tmp_path / "out.zarr").exists()
