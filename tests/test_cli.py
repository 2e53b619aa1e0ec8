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


# --------------------------------------------------------------------------- issue #9 and #11


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from bulkpix import __version__

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"bulkpix {__version__}"


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_anywhere_keeps_the_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    job = write_job(tmp_path / "job.yaml", asset=ASSET, output=str(tmp_path / "o.zarr"),
                    endpoint="emulator", colour="red")
    argv = ["--debug", "run", str(job)] if where == "before" else ["run", str(job), "--debug"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err  # --debug was heard, wherever it was written
    assert err.strip().splitlines()[-1].startswith("bulkpix: error: ")
    assert "unknown key 'colour'" in err
    assert main(["run", str(job)]) == 2
    assert "Traceback" not in capsys.readouterr().err


def _no_login_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setenv("NO_GCE_CHECK", "True")  # google-auth: do not probe a metadata server


@pytest.mark.parametrize("command", ["run", "plan"])
def test_missing_credentials_exit_3_naming_the_logins(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    command: str,
) -> None:
    _no_login_anywhere(tmp_path, monkeypatch)
    job = write_job(tmp_path / "job.yaml", asset=ASSET, output=str(tmp_path / "o.zarr"),
                    endpoint="https://earthengine.example.invalid")
    assert main([command, str(job)]) == 3
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bulkpix: error: no Earth Engine credentials")
    assert "earthengine authenticate" in err
    assert "gcloud auth application-default login" in err
    assert "refused the refresh" not in err
    assert not (tmp_path / "o.zarr").exists()


def test_status_accepts_the_job_file(
    server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    job = _job(tmp_path, server.url)
    assert main(["status", str(job)]) == 2  # nothing written yet: not an output
    assert "not a bulkpix output" in capsys.readouterr().err
    assert main(["run", "--quiet", str(job)]) == 0
    capsys.readouterr()
    assert main(["status", str(job)]) == 0
    assert "24/24" in capsys.readouterr().out
    assert main(["verify", str(job)]) == 0  # verify takes the job file too


def test_dashes_override_the_job_file(
    server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    job = _job(tmp_path, server.url)
    elsewhere = tmp_path / "elsewhere.zarr"
    # The synthetic asset is in EPSG:32633 at 10 m from (600000, 5200000); 1024 x 512 px.
    bbox = ["600000", "5194880", "610240", "5200000"]
    region = ["--bbox", *bbox, "--region-crs", "EPSG:32633"]
    assert main(["plan", str(job), *region, "--concurrency", "3"]) == 0
    out = capsys.readouterr().out
    assert "1024 x 512 px" in out and "2 of 512 x 512 px" in out
    assert main(["run", "--quiet", str(job), "--output", str(elsewhere), *region]) == 0
    assert elsewhere.is_dir() and not (tmp_path / "out.zarr").exists()
    assert main(["plan", str(job), "--concurrency", "0"]) == 2
    assert "key 'concurrency'" in capsys.readouterr().err
    assert main(["plan", str(job), "--region-crs", "EPSG:32633"]) == 2
    assert "--region-crs goes with --bbox" in capsys.readouterr().err


def test_file_url_output_for_a_new_output(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    output = tmp_path / "new" / "out.zarr"
    job = _job(tmp_path, server.url)
    assert main(["run", "--quiet", str(job), "--output", output.as_uri(),
                 "--bbox", "600000", "5197440", "602560", "5200000",
                 "--region-crs", "EPSG:32633"]) == 0
    assert (output / "zarr.json").is_file()


def test_dangling_symlink_output_says_so(
    server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    link = tmp_path / "out.zarr"
    link.symlink_to(tmp_path / "gone" / "target.zarr")
    assert main(["run", "--quiet", str(_job(tmp_path, server.url))]) == 2
    err = capsys.readouterr().err
    assert "symbolic link" in err and "does not exist" in err and "File exists" not in err
    assert len(err.strip().splitlines()) == 1
    assert not [r for r in server.log if r["op"] == "get_pixels"]


def test_plan_without_the_server_says_what_it_needs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    job = _job(tmp_path, url, retries={"backoff_base": 0.01})  # 3 quick tries
    assert main(["plan", str(job)]) == 1
    err = capsys.readouterr().err
    assert "plan needs the asset's metadata from " + url in err
    assert len(err.strip().splitlines()) == 1


def test_sigterm_while_starting_exits_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import signal

    import bulkpix.job

    real = bulkpix.job.load_job

    def terminated_while_loading(*args, **kwargs):  # type: ignore[no-untyped-def]
        os.kill(os.getpid(), signal.SIGTERM)  # as `kill` would, while the job file is read
        return real(*args, **kwargs)

    monkeypatch.setattr(bulkpix.job, "load_job", terminated_while_loading)
    job = write_job(tmp_path / "job.yaml", asset=ASSET, output=str(tmp_path / "o.zarr"),
                    endpoint="emulator")
    before = signal.getsignal(signal.SIGTERM)
    assert main(["run", "--quiet", str(job)]) == 130
    assert capsys.readouterr().err.strip() == "bulkpix: terminated (SIGTERM)"
    assert signal.getsignal(signal.SIGTERM) == before  # restored for whoever called main
    assert not (tmp_path / "o.zarr").exists()


def test_second_ctrl_c_with_the_in_process_emulator_is_one_clean_line(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    output = tmp_path / "out.zarr"
    job = write_job(
        tmp_path / "job.yaml", asset=ASSET, output=str(output), endpoint="emulator",
        region={"bbox": [600000, 5160000, 640000, 5200000], "region_crs": "EPSG:32633"},
        chunk=256, tile=[256, 256], concurrency=8,
        # Tiles stay in flight for seconds after the first Ctrl-C, so the second one finds
        # them there even on a loaded machine.
        emulator={"service_base_s": 3.0},
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "bulkpix", "run", "--quiet", str(job)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        done = output / ".bulkpix" / "done"
        deadline = time.monotonic() + 60
        while not (done.is_dir() and any(done.iterdir())):  # the first tile is stored
            assert proc.poll() is None and time.monotonic() < deadline, "no tile stored"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        assert proc.stderr is not None
        assert "stopping" in proc.stderr.readline() + proc.stderr.readline()
        proc.send_signal(signal.SIGINT)  # again, with requests in flight: abort now
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Task was destroyed" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [f"bulkpix: aborted; finished tiles are kept. Resume with: bulkpix run {job}"]
    # The tiles finished before the abort are kept, and status reads them.
    assert main(["status", str(output)]) == 1  # incomplete, not broken
    assert any(done.iterdir())


def test_debug_before_the_emulator_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    # The emulator's own parser answers (it returns its exit code rather than raising).
    try:
        code = main(["--debug", "emulator", "--help"])
    except SystemExit as exc:
        code = exc.code
    assert code == 0
    assert "usage: bulkpix emulator" in capsys.readouterr().out


def test_sigterm_while_reading_the_job_file_in_a_real_process(tmp_path: Path) -> None:
    import errno
    import os
    import signal
    import subprocess
    import sys
    import time

    # The job file is a FIFO: once this side can open it for writing, the process is inside
    # `bulkpix run`, blocked reading its job, a fraction of a second after it started.
    job = tmp_path / "job.yaml"
    os.mkfifo(job)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bulkpix", "run", str(job)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    writer = None
    try:
        deadline = time.monotonic() + 30
        while writer is None:
            try:
                writer = os.open(job, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:  # ENXIO: no reader yet
                assert exc.errno == errno.ENXIO, exc
                assert proc.poll() is None and time.monotonic() < deadline, "never read the job"
                time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if writer is not None:
            os.close(writer)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert err.strip() == "bulkpix: terminated (SIGTERM)"
