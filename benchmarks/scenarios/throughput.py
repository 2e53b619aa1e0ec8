"""Scenario 2, throughput-bound: no service delay, large tiles. bulkpix's end-to-end rate
(fetch, decode, write with zstd) against a bare aiohttp loop fetching the same tiles."""

from __future__ import annotations

from benchmarks.emulator_process import EmulatorProcess, EmulatorSettings
from benchmarks.figures import Target
from benchmarks.region import Window
from benchmarks.scenarios.common import (
    Context,
    ScenarioResult,
    big_asset,
    run_bare_fetch,
    run_bulkpix,
)

NAME = "throughput"
CONCURRENCY = 40  # bulkpix's default; the bare loop uses the same


def run(ctx: Context) -> ScenarioResult:
    ctx = ctx.for_scenario(NAME)
    size = ctx.size
    window = size.throughput_window
    settings = EmulatorSettings(assets=big_asset(), max_concurrent=40, max_qps=100.0,
                                service_base_s=0.0, service_per_mb_s=0.0)
    tile = size.throughput_tile
    result = ScenarioResult(
        NAME, f"Throughput-bound: {window.width} x {window.height} px, {tile[0]} x {tile[1]} "
              "tiles", settings.describe())
    with EmulatorProcess(settings, ctx.workdir) as emulator:
        bulkpix, stats = run_bulkpix(ctx, emulator, "bulkpix", window, settings=settings,
                                     tile=tile)
        # Replay exactly the windows bulkpix fetched, so both move the same bytes.
        tiles = [Window(*w) for w in stats.ok_windows]
        bare, _ = run_bare_fetch(ctx, emulator, "bare_fetch", window, tiles, CONCURRENCY)
    result.clients += [bulkpix, bare]
    result.targets.append(Target(
        NAME, "bulkpix MB/s / bare fetch MB/s (busy)", bulkpix.mb_per_s_busy / bare.mb_per_s_busy,
        0.6, higher_is_better=True,
        note=f"{bulkpix.mb_per_s_busy:.0f} vs {bare.mb_per_s_busy:.0f} MB/s; wall: "
             f"{bulkpix.mb_per_s / bare.mb_per_s:.2f}; bulkpix "
             f"{bulkpix.cpu_s_per_gb:.1f} CPU-s/GB"))
    return result
