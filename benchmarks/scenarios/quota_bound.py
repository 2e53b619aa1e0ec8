"""Scenario 1, quota-bound: the service is slow (200 ms + 50 ms per MB), the quota is
40 concurrent / 100 per second. bulkpix against this machine's floor (a bare aiohttp loop), the
service model's ideal, and today's clients. Targets are judged on whole-process (wall) time:
the time a user waits, imports and start-up included."""

from __future__ import annotations

from benchmarks.emulator_process import EmulatorProcess, EmulatorSettings
from benchmarks.figures import Target
from benchmarks.ideal import Ideal, ideal_makespan
from benchmarks.region import REQUEST_BYTES_PER_PX, Window
from benchmarks.scenarios.common import (
    Context,
    ScenarioResult,
    big_asset,
    run_bare_fetch,
    run_bulkpix,
    run_peer,
)

NAME = "quota_bound"
CONCURRENCY = 40


def ideal_tiles(window: Window, ideal: Ideal) -> list[Window]:
    """The ideal's tiling of ``window``: what the bare loop fetches."""
    tiles = []
    for row in range(window.row_off, window.row_off + window.height, ideal.tile_height):
        for col in range(window.col_off, window.col_off + window.width, ideal.tile_width):
            tiles.append(Window(row, col,
                                min(ideal.tile_height, window.row_off + window.height - row),
                                min(ideal.tile_width, window.col_off + window.width - col)))
    return tiles


def run(ctx: Context) -> ScenarioResult:
    ctx = ctx.for_scenario(NAME)
    size = ctx.size
    window = size.quota_window
    settings = EmulatorSettings(assets=big_asset(), max_concurrent=CONCURRENCY, max_qps=100.0,
                                service_base_s=size.quota_base_s,
                                service_per_mb_s=size.quota_per_mb_s, service_jitter=0.1)
    ideal = ideal_makespan(window.height, window.width, REQUEST_BYTES_PER_PX,
                           base_s=settings.service_base_s, per_mb_s=settings.service_per_mb_s,
                           concurrency=settings.max_concurrent, qps=settings.max_qps)
    result = ScenarioResult(NAME, f"Quota-bound: {window.width} x {window.height} px, 4 bands",
                            settings.describe(), ideal=ideal.as_dict())
    with EmulatorProcess(settings, ctx.workdir) as emulator:
        # The floor: a bare aiohttp loop fetching the ideal's tiles and throwing them away.
        bare, _ = run_bare_fetch(ctx, emulator, "bare_fetch", window,
                                 ideal_tiles(window, ideal), CONCURRENCY)
        result.clients.append(bare)
        bulkpix, _ = run_bulkpix(ctx, emulator, "bulkpix", window, settings=settings)
        result.clients.append(bulkpix)
        if not ctx.skip_peers:
            for tile in size.ee_tiles:
                figures, _ = run_peer(ctx, emulator, f"ee_pool_{tile}", "ee_pool", window,
                                      "--tile", str(tile), "--threads", str(CONCURRENCY))
                result.clients.append(figures)
            gdal, _ = run_peer(ctx, emulator, "gdal_eedai", "gdal_eedai", window)
            result.clients.append(gdal)
    for client in result.clients:
        client.extra["wall_over_floor"] = client.wall_s / bare.wall_s
        client.extra["wall_over_ideal"] = client.wall_s / ideal.seconds
    result.notes.append(
        f"whole process over the floor (bare loop, {bare.wall_s:.2f} s): "
        + ", ".join(f"{c.client} {c.wall_s / bare.wall_s:.2f}x" for c in result.clients)
        + f"; over the service-model ideal ({ideal.seconds:.2f} s): "
        + ", ".join(f"{c.client} {c.wall_s / ideal.seconds:.2f}x" for c in result.clients))
    result.targets.append(Target(
        NAME, "bulkpix whole process / bare loop (floor)", bulkpix.wall_s / bare.wall_s, 1.5,
        higher_is_better=False,
        note=f"{bulkpix.wall_s:.2f} vs {bare.wall_s:.2f} s; busy {bulkpix.busy_s:.2f} s, "
             f"busy/ideal {bulkpix.busy_s / ideal.seconds:.2f}x"))
    result.targets.append(Target(
        NAME, "bulkpix first request after process start", bulkpix.first_request_s, 0.8,
        higher_is_better=False, unit="s", note="the metadata call"))
    result.targets.append(Target(
        NAME, "bulkpix last response to exit", bulkpix.tail_s, 0.3, higher_is_better=False,
        unit="s", note=f"from the emulator logging the last call (before its body is sent); "
                       f"the bare loop, which only receives: {bare.tail_s:.2f} s"))
    peers = {c.client: c for c in result.clients}
    ee_pools = [c for c in result.clients if c.client.startswith("ee_pool")]
    if ee_pools:
        fastest = min(ee_pools, key=lambda c: c.wall_s)
        result.targets.append(Target(
            NAME, f"speed-up over the faster ee pool ({fastest.client})",
            fastest.wall_s / bulkpix.wall_s, 1.5, higher_is_better=True,
            note=f"whole process; busy: {fastest.busy_s / bulkpix.busy_s:.2f}x"))
    if "gdal_eedai" in peers:
        gdal = peers["gdal_eedai"]
        result.targets.append(Target(
            NAME, "speed-up over GDAL EEDAI", gdal.wall_s / bulkpix.wall_s, 10.0,
            higher_is_better=True,
            note=f"whole process; busy: {gdal.busy_s / bulkpix.busy_s:.2f}x"))
    return result
