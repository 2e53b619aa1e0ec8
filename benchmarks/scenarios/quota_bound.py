"""Scenario 1, quota-bound: the service is slow (200 ms + 50 ms per MB), the quota is
40 concurrent / 100 per second. bulkpix against the ideal and against today's clients."""

from __future__ import annotations

from benchmarks.emulator_process import EmulatorProcess, EmulatorSettings
from benchmarks.figures import Target
from benchmarks.ideal import ideal_makespan
from benchmarks.region import REQUEST_BYTES_PER_PX
from benchmarks.scenarios.common import Context, ScenarioResult, big_asset, run_bulkpix, run_peer

NAME = "quota_bound"


def run(ctx: Context) -> ScenarioResult:
    ctx = ctx.for_scenario(NAME)
    size = ctx.size
    window = size.quota_window
    settings = EmulatorSettings(assets=big_asset(), max_concurrent=40, max_qps=100.0,
                                service_base_s=size.quota_base_s,
                                service_per_mb_s=size.quota_per_mb_s, service_jitter=0.1)
    ideal = ideal_makespan(window.height, window.width, REQUEST_BYTES_PER_PX,
                           base_s=settings.service_base_s, per_mb_s=settings.service_per_mb_s,
                           concurrency=settings.max_concurrent, qps=settings.max_qps)
    result = ScenarioResult(NAME, f"Quota-bound: {window.width} x {window.height} px, 4 bands",
                            settings.describe(), ideal=ideal.as_dict())
    with EmulatorProcess(settings, ctx.workdir) as emulator:
        bulkpix, _ = run_bulkpix(ctx, emulator, "bulkpix", window, settings=settings)
        result.clients.append(bulkpix)
        if not ctx.skip_peers:
            for tile in size.ee_tiles:
                figures, _ = run_peer(ctx, emulator, f"ee_pool_{tile}", "ee_pool", window,
                                      "--tile", str(tile), "--threads", "40")
                result.clients.append(figures)
            gdal, _ = run_peer(ctx, emulator, "gdal_eedai", "gdal_eedai", window)
            result.clients.append(gdal)
    result.targets.append(Target(NAME, "bulkpix busy time / ideal", bulkpix.busy_s / ideal.seconds,
                                 1.3, higher_is_better=False,
                                 note=f"ideal {ideal.seconds:.2f} s; wall/ideal "
                                      f"{bulkpix.wall_s / ideal.seconds:.2f}x"))
    peers = {c.client: c for c in result.clients}
    ee_pools = [c for c in result.clients if c.client.startswith("ee_pool")]
    if ee_pools:
        fastest = min(ee_pools, key=lambda c: c.busy_s)
        result.targets.append(Target(
            NAME, f"speed-up over the faster ee pool ({fastest.client})",
            fastest.busy_s / bulkpix.busy_s, 1.5, higher_is_better=True,
            note=f"wall: {fastest.wall_s / bulkpix.wall_s:.2f}x"))
    if "gdal_eedai" in peers:
        gdal = peers["gdal_eedai"]
        result.targets.append(Target(
            NAME, "speed-up over GDAL EEDAI", gdal.busy_s / bulkpix.busy_s, 10.0,
            higher_is_better=True, note=f"wall: {gdal.wall_s / bulkpix.wall_s:.2f}x"))
    return result
