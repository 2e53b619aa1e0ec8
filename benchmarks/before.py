"""``python -m benchmarks.before``: bulkpix's whole-process CPU-s per GB in the throughput
scenario, this checkout against an older commit, both measured on this machine.

The older commit is checked out in a temporary detached ``git worktree`` (removed at the end,
also on errors and Ctrl-C). One emulator serves every run; the throughput job runs alternately
with each checkout's bulkpix (pairs AB, BA, AB, ...), each at its default codec, so drifts in
the machine's load hit both sides alike and the ratio stays meaningful on shared cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks.__main__ import compile_sources
from benchmarks.emulator_process import EmulatorProcess
from benchmarks.machine import describe_machine
from benchmarks.region import BAND_DTYPES, Window
from benchmarks.scenarios.common import Context, run_bulkpix
from benchmarks.scenarios.throughput import BEFORE_TARGET, emulator_settings
from benchmarks.sizes import SIZES

__all__ = ["DEFAULT_REF", "main"]

DEFAULT_REF = "43418e2"  # before issue #10
REPO = Path(__file__).resolve().parents[1]
DEFAULT_JSON = REPO / "benchmarks" / "results" / "before.json"
SIDES = ("ref", "now")


class BeforeError(Exception):
    """A problem worth one line to the user (bad ref, no git, a failed run)."""


@dataclass(frozen=True)
class Checkout:
    side: str  # "ref" or "now"
    root: Path
    commit: str
    dirty: bool = False  # tracked files changed since ``commit`` (the now side only)


@dataclass
class Run:
    """One measured ``bulkpix run`` of the throughput job."""

    pair: int  # -1, -2, ...: warm-up pairs, not counted
    side: str
    position: int  # 0: first in its pair, 1: second
    cpu_s: float
    user_s: float
    sys_s: float
    cpu_s_per_gb: float
    wall_s: float
    peak_rss_mb: float
    emulator_cpu_s: float
    load1_before: float
    load1_after: float
    requests: int
    retries: int
    tiles: int
    codec: str
    verified: bool  # the store's shape and sampled pixels against the synthetic truth
    covered: bool  # the answered tiles cover the window exactly once

    @property
    def warmup(self) -> bool:
        return self.pair < 0

    @property
    def ok(self) -> bool:
        return self.verified and self.covered

    def where(self) -> str:
        return f"{'warm-up' if self.warmup else f'pair {self.pair}'} {self.side}"


def _git(repo: Path, *args: str) -> str:
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True,
                              text=True, check=False)
    except FileNotFoundError:
        raise BeforeError("git is not installed; it is needed to check out --ref") from None
    if done.returncode != 0:
        raise BeforeError(f"git {' '.join(args)} failed in {repo}: {done.stderr.strip()}")
    return done.stdout.strip()


def resolve_commit(repo: Path, ref: str) -> str:
    try:
        return _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except BeforeError:
        raise BeforeError(f"--ref {ref!r} is not a commit of the repository at {repo}") from None


def current_checkout(repo: Path) -> Checkout:
    commit = _git(repo, "rev-parse", "HEAD")
    dirty = bool(_git(repo, "status", "--porcelain", "--untracked-files=no"))
    return Checkout("now", repo, commit, dirty)


@contextmanager
def ref_worktree(repo: Path, commit: str) -> Iterator[Checkout]:
    """A detached worktree of ``commit`` in a temp dir outside the repository, removed after."""
    parent = Path(tempfile.mkdtemp(prefix="bulkpix-before-"))
    path = parent / f"ref-{commit[:12]}"
    try:
        _git(repo, "worktree", "add", "--detach", "--quiet", str(path), commit)
        yield Checkout("ref", path, commit)
    finally:
        try:
            _git(repo, "worktree", "remove", "--force", str(path))
        except BeforeError:
            # The add died half-way, or the folder is gone: delete it, then let git forget
            # worktrees whose folders are missing (ours among them).
            shutil.rmtree(path, ignore_errors=True)
            subprocess.run(["git", "-C", str(repo), "worktree", "prune"], capture_output=True,
                           check=False)
        shutil.rmtree(parent, ignore_errors=True)


def imported_bulkpix(checkout: Checkout) -> Path:
    """Where ``python -m bulkpix`` finds bulkpix when run as the measured runs are."""
    code = "import importlib.util; print(importlib.util.find_spec('bulkpix').origin)"
    done = subprocess.run([sys.executable, "-c", code], cwd=checkout.root, capture_output=True,
                          text=True, check=False,
                          env=dict(os.environ, PYTHONPATH=str(checkout.root)))
    if done.returncode != 0 or not done.stdout.strip():
        raise BeforeError(f"the {checkout.side} checkout's bulkpix cannot be found: "
                          f"{done.stderr.strip()[-500:]}")
    return Path(done.stdout.strip()).resolve()


def stored_codec(output: Path) -> str:
    """The compression bulkpix chose, from a band's Zarr metadata (e.g. ``zstd 1``)."""
    meta = json.loads((output / next(iter(BAND_DTYPES)) / "zarr.json").read_text())

    def describe(codecs: list[dict[str, Any]]) -> list[str]:
        parts = []
        for codec in codecs:
            name, config = codec.get("name"), codec.get("configuration") or {}
            if name == "sharding_indexed":  # the compression is inside the shard
                parts += describe(config.get("codecs", []))
            elif name not in ("bytes", "transpose", "crc32c"):
                details = [str(config[k]) for k in ("cname", "clevel", "level") if k in config]
                parts.append(" ".join([str(name), *details]))
        return parts

    return " + ".join(describe(meta.get("codecs", []))) or "none"


def exact_cover(windows: Sequence[tuple[int, int, int, int]], window: Window) -> bool:
    """Whether the answered tiles (row_off, col_off, height, width) tile ``window`` exactly:
    inside it, pairwise disjoint, and as many pixels as it has."""
    tiles = sorted(set(windows))
    for r, c, h, w in tiles:
        if (r < window.row_off or c < window.col_off or r + h > window.row_off + window.height
                or c + w > window.col_off + window.width):
            return False
    for i, (r, c, h, w) in enumerate(tiles):
        for r2, c2, h2, w2 in tiles[i + 1:]:
            if r < r2 + h2 and r2 < r + h and c < c2 + w2 and c2 < c + w:
                return False
    return sum(h * w for _, _, h, w in tiles) == window.pixels


def measure_once(ctx: Context, emulator: EmulatorProcess, checkout: Checkout, pair: int,
                 position: int) -> Run:
    size = ctx.size
    window = size.throughput_window
    where = f"{'warm-up' if pair < 0 else f'pair {pair}'} {checkout.side} ({checkout.commit[:9]})"
    load_before = os.getloadavg()[0]
    try:
        figures, stats = run_bulkpix(ctx, emulator, checkout.side, window,
                                     settings=emulator.settings, tile=size.throughput_tile,
                                     checkout=checkout.root)
    except Exception as exc:  # ChildFailed, or the store check's assertion
        raise BeforeError(f"{where} failed: {type(exc).__name__}: {exc}") from None
    load_after = os.getloadavg()[0]
    output = ctx.workdir / checkout.side / "out.zarr"
    codec = stored_codec(output)
    # Set aside, not deleted, until every run is measured: on an ext4 without a journal
    # (this kind of VM) each new file's inode is found by skipping the inodes deleted in the
    # last minute or more, one by one. Deleting 500 files a run made the next run's file
    # creations cost 0.3-0.4 CPU-s on both sides, which says nothing of either.
    spent = ctx.workdir / "spent"
    spent.mkdir(exist_ok=True)
    output.rename(spent / f"{checkout.side}-{pair}-{position}.zarr")
    return Run(pair=pair, side=checkout.side, position=position, cpu_s=figures.cpu_s,
               user_s=figures.user_s, sys_s=figures.sys_s,
               cpu_s_per_gb=figures.cpu_s_per_gb, wall_s=figures.wall_s,
               peak_rss_mb=figures.peak_rss_mb, emulator_cpu_s=figures.emulator_cpu_s,
               load1_before=load_before, load1_after=load_after, requests=stats.requests,
               retries=stats.retries, tiles=len(set(stats.ok_windows)), codec=codec,
               verified=figures.verified and figures.pixel_bytes == window.pixel_bytes,
               covered=exact_cover(stats.ok_windows, window))


def schedule(pairs: int, warmup: int) -> list[tuple[int, tuple[str, str]]]:
    """(pair, order): warm-up pairs numbered -warmup..-1, then 0..pairs-1; AB, BA, AB, ...
    so neither side always runs right after the other."""
    numbers = [*range(-warmup, 0), *range(pairs)]
    return [(n, ("ref", "now") if n % 2 == 0 else ("now", "ref")) for n in numbers]


def summarize(runs: Sequence[Run], checkouts: dict[str, Checkout]) -> dict[str, Any]:
    counted = [r for r in runs if not r.warmup]
    by_pair: dict[int, dict[str, Run]] = {}
    for run in counted:
        by_pair.setdefault(run.pair, {})[run.side] = run
    complete = [p for p in by_pair.values() if set(p) == set(SIDES)]
    sides: dict[str, Any] = {}
    for side in SIDES:
        mine = [r for r in counted if r.side == side]
        checkout = checkouts[side]
        sides[side] = {
            "commit": checkout.commit, "root": str(checkout.root), "dirty": checkout.dirty,
            "runs": len(mine), "codec": sorted({r.codec for r in mine}),
            **{f"median_{key}": statistics.median(getattr(r, key) for r in mine) if mine
               else None
               for key in ("cpu_s_per_gb", "cpu_s", "user_s", "sys_s", "wall_s", "peak_rss_mb",
                           "emulator_cpu_s")},
        }
    ratios = [p["now"].cpu_s_per_gb / p["ref"].cpu_s_per_gb for p in complete]
    loads = [v for r in counted for v in (r.load1_before, r.load1_after)]
    ref_median, now_median = (sides[s]["median_cpu_s_per_gb"] for s in SIDES)
    ratio = now_median / ref_median if complete else None
    return {
        "sides": sides,
        "ratio_now_over_ref": ratio,
        "median_pair_ratio": statistics.median(ratios) if ratios else None,
        "pairs": len(complete),
        "pairs_now_lower": sum(x < 1.0 for x in ratios),
        "target_ratio": BEFORE_TARGET,
        "target_met": None if ratio is None else ratio <= BEFORE_TARGET,
        "load1_min": min(loads) if loads else None,
        "load1_max": max(loads) if loads else None,
    }


def _print_table(runs: Sequence[Run]) -> None:
    print(f"{'pair':>4}  {'order':<8} {'ref CPU-s/GB':>12} {'now CPU-s/GB':>12} "
          f"{'now/ref':>7}  {'load1':>5}")
    pairs: dict[int, list[Run]] = {}
    for run in runs:
        pairs.setdefault(run.pair, []).append(run)
    for number, pair in pairs.items():
        side = {r.side: r for r in pair}
        if set(side) != set(SIDES):
            continue
        ref, now = side["ref"], side["now"]
        order = ",".join(r.side for r in sorted(pair, key=lambda r: r.position))
        label = "w" if number < 0 else str(number)
        print(f"{label:>4}  {order:<8} {ref.cpu_s_per_gb:>12.2f} {now.cpu_s_per_gb:>12.2f} "
              f"{now.cpu_s_per_gb / ref.cpu_s_per_gb:>7.3f}  {ref.load1_before:>5.1f}")


def _print_summary(summary: dict[str, Any], machine: dict[str, Any]) -> None:
    for side in SIDES:
        figures = summary["sides"][side]
        dirty = " + uncommitted changes" if figures["dirty"] else ""
        median = figures["median_cpu_s_per_gb"]
        print(f"{side}: {figures['commit'][:9]}{dirty} ({', '.join(figures['codec'])}): "
              f"median {median:.2f} CPU-s/GB over {figures['runs']} runs "
              f"(user {figures['median_user_s']:.2f} s, sys {figures['median_sys_s']:.2f} s)")
    print(f"now/ref: {summary['ratio_now_over_ref']:.3f} (ratio of medians; median pair ratio "
          f"{summary['median_pair_ratio']:.3f}); now lower in {summary['pairs_now_lower']} of "
          f"{summary['pairs']} pairs; issue #10's target <= {summary['target_ratio']:.3f}: "
          f"{'met' if summary['target_met'] else 'not met'}")
    print(f"1-min load {summary['load1_min']:.2f} to {summary['load1_max']:.2f}; "
          f"CPU {machine['cpu_model']} ({machine['nproc']} logical CPUs)")


def measure(args: argparse.Namespace, workdir: Path, document: dict[str, Any]) -> list[Run]:
    size = SIZES[args.size]
    now = current_checkout(REPO)
    commit = resolve_commit(REPO, args.ref)
    runs: list[Run] = []
    document["runs"] = runs
    with ref_worktree(REPO, commit) as ref:
        checkouts = {"ref": ref, "now": now}
        document["checkouts"] = checkouts
        for checkout in checkouts.values():
            # Each run would otherwise compile every module where PYTHONDONTWRITEBYTECODE
            # is set; an installed bulkpix never pays that.
            compile_sources(checkout.root)
            found = imported_bulkpix(checkout)
            if not found.is_relative_to(checkout.root.resolve()):
                raise BeforeError(f"the {checkout.side} runs would import bulkpix from "
                                  f"{found}, not from {checkout.root}")
        ctx = Context(args.size, size, workdir)
        with EmulatorProcess(emulator_settings(), workdir) as emulator:
            for pair, order in schedule(args.pairs, args.warmup):
                for position, side in enumerate(order):
                    run = measure_once(ctx, emulator, checkouts[side], pair, position)
                    runs.append(run)
                    if not run.ok:
                        raise BeforeError(
                            f"{run.where()}: " + ("the store's pixels are wrong or missing"
                                                  if not run.verified else
                                                  "the answered tiles do not cover the "
                                                  "window exactly once"))
                    print(f"  {run.where()}: {run.cpu_s_per_gb:.2f} CPU-s/GB, "
                          f"wall {run.wall_s:.1f} s, load {run.load1_before:.1f}", flush=True)
        document["summary"] = summarize(runs, checkouts)
    return runs


def _jsonable(document: dict[str, Any]) -> dict[str, Any]:
    out = dict(document)
    out["runs"] = [asdict(r) | {"warmup": r.warmup, "ok": r.ok}
                   for r in document.get("runs", [])]
    out["checkouts"] = {side: {**asdict(c), "root": str(c.root)}
                        for side, c in document.get("checkouts", {}).items()}
    return out


def build_parser() -> argparse.ArgumentParser:
    def positive(text: str) -> int:
        value = int(text)
        if value < 1:
            raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
        return value

    def non_negative(text: str) -> int:
        value = int(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
        return value

    parser = argparse.ArgumentParser(prog="python -m benchmarks.before",
                                     description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--ref", default=DEFAULT_REF,
                        help=f"the older commit (default {DEFAULT_REF}, before issue #10)")
    parser.add_argument("--pairs", type=positive, default=8,
                        help="measured pairs, one run of each side a pair (default 8)")
    parser.add_argument("--warmup", type=non_negative, default=1,
                        help="pairs run first and not counted (default 1)")
    parser.add_argument("--size", choices=list(SIZES), default="default",
                        help="the throughput scenario's window at this size")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write JSON")
    parser.add_argument("--workdir", type=Path,
                        help="keep job files, logs and every run's output here (default: a "
                             "temp dir)")
    return parser


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # so SIGTERM also removes the worktree and stops the emulator


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    size = SIZES[args.size]
    window = size.throughput_window
    started = time.time()
    document: dict[str, Any] = {"meta": {
        "ref": args.ref, "size": args.size, "pairs": args.pairs, "warmup": args.warmup,
        "window": str(window), "tile": list(size.throughput_tile),
        "gb_per_run": window.pixel_bytes / 1e9, "emulator": emulator_settings().describe(),
        "started": started, "machine": describe_machine()}}
    previous = signal.signal(signal.SIGTERM, _interrupt)
    status = 0
    try:
        with tempfile.TemporaryDirectory(prefix="bulkpix-before-work-") as tmp:
            measure(args, args.workdir or Path(tmp), document)
    except BeforeError as exc:
        document["error"] = str(exc)
        print(f"error: {exc}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        document["error"] = "interrupted"
        print("interrupted: the worktree is removed, nothing more is measured", file=sys.stderr)
        status = 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    document["meta"]["seconds"] = time.time() - started
    document["meta"]["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    runs: list[Run] = document.get("runs", [])
    if runs:
        _print_table(runs)
    if "summary" in document:
        _print_summary(document["summary"], document["meta"]["machine"])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(_jsonable(document), indent=2) + "\n")
    print(f"figures written to {args.json}")
    return status


if __name__ == "__main__":
    sys.exit(main())
