"""`bulkpix plan` estimates (time from the quota and the service model, disk from the pixel
bytes and the assumed compression), and the confirmation a job far larger than its assets'
native pixels needs (`run --yes`, `yes=True`)."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import pytest

import bulkpix
from bulkpix import planning
from bulkpix.cli import main
from bulkpix.emulator import SyntheticAsset
from bulkpix.errors import JobError, JobTooLarge
from bulkpix.job import parse_job
from bulkpix.planning import (
    ASSUMED_COMPRESSION,
    JobPlan,
    human_bytes,
    human_seconds,
    job_plan,
    parse_asset,
    plan_item,
    size_warning,
)
from tests.conftest import emulator_thread, write_job

ASSET = "projects/demo/assets/synth"
UTM = "EPSG:32633"


def _asset(width: int = 40000, height: int = 30000, name: str = ASSET) -> Any:
    grid = {
        "crsCode": UTM,
        "affineTransform": {"scaleX": 10, "translateX": 600000, "scaleY": -10,
                            "translateY": 5200000},
        "dimensions": {"width": width, "height": height},
    }
    bands = [
        {"id": "u8", "dataType": {"precision": "INT", "range": {"max": 255}}, "grid": grid},
        {"id": "f32", "dataType": {"precision": "FLOAT"}, "grid": grid},
    ]
    return parse_asset({"bands": bands}, name)


def _plans(job: Any, asset: Any = None) -> list[Any]:
    asset = asset or _asset()
    return [plan_item(spec, asset, job) for spec in job.resolved_items()]


def _utm_box(x0: float, y0: float, x1: float, y1: float) -> dict[str, Any]:
    return {"bbox": [x0, y0, x1, y1], "region_crs": UTM}


# -- estimates -------------------------------------------------------------------------


def test_one_item_costs_what_the_tilers_model_says() -> None:
    job = parse_job({"asset": ASSET, "output": "o.zarr", "chunk": 512, "tile": [1024, 2048],
                     "region": _utm_box(600000, 5150000, 650000, 5200000),
                     "concurrency": 8, "qps": 50, "compression": "zstd",
                     "service_model": {"base_s": 0.5, "per_mb_s": 0.1}})
    result = job_plan(_plans(job), job)
    [item] = result
    assert isinstance(result, JobPlan) and result[0] is item and len(result) == 1
    tiles = item.tiles
    assert tiles.n_tiles == 5 * 3  # 5000 x 5000 px in 1024 x 2048 tiles
    t = 0.5 + 0.1 * (1024 * 2048 * (1 + 1 + 4 + 1)) / 1e6  # the largest request's service time
    by_hand = max(math.ceil(15 / 8) * t, 14 / 50 + t)
    assert result.estimate.seconds == pytest.approx(by_hand, rel=1e-12)
    assert result.item_estimates == (result.estimate,)
    # Disk: the pixels as stored (no mask bytes), at zstd's assumed ratio.
    assert result.estimate.pixel_bytes == 5000 * 5000 * (1 + 4)
    assert result.estimate.disk_bytes == round(5000 * 5000 * 5 * ASSUMED_COMPRESSION["zstd"])
    assert result.estimate.request_bytes == 5000 * 5000 * (2 + 5)
    assert result.estimate.requests == 15
    assert result.compression == "zstd" and result.compression_ratio == 1 / 1.18


def test_the_rate_bound_wins_when_requests_are_many_and_quick() -> None:
    job = parse_job({"asset": ASSET, "output": "o.zarr", "chunk": 256, "tile": [256, 256],
                     "concurrency": 100, "qps": 2, "compression": "none",
                     "service_model": {"base_s": 0.1, "per_mb_s": 0.0},
                     "region": _utm_box(600000, 5190000, 610240, 5200000)})
    result = job_plan(_plans(job), job)
    n = result.estimate.requests
    assert n == 4 * 4  # 1024 x 1000 px in 256 x 256 tiles
    assert result.estimate.seconds == pytest.approx((n - 1) / 2 + 0.1)
    assert result.estimate.disk_bytes == result.estimate.pixel_bytes  # uncompressed


def test_a_batch_runs_its_items_one_after_the_other_through_one_pool() -> None:
    job = parse_job({"output": "o.zarr", "chunk": 256, "tile": [512, 512], "concurrency": 4,
                     "qps": 1000, "service_model": {"base_s": 1.0, "per_mb_s": 0.0},
                     "items": [
                         {"asset": ASSET, "region": _utm_box(600000, 5190000, 610240, 5200000)},
                         {"asset": ASSET, "region": _utm_box(600000, 5195000, 602560, 5200000),
                          "bands": ["u8"]},
                     ]})
    result = job_plan(_plans(job), job)
    first, second = (p.tiles.n_tiles for p in result)
    assert (first, second) == (2 * 2, 1 * 1)
    # Waves of 4 per item, items back to back: 1 + 1 waves of 1 s (the rate bound, all 5
    # requests started by 4 / 1000 s, is less).
    assert result.estimate.seconds == pytest.approx(2.0)
    # Alone, the first item is rate bound: its 4th request starts at 3 / 1000 s.
    assert [e.seconds for e in result.item_estimates] == pytest.approx([1.003, 1.0])
    assert result.estimate.pixel_bytes == sum(e.pixel_bytes for e in result.item_estimates)
    assert result.estimate.pixel_bytes == 1024 * 1000 * 5 + 256 * 500 * 1


def test_human_units() -> None:
    assert human_bytes(149_312_000_000) == "149.3 GB"
    assert human_bytes(999) == "999 B" and human_bytes(2_500_000) == "2.5 MB"
    assert human_seconds(4.25) == "4.2 s" and human_seconds(42) == "42 s"
    assert human_seconds(3 * 3600 + 5 * 60) == "3 h 05 min"
    assert human_seconds(50 * 3600) == "2 d 2 h"


def test_plan_prints_the_estimates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with emulator_thread(synthetic={ASSET: SyntheticAsset(width=3000, height=2000)}) as emu:
        job_file = write_job(tmp_path / "job.yaml", asset=ASSET, output=str(tmp_path / "o.zarr"),
                             endpoint=emu.url, credentials="none", chunk=256, tile=[512, 512])
        assert main(["plan", str(job_file)]) == 0
        out = capsys.readouterr().out
        result = bulkpix.plan(job_file)
    assert isinstance(result, JobPlan) and result.size_warning is None
    seconds = human_seconds(result.estimate.seconds)
    assert f"time       about {seconds} if the quota holds: 40 in flight, 100 requests/s" in out
    assert "each request 0.2 s + 0.05 s/MB" in out
    pixels = 3000 * 2000 * 9  # the synthetic family: 9 bytes of pixels each
    assert result.estimate.pixel_bytes == pixels
    disk = human_bytes(round(pixels * ASSUMED_COMPRESSION["lz4"]))
    assert f"disk       about {disk}: lz4 assumed to store the {human_bytes(pixels)}" in out
    assert "68%" in out


# -- the size warning --------------------------------------------------------------------


def test_scale_1_on_a_10_m_asset_is_100_times_its_native_pixels() -> None:
    job = parse_job({"asset": ASSET, "output": "o.zarr", "scale": 1, "crs": UTM,
                     "region": _utm_box(600000, 5190000, 610000, 5200000)})
    [item] = _plans(job)
    assert item.oversampling == pytest.approx(100.0)
    assert item.pixel_bytes == 10000 * 10000 * 5  # 0.5 GB: under the size that asks
    assert size_warning([item]) is None
    bigger = parse_job({**job.model_dump(exclude={"base_dir"}, exclude_none=True),
                        "region": _utm_box(600000, 5180000, 620000, 5200000)})
    warning = size_warning(_plans(bigger))
    assert warning is not None
    assert "2.0 GB of pixels" in warning and "100x the asset's native pixels" in warning
    assert "20,000 x 20,000 px" in warning


def test_native_and_coarser_grids_need_no_confirmation_below_the_absolute_size() -> None:
    native = parse_job({"asset": ASSET, "output": "o.zarr"})
    [item] = _plans(native)
    assert item.oversampling == pytest.approx(1.0)
    assert item.pixel_bytes == 40000 * 30000 * 5  # 6 GB at the native grid: no question
    assert size_warning([item]) is None
    coarse = parse_job({"asset": ASSET, "output": "o.zarr", "scale": 40, "crs": "EPSG:3857"})
    [item] = _plans(coarse)
    assert item.oversampling is not None and item.oversampling < 1


def test_a_huge_job_asks_whatever_its_scale() -> None:
    job = parse_job({"asset": ASSET, "output": "o.zarr"})
    [item] = _plans(job, _asset(width=1_000_000, height=250_000))
    assert item.oversampling == pytest.approx(1.0)
    assert size_warning([item]) == "this job writes 1.2 TB of pixels"


def test_dimensions_far_past_the_native_size_ask_too() -> None:
    # 4000 x 4000 native pixels asked for at 15000 x 15000: 14x, 1.1 GB.
    job = parse_job({"asset": ASSET, "output": "o.zarr", "dimensions": [15000, 15000],
                     "region": _utm_box(600000, 5160000, 640000, 5200000)})
    [item] = _plans(job)
    assert item.oversampling == pytest.approx(15000**2 / 4000**2)
    assert "14x the asset's native pixels" in (size_warning([item]) or "")


# -- the confirmation, end to end (the thresholds lowered so the job stays small) ---------


@pytest.fixture
def small_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(planning, "OVERSAMPLING_MIN_BYTES", 1)


@pytest.fixture
def server() -> Any:
    with emulator_thread(synthetic={ASSET: SyntheticAsset(width=300, height=200)}) as emu:
        yield emu


def _oversampled_job(url: str, output: Path) -> dict[str, Any]:
    # 4.9 m pixels from a 10 m asset: (10 / 4.9)**2 = 4.2 output pixels per native one, just
    # over the 4x that passes unasked.
    return {"asset": ASSET, "output": str(output), "endpoint": url, "credentials": "none",
            "crs": UTM, "scale": 4.9, "chunk": 128,
            "region": _utm_box(600000, 5199000, 601000, 5200000)}


def test_the_python_api_raises_before_writing_and_runs_with_yes(
    small_threshold: None, server: Any, tmp_path: Path
) -> None:
    output = tmp_path / "out.zarr"
    job = _oversampled_job(server.url, output)
    assert "4.2x the asset's native" in (bulkpix.plan(job).size_warning or "")
    with pytest.raises(bulkpix.JobTooLarge) as caught:
        bulkpix.run(job, progress=False)
    assert isinstance(caught.value, JobError) and isinstance(caught.value, ValueError)
    assert "yes=True" in str(caught.value) and "of pixels" in caught.value.summary
    assert not output.exists()
    assert not [r for r in server.log if r["op"] == "get_pixels"]
    summary = bulkpix.run(job, progress=False, yes=True)
    assert summary.complete
    # Resuming (or rerunning) what was confirmed once does not ask again.
    assert bulkpix.run(job, progress=False).complete


def test_cli_refuses_without_a_terminal_in_one_line(
    small_threshold: None, server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job_file = write_job(tmp_path / "job.yaml", **_oversampled_job(server.url, tmp_path / "o.zarr"))
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))  # not a terminal: never read
    assert main(["run", "--quiet", str(job_file)]) == 2
    err = capsys.readouterr().err
    [line] = err.strip().splitlines()
    assert line.startswith("bulkpix: error: this job writes ") and "of pixels" in line
    assert "bulkpix run --yes" in line and "Traceback" not in err
    assert not (tmp_path / "o.zarr").exists()
    assert main(["run", "--quiet", "--yes", str(job_file)]) == 0
    assert (tmp_path / "o.zarr").exists()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("answer", "code"), [("y\n", 0), ("yes\n", 0), ("n\n", 2), ("\n", 2),
                                              ("", 2)])
def test_cli_asks_on_a_terminal(
    small_threshold: None, server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, answer: str, code: int,
) -> None:
    job_file = write_job(tmp_path / "job.yaml", **_oversampled_job(server.url, tmp_path / "o.zarr"))
    stdin = _Terminal(answer)
    monkeypatch.setattr("sys.stdin", stdin)
    assert main(["run", "--quiet", str(job_file)]) == code
    err = capsys.readouterr().err
    assert "continue? [y/N]" in err and "of pixels" in err
    assert stdin.tell() == len(answer)  # the answer was read
    assert (tmp_path / "o.zarr").exists() == (code == 0)


def test_confirm_reads_nothing_from_a_pipe() -> None:
    from rich.console import Console

    from bulkpix.progress import confirm_large_job

    stdin = io.StringIO("y\n")
    console = Console(file=io.StringIO())
    assert not confirm_large_job(console, JobTooLarge("this job writes 2 GB"), stdin)
    assert stdin.tell() == 0
