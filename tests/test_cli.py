"""The command line as a user meets it: plan, run (progress and summary), status."""

from __future__ import annotations

from pathlib import Path

import pytest

from bulkpix.cli import main
from bulkpix.emulator import SyntheticAsset
from tests.conftest import emulator_thread, write_job

ASSET = "projects/demo/assets/synth"


@pytest.fixture
def server():  # type: ignore[no-untyped-def]
    with emulator_thread(synthetic={ASSET: SyntheticAsset(width=3000, height=2000)}) as emu:
        yield emu


def _job(tmp_path: Path, url: str, **more: object) -> Path:
    return write_job(
        tmp_path / "job.yaml",
        asset=ASSET,
        output=str(tmp_path / "out.zarr"),
        endpoint=url,
        credentials="none",
        chunk=256,
        tile=[512, 512],
        **more,
    )


def test_plan_fetches_no_pixels(server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    job = _job(tmp_path, server.url)
    assert main(["plan", str(job)]) == 0
    out = capsys.readouterr().out
    assert "3000 x 2000 px" in out
    assert "24 of 512 x 512 px" in out  # 4 rows x 6 columns of tiles
    assert "EPSG:32633" in out
    assert "24 requests" in out
    assert f"{3000 * 2000 * 13 / 1e6:,.1f} MB" in out  # as the service counts them
    assert [r["op"] for r in server.log] == ["get_asset"]
    assert not (tmp_path / "out.zarr").exists()


def test_run_shows_progress_and_summary_then_status(
    server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    job = _job(tmp_path, server.url)
    assert main(["run", str(job)]) == 0
    err = capsys.readouterr().err
    assert "total" in err and "24/24" in err  # the bar, at its end
    assert "retries 0" in err
    assert f"{3000 * 2000 * 9 / 1e6:,.1f}" in err  # MB of pixels fetched
    assert "0 retries" in err and "MB/s" in err

    assert main(["status", str(tmp_path / "out.zarr")]) == 0
    out = capsys.readouterr().out
    assert "24/24" in out and "complete" in out and ASSET in out

    # A rerun of a finished job fetches nothing.
    before = len(server.log)
    assert main(["run", "--quiet", str(job)]) == 0
    assert [r["op"] for r in server.log[before:]] == ["get_asset"]


def test_status_of_something_else(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a bulkpix output" in err and "Traceback" not in err
