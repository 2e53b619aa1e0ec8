"""The scenario parameters at each ``--size``: ``default`` is the real benchmark (a few
minutes), ``tiny`` exercises every code path in seconds (for the test suite)."""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.region import Window

__all__ = ["SIZES", "Size"]

BIG_ASSET_SIDE = 40_000  # the 40,000 x 40,000 synthetic asset every scenario reads from


@dataclass(frozen=True)
class Size:
    # Quota-bound: the service model of the brief, a ~6000 x 5000 mixed-type region.
    quota_window: Window
    quota_base_s: float
    quota_per_mb_s: float
    ee_tiles: tuple[int, ...]
    # Throughput-bound: no service delay, large explicit tiles.
    throughput_window: Window
    throughput_tile: tuple[int, int]
    # The codecs bulkpix also runs with there, besides its default: (compression, level).
    throughput_codecs: tuple[tuple[str, int | None], ...]
    # Memory: the base region; it is also run at 4x and 16x the area.
    memory_window: Window
    # Throttled: 8 concurrent allowed, the client set to 40.
    throttled_window: Window
    throttled_base_s: float
    throttled_per_mb_s: float
    child_timeout_s: float


SIZES: dict[str, Size] = {
    "default": Size(
        quota_window=Window(0, 0, 5000, 6000),
        quota_base_s=0.2, quota_per_mb_s=0.05, ee_tiles=(512, 1024),
        throughput_window=Window(0, 0, 10240, 10240), throughput_tile=(1024, 1024),
        throughput_codecs=(("none", None), ("zstd", 1), ("zstd", 3), ("lz4", 1), ("gzip", 1)),
        # 1x already keeps 40 requests in flight (64 tiles of the default 1024 x 1024), so
        # growth past it is real.
        memory_window=Window(0, 0, 8192, 8192),
        # Long enough (~15 s) that the 429 share after the first 10 s means something.
        throttled_window=Window(0, 0, 12288, 12288),
        throttled_base_s=0.5, throttled_per_mb_s=0.05,
        child_timeout_s=600.0,
    ),
    "tiny": Size(
        quota_window=Window(256, 512, 768, 1024),
        quota_base_s=0.2, quota_per_mb_s=0.05, ee_tiles=(512, 1024),
        throughput_window=Window(0, 0, 2048, 2048), throughput_tile=(1024, 1024),
        throughput_codecs=(("zstd", 1),),
        memory_window=Window(0, 0, 256, 256),
        throttled_window=Window(0, 0, 1024, 1024),
        throttled_base_s=0.05, throttled_per_mb_s=0.05,
        child_timeout_s=120.0,
    ),
}
