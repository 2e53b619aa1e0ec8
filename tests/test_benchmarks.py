"""The benchmark suite runs end to end at ``--size tiny`` and writes sane figures.

Never a timing assertion: only that every scenario and client produced its fields, delivered
the expected pixels, and that the derived figures are consistent.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.__main__ import main
from benchmarks.before import exact_cover, schedule
from benchmarks.before import main as before_main
from benchmarks.ideal import ideal_for_requests, ideal_makespan
from benchmarks.region import REQUEST_BYTES_PER_PX, Window
from benchmarks.sizes import SIZES

CLIENT_FIELDS = {"wall_s", "busy_s", "startup_s", "pixels", "expected_pixels", "pixel_bytes",
                 "mb_per_s", "mb_per_s_busy", "requests", "retries", "share_429",
                 "share_429_after_10s", "cpu_s", "cpu_s_per_gb", "peak_rss_mb", "verified",
                 "first_request_s", "tail_s"}
EXPECTED_CLIENTS = {
    "quota_bound": {"bare_fetch", "bulkpix", "ee_pool_512", "ee_pool_1024", "gdal_eedai"},
    "throughput": {"bulkpix", "bare_fetch", "bulkpix_zstd1"},
    "memory": {"bulkpix_1x", "bulkpix_4x", "bulkpix_16x"},
    "throttled": {"bulkpix"},
}


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict:
    workdir = tmp_path_factory.mktemp("bench")
    path = workdir / "results.json"
    markdown = workdir / "results.md"
    assert main(["--size", "tiny", "--json", str(path), "--workdir", str(workdir),
                 "--markdown", str(markdown)]) == 0
    document = json.loads(path.read_text())
    document["markdown"] = markdown.read_text()
    return document


def test_every_scenario_and_client_is_reported(document: dict) -> None:
    assert document["meta"]["size"] == "tiny"
    assert document["meta"]["machine"]["nproc"] >= 1
    assert set(document["scenarios"]) == set(EXPECTED_CLIENTS)
    # Every Markdown table names the CPU its figures were measured on.
    cpu = document["meta"]["machine"]["cpu_model"]
    headings = [line for line in document["markdown"].splitlines() if line.startswith("### ")]
    assert len(headings) == len(EXPECTED_CLIENTS) + 1  # and the targets
    assert all(cpu in heading for heading in headings)
    for name, clients in EXPECTED_CLIENTS.items():
        scenario = document["scenarios"][name]
        assert set(scenario["clients"]) == clients, name
        assert scenario["targets"], name
        for target in scenario["targets"]:
            assert isinstance(target["met"], bool)
            assert math.isfinite(target["value"])


def test_client_figures_are_sane(document: dict) -> None:
    for name, scenario in document["scenarios"].items():
        for client, figures in scenario["clients"].items():
            where = f"{name}/{client}"
            assert set(figures) >= CLIENT_FIELDS, where
            assert figures["pixels"] == figures["expected_pixels"] > 0, where
            # Every pixel of the four bands (9 bytes a pixel) was delivered.
            assert figures["pixel_bytes"] == 9 * figures["pixels"], where
            assert figures["requests"] > 0, where
            assert 0 <= figures["retries"] <= figures["requests"], where
            assert 0.0 <= figures["share_429"] <= 1.0, where
            assert figures["wall_s"] > 0 and 0 < figures["busy_s"] <= figures["wall_s"], where
            assert figures["cpu_s"] > 0 and figures["peak_rss_mb"] > 10, where
            assert figures["mb_per_s"] > 0, where
            if client != "bare_fetch":  # the bare loop throws its bytes away unchecked
                assert figures["verified"] is True, where


def test_bare_loop_replays_bulkpix_requests(document: dict) -> None:
    clients = document["scenarios"]["throughput"]["clients"]
    assert clients["bare_fetch"]["requests"] >= clients["bulkpix"]["requests"] - \
        clients["bulkpix"]["retries"]
    assert clients["bare_fetch"]["pixel_bytes"] == clients["bulkpix"]["pixel_bytes"]


def test_throughput_reports_each_codec(document: dict) -> None:
    clients = document["scenarios"]["throughput"]["clients"]
    assert clients["bulkpix"]["extra"]["compression"] == "lz4 5"  # the default
    assert clients["bulkpix_zstd1"]["extra"]["compression"] == "zstd 1"
    for name in ("bulkpix", "bulkpix_zstd1"):
        # The synthetic bands compress: every codec stores less than it was given.
        assert clients[name]["extra"]["stored_ratio"] > 1.0, name
    names = {t["name"] for t in document["scenarios"]["throughput"]["targets"]}
    assert "bulkpix CPU-s/GB (whole process, default codec) / before" in names


def test_quota_bound_is_judged_against_the_floor_on_whole_process_time(document: dict) -> None:
    scenario = document["scenarios"]["quota_bound"]
    clients = scenario["clients"]
    bare = clients["bare_fetch"]
    # The floor fetched the whole window, in the ideal's tiling.
    assert bare["pixel_bytes"] == clients["bulkpix"]["pixel_bytes"]
    assert bare["requests"] >= scenario["ideal"]["requests"]
    for figures in clients.values():
        assert figures["extra"]["wall_over_floor"] == pytest.approx(
            figures["wall_s"] / bare["wall_s"])
        assert 0 <= figures["first_request_s"] <= figures["startup_s"] + 1e-6
        assert 0 <= figures["tail_s"] < figures["wall_s"]
    names = {t["name"] for t in scenario["targets"]}
    assert "| wall / floor | wall / ideal |" in document["markdown"]
    assert "bulkpix whole process / bare loop (floor)" in names
    assert "bulkpix first request after process start" in names
    assert "bulkpix last response to exit" in names


def test_ideal_is_reported_with_its_formula(document: dict) -> None:
    ideal = document["scenarios"]["quota_bound"]["ideal"]
    assert ideal["seconds"] > 0 and ideal["requests"] >= 1
    assert "ceil(n/C)" in ideal["formula"]
    throttled = document["scenarios"]["throttled"]["ideal"]
    assert throttled["same_requests_seconds"] > 0


def test_ideal_makespan_matches_the_hand_derivation() -> None:
    # 6000 x 5000 px at 13 counted bytes a pixel = 390 MB. One wave of 40 tiles of 9.75 MB:
    # 0.2 + 0.05 * 9.75 = 0.6875 s beats two waves of 80 smaller ones (2 * 0.44375 s).
    ideal = ideal_makespan(5000, 6000, REQUEST_BYTES_PER_PX, base_s=0.2, per_mb_s=0.05,
                           concurrency=40, qps=100)
    assert ideal.requests == 40
    assert ideal.seconds == pytest.approx(0.6875)
    # The rate quota binds when requests are tiny and free: 100 requests take 1 s.
    assert ideal_for_requests([1] * 100, base_s=0.0, per_mb_s=0.0, concurrency=8,
                              qps=100) == pytest.approx(1.0)
    # 16 requests of 1 s on 8 slots: 2 s.
    assert ideal_for_requests([0] * 16, base_s=1.0, per_mb_s=0.0, concurrency=8,
                              qps=100) == pytest.approx(2.0)


def test_result_path_defaults_into_the_ignored_results_folder() -> None:
    from benchmarks.__main__ import DEFAULT_JSON

    assert Path(__file__).parents[1] / "benchmarks" / "results" / "latest.json" == DEFAULT_JSON


def test_the_cluster_benchmark_runs_small(tmp_path: Path) -> None:
    """``python -m benchmarks.cluster --size small``: every run bit-exact (sampled), the
    quota-bound runs inside the job's quota, and both quota designs timed."""
    pytest.importorskip("distributed")
    from benchmarks.cluster import SIZES
    from benchmarks.cluster import main as cluster_main

    size = SIZES["small"]
    path = tmp_path / "cluster.json"
    assert cluster_main(["--size", "small", "--json", str(path),
                         "--workdir", str(tmp_path / "work")]) == 0
    document = json.loads(path.read_text())
    scenarios = document["throughput"]["scenarios"]
    assert [row["run"] for row in scenarios["quota_bound"]["rows"]] == ["no Dask", "2 workers"]
    assert [row["run"] for row in scenarios["unbound"]["rows"]] == [
        "no Dask", "2 workers", "2 workers, trim off", "2 workers, trim off, one batch each"]
    for name, scenario in scenarios.items():
        tiles = scenario["settings"]["tiles"]
        for row in scenario["rows"]:
            where = f"{name}/{row['run']}"
            assert row["exact"] is True and row["tiles"] == tiles, where
            assert row["requests"] >= tiles and row["mb"] > 0, where
            if row["workers"]:
                # Every worker process took tiles (of batches enough to go round), and the
                # CPU of their pids was read.
                if "one batch" not in row["run"]:
                    assert len(row["per_worker_tiles"]) == row["workers"], where
                assert sum(row["per_worker_tiles"]) == tiles, where
                assert row["workers_cpu_s"] > 0, where
    # The trim-off rows ran on workers without the nanny's malloc setting; the others with it.
    trims = [row["malloc_trim_threshold"] for row in scenarios["unbound"]["rows"]]
    assert trims[0] is None and trims[1] is not None and trims[2:] == [None, None]
    bound = size.quota_bound
    for row in scenarios["quota_bound"]["rows"]:
        assert row["n_429"] == 0 and row["peak_in_flight"] <= bound.concurrency, row["run"]
        # aiolimiter's burst is the concurrency cap; past it, qps.
        assert row["most_in_1s"] <= bound.concurrency + bound.qps, row["run"]
        assert row["ideal_s"] == pytest.approx(row["requests"] / bound.qps, abs=0.01)
    overhead = document["quota_overhead"]
    assert overhead["contended"]["slots"] == overhead["contended"]["coroutines"] == size.slots
    assert overhead["free"]["slots"] == 2 * size.slots
    for setting in ("contended", "free"):
        for design in ("broker", "semaphore"):
            figures = overhead[setting][design]
            where = f"{setting}/{design}"
            assert figures["acquisitions"] == size.acquisitions, where
            assert 0 < figures["acquire_mean_ms"] <= figures["cycle_mean_ms"], where
            assert figures["acquire_mean_ms"] <= figures["acquire_p99_ms"], where
    markdown = (tmp_path / "cluster.json").read_text()
    assert document["meta"]["machine"]["cpu_model"] in markdown


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def _head_or_skip(repo: Path) -> str:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    try:
        return _git(repo, "rev-parse", "HEAD")
    except subprocess.CalledProcessError:
        pytest.skip("not a git checkout")


def test_before_runs_a_commit_against_this_checkout(tmp_path: Path) -> None:
    """``python -m benchmarks.before --ref HEAD --pairs 1 --size tiny``: both sides ran with
    every tile and a verified store, the ratio is reported, and the temporary worktree (made
    outside the repository) is gone afterwards."""
    repo = Path(__file__).resolve().parents[1]
    head = _head_or_skip(repo)
    path = tmp_path / "before.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.before", "--ref", "HEAD", "--pairs", "1",
         "--size", "tiny", "--warmup", "0", "--json", str(path),
         "--workdir", str(tmp_path / "work")],
        cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(repo)), capture_output=True,
        text=True, timeout=110, check=False)
    assert done.returncode == 0, done.stderr
    document = json.loads(path.read_text())
    summary = document["summary"]
    size = SIZES["tiny"]
    tiles = size.throughput_window.pixels // (size.throughput_tile[0] * size.throughput_tile[1])
    medians = {}
    for side in ("ref", "now"):
        figures = summary["sides"][side]
        assert figures["commit"] == head, side
        runs = [r for r in document["runs"] if r["side"] == side]
        assert len(runs) == figures["runs"] == 1, side
        for run in runs:
            assert run["ok"] and run["verified"] and run["covered"], side
            assert run["tiles"] == tiles and run["cpu_s"] > 0, side
            assert run["cpu_s"] == pytest.approx(run["user_s"] + run["sys_s"]), side
        medians[side] = figures["median_cpu_s_per_gb"]
        gb = size.throughput_window.pixel_bytes / 1e9
        assert medians[side] == pytest.approx(runs[0]["cpu_s"] / gb), side
    # Each side ran its own checkout's bulkpix: the ref from the temporary worktree.
    ref_root = Path(document["checkouts"]["ref"]["root"])
    assert Path(document["checkouts"]["now"]["root"]) == repo
    assert not ref_root.is_relative_to(repo) and not ref_root.exists()
    assert str(ref_root) not in _git(repo, "worktree", "list", "--porcelain")
    assert summary["pairs"] == 1
    assert summary["ratio_now_over_ref"] == pytest.approx(medians["now"] / medians["ref"])
    assert summary["load1_min"] <= summary["load1_max"]
    assert "now/ref" in done.stdout
    assert document["meta"]["machine"]["cpu_model"] in done.stdout


def test_before_names_a_bad_ref_in_one_line(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    _head_or_skip(Path(__file__).resolve().parents[1])
    path = tmp_path / "before.json"
    assert before_main(["--ref", "no-such-ref-anywhere", "--json", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --ref 'no-such-ref-anywhere' is not a commit")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert json.loads(path.read_text())["error"].startswith("--ref")


def test_before_removes_its_worktree_when_interrupted(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C (or SIGTERM, turned into the same) once the worktree exists: it is removed."""
    import benchmarks.before

    repo = Path(__file__).resolve().parents[1]
    _head_or_skip(repo)
    roots: list[Path] = []

    def interrupted(root: Path) -> list[str]:
        assert (root / "bulkpix" / "__init__.py").is_file()  # the ref's checkout exists
        roots.append(root)
        raise KeyboardInterrupt

    monkeypatch.setattr(benchmarks.before, "compile_sources", interrupted)
    path = tmp_path / "before.json"
    assert before_main(["--ref", "HEAD", "--json", str(path)]) == 130
    assert len(roots) == 1 and not roots[0].exists() and not roots[0].parent.exists()
    assert str(roots[0]) not in _git(repo, "worktree", "list", "--porcelain")
    assert json.loads(path.read_text())["error"] == "interrupted"


def test_before_alternates_the_order_and_checks_the_tiles() -> None:
    orders = [order for _, order in schedule(4, 1)]
    assert [n for n, _ in schedule(4, 1)] == [-1, 0, 1, 2, 3]
    assert orders[1:] == [("ref", "now"), ("now", "ref")] * 2
    window = Window(0, 0, 4, 4)
    quarters = [(0, 0, 2, 2), (0, 2, 2, 2), (2, 0, 2, 2), (2, 2, 2, 2)]
    assert exact_cover(quarters, window)
    assert exact_cover([*quarters, (0, 0, 2, 2)], window)  # a retried tile counts once
    assert not exact_cover(quarters[:3], window)
    # As many pixels, but one tile twice over another's place.
    assert not exact_cover([(0, 0, 2, 2), (0, 1, 2, 2), (2, 0, 2, 2), (2, 2, 2, 2)], window)
    assert not exact_cover([(0, 0, 2, 2), (0, 2, 2, 2), (2, 0, 2, 2), (2, 3, 2, 2)], window)
