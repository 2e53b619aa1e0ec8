"""Scenario 3, memory: the same job (bulkpix's defaults, a fast service) on regions of 1x,
4x and 16x the area. Peak RSS must not grow with the region."""

from __future__ import annotations

from benchmarks.emulator_process import EmulatorProcess, EmulatorSettings
from benchmarks.figures import Target
from benchmarks.scenarios.common import Context, ScenarioResult, big_asset, run_bulkpix

NAME = "memory"
FACTORS = (1, 2, 4)  # side factors: 1x, 4x, 16x the area
RSS_LIMIT_MB = 600.0


def run(ctx: Context) -> ScenarioResult:
    ctx = ctx.for_scenario(NAME)
    base = ctx.size.memory_window
    settings = EmulatorSettings(assets=big_asset(), max_concurrent=40, max_qps=100.0,
                                service_base_s=0.0, service_per_mb_s=0.0)
    result = ScenarioResult(NAME, f"Memory: {base.width} x {base.height} px at 1x, 4x, 16x area",
                            settings.describe())
    with EmulatorProcess(settings, ctx.workdir) as emulator:
        for factor in FACTORS:
            figures, _ = run_bulkpix(ctx, emulator, f"bulkpix_{factor * factor}x",
                                     base.scaled(factor))
            result.clients.append(figures)
    smallest, largest = result.clients[0], result.clients[-1]
    result.targets.append(Target(
        NAME, "peak RSS 16x / 1x", largest.peak_rss_mb / smallest.peak_rss_mb, 1.15,
        higher_is_better=False,
        note=f"{smallest.peak_rss_mb:.0f} -> {largest.peak_rss_mb:.0f} MB"))
    result.targets.append(Target(
        NAME, "peak RSS at 16x", largest.peak_rss_mb, RSS_LIMIT_MB, higher_is_better=False,
        unit="MB"))
    return result
