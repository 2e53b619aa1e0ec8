"""Scenario 4, throttled: the service allows 8 concurrent calls, bulkpix is set to 40. The
share of 429s (overall and once settled) and the rate against the 8-request ideal."""

from __future__ import annotations

from benchmarks.emulator_process import EmulatorProcess, EmulatorSettings
from benchmarks.figures import Target
from benchmarks.ideal import ideal_for_requests, ideal_makespan
from benchmarks.region import REQUEST_BYTES_PER_PX
from benchmarks.scenarios.common import Context, ScenarioResult, big_asset, run_bulkpix

NAME = "throttled"
SERVER_CONCURRENCY = 8
SETTLE_S = 10.0
MAX_LATE_429_SHARE = 0.05


def run(ctx: Context) -> ScenarioResult:
    ctx = ctx.for_scenario(NAME)
    size = ctx.size
    window = size.throttled_window
    settings = EmulatorSettings(assets=big_asset(), max_concurrent=SERVER_CONCURRENCY,
                                max_qps=100.0, service_base_s=size.throttled_base_s,
                                service_per_mb_s=size.throttled_per_mb_s)
    result = ScenarioResult(
        NAME, f"Throttled: {SERVER_CONCURRENCY} concurrent allowed, client at 40, "
              f"{window.width} x {window.height} px", settings.describe())
    with EmulatorProcess(settings, ctx.workdir) as emulator:
        bulkpix, stats = run_bulkpix(ctx, emulator, "bulkpix", window, settings=settings)
    result.clients.append(bulkpix)
    model = {"base_s": settings.service_base_s, "per_mb_s": settings.service_per_mb_s,
             "concurrency": SERVER_CONCURRENCY, "qps": settings.max_qps}
    # The target: bulkpix's own requests, served back to back on 8 slots.
    same_requests_s = ideal_for_requests(stats.ok_request_sizes, **model)
    # For reference: the best any tiling could do with 8 slots.
    any_tiling = ideal_makespan(window.height, window.width, REQUEST_BYTES_PER_PX, **model)
    ideal_mb_per_s = bulkpix.pixel_bytes / 1e6 / same_requests_s if same_requests_s else 0.0
    result.ideal = {
        "same_requests_seconds": same_requests_s,
        "same_requests_mb_per_s": ideal_mb_per_s,
        "same_requests_formula": "max(sum(base + per_mb*s_i) / 8, max_i(...), n/Q) over "
                                 "bulkpix's successful requests",
        "any_tiling": any_tiling.as_dict(),
    }
    result.targets.append(Target(
        NAME, "MB/s (busy) / 8-request ideal", bulkpix.mb_per_s_busy / ideal_mb_per_s
        if ideal_mb_per_s else 0.0, 0.8, higher_is_better=True,
        note=f"ideal {same_requests_s:.1f} s for its {len(stats.ok_request_sizes)} requests; "
             f"any tiling: {any_tiling.seconds:.1f} s"))
    result.targets.append(Target(
        NAME, f"429 share after the first {SETTLE_S:.0f} s", stats.share_429_after_settle,
        MAX_LATE_429_SHARE, higher_is_better=False, unit="share",
        note=f"overall {stats.share_429:.1%}"))
    return result
