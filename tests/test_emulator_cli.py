"""``bulkpix emulator`` command line: argument errors, and a real run stopped by SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from bulkpix.emulator.cli import build_parser, config_from_args, main


@pytest.mark.parametrize("argv", [
    ["--asset", "no-equals-sign"],
    ["--synthetic", "projects/demo/assets/x:40000by30000"],
    ["--synthetic", "projects/demo/assets/x:10x10", "--fault-500", "1.5"],
    ["--synthetic", "projects/demo/assets/x:10x10", "--fault-500", "0.7", "--fault-503", "0.7"],
    ["--synthetic", "projects/demo/assets/x:10x10", "--no-such-flag"],
    ["--synthetic", "bad-name:10x10", "--port", "0"],
    ["--synthetic", "projects/demo/assets/x:10x10", "--qps-window", "hour"],
    ["--asset", "projects/demo/assets/x=/does/not/exist.tif", "--port", "0"],
    [],
])
def test_bad_arguments_give_one_line_and_exit_2(argv: list[str],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bulkpix emulator: error: ")
    assert "Traceback" not in err


def test_flags_map_onto_the_config() -> None:
    args = build_parser().parse_args([
        "--asset", "projects/demo/assets/x=a.tif,b.tif", "--synthetic",
        "projects/demo/assets/mixed:40000x30000", "--forbidden", "projects/demo/assets/s",
        "--token", "t", "--max-concurrent", "0", "--max-qps", "5", "--service-base", "0.2",
        "--service-per-mb", "0.05", "--service-jitter", "0", "--seed", "9",
        "--fault-500", "0.1", "--fault-503", "0.05", "--fault-429", "0.02",
        "--retry-after-share", "0.5", "--retry-after", "3", "--fault-reset", "0.01",
        "--fault-truncate", "0.01", "--fault-stall", "0.01", "--stall-seconds", "4",
        "--bandwidth", "1000000", "--log", "calls.jsonl", "--host", "0.0.0.0", "--port", "0"])
    config = config_from_args(args)
    assert config.assets == {"projects/demo/assets/x": ["a.tif", "b.tif"]}
    spec = config.synthetic["projects/demo/assets/mixed"]
    assert (spec.width, spec.height, spec.crs) == (40000, 30000, "EPSG:32633")
    assert config.forbidden == {"projects/demo/assets/s"} and config.token == "t"
    assert config.max_concurrent is None and config.max_qps == 5.0
    assert config.qps_window == "minute"  # the service's own count, unless asked otherwise
    assert (config.service_base_s, config.service_per_mb_s, config.service_jitter) == (
        0.2, 0.05, 0.0)
    f = config.faults
    assert (f.p500, f.p503, f.p429, f.retry_after_share, f.retry_after_s) == (
        0.1, 0.05, 0.02, 0.5, 3.0)
    assert (f.p_reset, f.p_truncate, f.p_stall, f.stall_s, f.bandwidth_bps) == (
        0.01, 0.01, 0.01, 4.0, 1_000_000)
    assert (config.seed, config.log_path, config.host, config.port) == (
        9, "calls.jsonl", "0.0.0.0", 0)


def test_strict_per_second_window_is_a_flag() -> None:
    args = build_parser().parse_args(["--synthetic", "projects/demo/assets/x:10x10",
                                      "--qps-window", "second"])
    assert config_from_args(args).qps_window == "second"


def test_serves_until_sigterm(tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    command = [sys.executable, "-c", "import sys; from bulkpix.emulator.cli import main; "
                                     "sys.exit(main())",
               "--synthetic", "projects/demo/assets/mixed:400x300", "--port", "0",
               "--log", str(log)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as process:
        assert process.stdout is not None and process.stderr is not None
        try:
            line = process.stdout.readline()
            assert line.startswith("bulkpix emulator listening on http://127.0.0.1:")
            url = line.split()[-1]
            with urllib.request.urlopen(f"{url}/v1/projects/demo/assets/mixed",
                                        timeout=30) as response:
                meta = json.load(response)
            assert [b["id"] for b in meta["bands"]] == ["u8", "i16", "u16", "f32"]
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
        assert "Traceback" not in process.stderr.read()
    assert json.loads(log.read_text().splitlines()[0])["op"] == "get_asset"
