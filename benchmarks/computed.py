"""Computed images: a median composite through image:computePixels, with the service's
memory limit in the way.

    python -m benchmarks.computed [--images-side 4] [--dates 5] [--memory-limit 70000]

A synthetic collection of ``images-side`` x ``images-side`` tiles over ``dates`` days is
reduced (``reduce: median``) into one UTM grid by the stand-in. Tiles of 512 x 512 px
(262,144 px) are over the injected memory limit (``--memory-limit`` output pixels per
computation), so each is split in four 256 x 256 parts (65,536 px), which fit. Reports the
requests (split refusals included), retries, splits and wall time against the quota's ideal:
the largest of requests / qps, the summed service time / concurrency and the longest call.
The stand-in computes with numpy on this machine's cores, so its service time grows with the
calls in flight: on 2 cores the ideal is a floor the run cannot reach.

Measured on the 2-core development machine (December 2026), at the defaults (16 scenes x 5
dates, 4 tiles): without a limit 4 requests, 0 retries, 10.1 s against an ideal of 9.8 s (the
longest call); with the memory limit 20 requests (4 refused, each split once in four, never
retried), 0 retries, 4 splits, 7.1 s against an ideal of 6.6 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["composite_run", "main"]


def composite_run(side: int, dates: int, *, memory_limit: int | None, tile_px: int = 512,
                  service_base_s: float = 0.05, concurrency: int = 16,
                  qps: float = 100.0) -> dict[str, Any]:
    from bulkpix.emulator import EmulatorConfig, emulator_in_thread
    from bulkpix.emulator.config import ComputeConfig, SyntheticCollection
    from bulkpix.job import parse_job
    from bulkpix.pipeline import run_job

    name = "projects/bench/assets/scenes"
    spec = SyntheticCollection(tiles=(side, side), tile_size=512, overlap=64, scale=30,
                               dates=dates, start="2024-01-01", crs=("EPSG:32633",),
                               origin=(14.0, 46.0))
    config = EmulatorConfig(collections={name: spec}, max_qps=None, max_concurrent=concurrency,
                            service_base_s=service_base_s, service_jitter=0.0,
                            compute=ComputeConfig(memory_limit_pixels=memory_limit))
    with tempfile.TemporaryDirectory() as workdir, emulator_in_thread(config) as emu:
        job = parse_job({
            "output": str(Path(workdir) / "median.zarr"), "endpoint": emu.url,
            "credentials": "none", "project": "bench-project", "collection": name,
            "reduce": "median", "dates": ["2024-01-01", f"2024-01-{dates + 1:02d}"],
            "bands": ["u16"], "crs": "EPSG:32633", "scale": 30,
            # Inside the synthetic tiles' extent (origin 14 E, 46 N).
            "region": {"bbox": [14.05, 45.7, 14.05 + 0.35 * side / 4, 45.95]},
            "chunk": 256, "tile": [tile_px, tile_px], "concurrency": concurrency, "qps": qps,
        })
        before = len(emu.log)
        started = time.perf_counter()
        stats = asyncio.run(run_job(job))
        wall_s = time.perf_counter() - started
        calls = [r for r in emu.log[before:] if r["op"] == "compute_pixels"]
    assert stats.ok, "the composite did not finish"
    service = sum(r.get("service_s") or 0 for r in calls)
    # The longest call bounds it too: a few tiles cannot use the whole concurrency.
    ideal = max(len(calls) / qps, service / concurrency,
                max((r.get("service_s") or 0 for r in calls), default=0))
    return {
        "tiles": stats.total,
        "requests": len(calls),
        "refused_too_costly": sum(1 for r in calls if r["status"] == 400),
        "retries": stats.retries,
        "splits": stats.computation_limits,
        "wall_s": round(wall_s, 2),
        "ideal_s": round(ideal, 2),
        "wall_over_ideal": round(wall_s / ideal, 2) if ideal else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.computed")
    parser.add_argument("--images-side", type=int, default=4)
    parser.add_argument("--dates", type=int, default=5)
    parser.add_argument("--memory-limit", type=int, default=70_000,
                        help="output pixels per computation (0: no limit)")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args(argv)
    figures = {
        "unlimited": composite_run(args.images_side, args.dates, memory_limit=None),
        "memory_limited": composite_run(args.images_side, args.dates,
                                        memory_limit=args.memory_limit or None),
    }
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
