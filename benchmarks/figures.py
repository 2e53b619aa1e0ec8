"""One client's figures (from its process and the emulator's log) and the targets."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.emulator_process import EmulatorProcess
from benchmarks.measure import ChildRun, run_child
from benchmarks.request_stats import RequestStats, summarize

__all__ = ["ClientFigures", "Target", "measure_client"]

# Calls admitted in the last second count against the emulator's per-second quota: let
# them age out so one client's burst never throttles the next.
_QUIET_GAP_S = 1.2


@dataclass
class ClientFigures:
    """Everything reported for one client run. MB are 1e6 bytes of uncompressed pixels."""

    client: str
    wall_s: float
    busy_s: float  # from the first getPixels call's arrival to the process's exit
    startup_s: float  # from process start to the first getPixels call
    first_request_s: float  # from process start to its first request of any kind
    tail_s: float  # from the end of the last getPixels call to the process's exit
    pixels: int
    expected_pixels: int
    pixel_bytes: int
    mb_per_s: float  # over wall_s
    mb_per_s_busy: float  # over busy_s
    requests: int
    retries: int
    share_429: float
    share_429_after_10s: float
    cpu_s: float  # user + sys of the client process alone
    cpu_s_per_gb: float
    peak_rss_mb: float
    verified: bool
    emulator_cpu_s: float = 0.0  # the server's CPU seconds while this client ran
    user_s: float = 0.0  # cpu_s split: user and kernel time of the client process
    sys_s: float = 0.0
    status_counts: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Target:
    """A goal the benchmark checks, e.g. ``bulkpix / ideal <= 1.3``."""

    scenario: str
    name: str
    value: float
    threshold: float
    higher_is_better: bool
    unit: str = "x"
    note: str = ""

    @property
    def met(self) -> bool:
        return self.value >= self.threshold if self.higher_is_better else (
            self.value <= self.threshold)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "met": self.met}


def _figures(name: str, run: ChildRun, stats: RequestStats, expected_pixels: int,
             result: dict[str, Any]) -> ClientFigures:
    first = stats.first_start if stats.first_start is not None else run.started
    first_any = stats.first_any if stats.first_any is not None else first
    last = stats.last_end if stats.last_end is not None else run.ended
    busy_s = max(run.ended - first, 1e-9)
    pixel_bytes = int(result.get("pixel_bytes", 0))
    extra = {k: v for k, v in result.items() if k not in ("pixels", "pixel_bytes", "verified")}
    return ClientFigures(
        client=name, wall_s=run.wall_s, busy_s=busy_s, startup_s=max(first - run.started, 0.0),
        first_request_s=max(first_any - run.started, 0.0), tail_s=max(run.ended - last, 0.0),
        pixels=int(result.get("pixels", 0)), expected_pixels=expected_pixels,
        pixel_bytes=pixel_bytes, mb_per_s=pixel_bytes / 1e6 / run.wall_s,
        mb_per_s_busy=pixel_bytes / 1e6 / busy_s, requests=stats.requests,
        retries=stats.retries, share_429=stats.share_429,
        share_429_after_10s=stats.share_429_after_settle, cpu_s=run.cpu_s,
        cpu_s_per_gb=run.cpu_s / (pixel_bytes / 1e9) if pixel_bytes else 0.0,
        user_s=run.user_s, sys_s=run.sys_s,
        peak_rss_mb=run.peak_rss_mb, verified=bool(result.get("verified", False)),
        status_counts=stats.status_counts, extra=extra)


def measure_client(name: str, argv: Sequence[str], emulator: EmulatorProcess, workdir: Path, *,
                   expected_pixels: int, timeout_s: float, result_path: Path | None = None,
                   verify: Any = None, env: Mapping[str, str] | None = None,
                   cwd: Path | None = None) -> tuple[ClientFigures, RequestStats]:
    """Run one client against ``emulator``; ``verify()`` (if given) returns the delivery
    figures for clients that do not report their own (bulkpix: the store is checked after)."""
    time.sleep(max(0.0, emulator.last_client_end + _QUIET_GAP_S - time.time()))
    if result_path is not None:
        result_path.unlink(missing_ok=True)
    emulator_cpu_before = emulator.cpu_s()
    try:
        run = run_child(name, argv, workdir, timeout_s=timeout_s, result_path=result_path,
                        env=env, cwd=cwd)
    finally:
        emulator.last_client_end = time.time()
    emulator_cpu_s = emulator.cpu_s() - emulator_cpu_before
    stats = summarize(emulator.records(run.started, run.ended))
    result = verify() if verify is not None else run.result
    figures = _figures(name, run, stats, expected_pixels, result)
    figures.emulator_cpu_s = emulator_cpu_s
    return figures, stats
