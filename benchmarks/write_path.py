"""How fast, and at what CPU cost, do decoded tiles go into Zarr?

Run: `python -m benchmarks.write_path`.

Writes realistic-ish 4-band tiles (uint8, int16, uint16, float32: smooth fields plus sensor-like
noise) through ``bulkpix.store.ItemWriter`` into a LocalStore in a temp dir and prints:

1. zstd inside numcodecs: do 2 threads compress in parallel (GIL released)?
2. a 6000x5000 region written as 2048x2048 tiles (2 at a time) for chunk sizes
   256/512/1024/2048 and no compression / zstd 1 / zstd 3: MB/s, CPU-s per GB, ratio,
   and the longest event-loop stall seen while writing;
3. for one chunk/level: async vs sync zarr API, field views vs contiguous copies, and tiles
   one at a time vs several concurrently;
4. every codec a job may choose (``compression:`` none, zstd 1/3, lz4 1/5, gzip 1) at
   the default 1024-px chunk (best of three runs each), on three kinds of pixels:
   realistic (smooth fields plus sensor noise), the emulator's synthetic bands (what the
   benchmark scenarios fetch) and random bytes (nothing to compress): CPU-s per GB and
   the ratio. ``--codecs`` runs only this part.

MB are of raw (uncompressed) pixel data, 1 MB = 1e6 bytes. CPU-s are the whole process's
(all threads). Numbers depend on the disk and page cache; compare rows, not machines.
Pass ``--quick`` for a smaller run.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import numcodecs
import numpy as np
import zarr
from affine import Affine

from bulkpix.emulator.synthetic import SYNTHETIC_BANDS, synthetic_pixels
from bulkpix.geometry.grid import PixelGrid as Grid
from bulkpix.geometry.grid import Window
from bulkpix.store.codecs import CODECS
from bulkpix.store.zarr_store import BandSpec, ItemWriter, open_store

BAND_DTYPES = {"B_u8": "uint8", "B_i16": "int16", "B_u16": "uint16", "B_f32": "float32"}
TILE = 2048
REGION = (5000, 6000)  # height, width


@dataclass
class Result:
    label: str
    raw_bytes: int
    wall_s: float
    cpu_s: float
    stored_bytes: int
    max_stall_ms: float

    @property
    def mb_per_s(self) -> float:
        return self.raw_bytes / 1e6 / self.wall_s

    @property
    def cpu_s_per_gb(self) -> float:
        return self.cpu_s / (self.raw_bytes / 1e9)

    @property
    def ratio(self) -> float:
        return self.raw_bytes / max(self.stored_bytes, 1)


# --------------------------------------------------------------------------- data


def make_record_tile(height: int, width: int, seed: int) -> np.ndarray:
    """A structured array like a decoded NPY payload: smooth fields plus noise per band."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi)
    smooth = np.sin(x / 150 + phase) * np.cos(y / 230) + 0.3 * np.sin((x + y) / 60)
    record = np.empty((height, width), dtype=[(k, v) for k, v in BAND_DTYPES.items()])
    noise = rng.normal(0, 1, size=(height, width)).astype(np.float32)
    record["B_u8"] = np.clip(120 + 60 * smooth + 1.5 * noise, 0, 255)
    record["B_i16"] = np.clip(1500 * smooth + 15 * noise, -32768, 32767)
    record["B_u16"] = np.clip(3000 + 2000 * smooth + 25 * noise, 0, 65535)
    record["B_f32"] = 0.4 + 0.3 * smooth + 0.005 * noise  # reflectance-like floats
    return record


def bands() -> list[BandSpec]:
    return [BandSpec(k, np.dtype(v)) for k, v in BAND_DTYPES.items()]


def tile_windows(height: int, width: int, tile: int) -> list[Window]:
    return [
        Window(r, c, min(tile, height - r), min(tile, width - c))
        for r in range(0, height, tile)
        for c in range(0, width, tile)
    ]


def stored_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- measuring


class LoopStallMonitor:
    """Longest gap between 1 ms ticks of the event loop: how long CPU work blocked it."""

    def __init__(self) -> None:
        self.max_stall = 0.0
        self._task: asyncio.Task | None = None

    async def _tick(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            self.max_stall = max(self.max_stall, now - last - 0.001)
            last = now

    def __enter__(self) -> LoopStallMonitor:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def measure(
    label: str,
    root: Path,
    raw_bytes: int,
    run: Callable[[], Awaitable[None]],
) -> Result:
    with LoopStallMonitor() as monitor:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        await run()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return Result(label, raw_bytes, wall, cpu, stored_bytes(root), monitor.max_stall * 1e3)


async def new_writer(
    root: Path, shape: tuple[int, int], chunk: int, level: int | None, compression: str = "zstd"
) -> ItemWriter:
    """``level=None`` with the default ``compression`` means: uncompressed."""
    shutil.rmtree(root, ignore_errors=True)
    store = await open_store(str(root))
    grid = Grid("EPSG:32633", Affine(10, 0, 600000, 0, -10, 5200000), shape[1], shape[0])
    if compression == "zstd" and level is None:
        compression = "none"
    return await ItemWriter.create(store, "", grid, bands(), chunk, compression=compression,
                                   compression_level=level)


async def write_tiles(
    writer: ItemWriter,
    tiles: list[tuple[Window, dict[str, np.ndarray]]],
    concurrency: int,
) -> None:
    semaphore = asyncio.Semaphore(concurrency)

    async def one(window: Window, arrays: dict[str, np.ndarray]) -> None:
        async with semaphore:
            await writer.write_tile(window, arrays)

    await asyncio.gather(*(one(w, a) for w, a in tiles))


def field_views(record: np.ndarray, window: Window) -> dict[str, np.ndarray]:
    part = record[: window.height, : window.width]
    return {name: part[name] for name in BAND_DTYPES}


# --------------------------------------------------------------------------- sections


def gil_check() -> str:
    """Compress on 2 threads at once: CPU-seconds / wall-seconds near 2 means the GIL is free.

    (Thread CPU time is immune to other processes slowing the wall clock down, which a plain
    1-thread vs 2-thread timing on a shared 2-core machine is not.)
    """
    data = make_record_tile(1024, 1024, 1)["B_u16"].tobytes() * 4
    codec = numcodecs.Zstd(level=1)
    cpu_seconds: list[float] = []

    def work() -> None:
        start = time.thread_time()
        for _ in range(6):
            codec.encode(data)
        cpu_seconds.append(time.thread_time() - start)

    threads = [threading.Thread(target=work) for _ in range(2)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    overlap = sum(cpu_seconds) / wall
    # numcodecs' zstd.pyx runs ZSTD_compress inside `with nogil`; on a busy machine the
    # measured overlap is lower than 2 because other processes hold the cores.
    return (
        f"numcodecs Zstd(level=1), 2 threads x 6 x 8 MB: {sum(cpu_seconds):.2f} CPU-s in "
        f"{wall:.2f} s wall -> {overlap:.2f} cores busy (2.0 = fully parallel; the codec "
        f"compresses with the GIL released, so less means other load)"
    )


async def region_grid(tmp: Path, chunks: list[int], levels: list[int | None]) -> list[Result]:
    height, width = REGION
    record = make_record_tile(TILE, TILE, 2)
    windows = tile_windows(height, width, TILE)
    tiles = [(w, field_views(record, w)) for w in windows]
    raw = height * width * record.dtype.itemsize
    results = []
    for chunk in chunks:
        for level in levels:
            root = tmp / f"region_{chunk}_{level}"
            writer = await new_writer(root, REGION, chunk, level)
            codec = "none" if level is None else f"zstd{level}"
            results.append(
                await measure(
                    f"region chunk={chunk:<4} {codec:<5}",
                    root,
                    raw,
                    lambda writer=writer: write_tiles(writer, tiles, 2),
                )
            )
            shutil.rmtree(root, ignore_errors=True)
    return results


async def variants(tmp: Path, chunk: int, level: int, n_tiles: int) -> list[Result]:
    """n_tiles 2048x2048 tiles in one (TILE, n*TILE) array, written several ways."""
    shape = (TILE, n_tiles * TILE)
    record = make_record_tile(TILE, TILE, 3)
    windows = [Window(0, i * TILE, TILE, TILE) for i in range(n_tiles)]
    views = [(w, field_views(record, w)) for w in windows]
    raw = n_tiles * record.nbytes
    results = []

    async def run_async(label: str, concurrency: int, contiguous: bool = False) -> None:
        root = tmp / "variant"
        writer = await new_writer(root, shape, chunk, level)

        async def go() -> None:
            if not contiguous:
                return await write_tiles(writer, views, concurrency)
            # The cost of copying each band out of the record array is part of this variant.
            copies = [
                (w, {k: np.ascontiguousarray(v) for k, v in arrays.items()}) for w, arrays in views
            ]
            await write_tiles(writer, copies, concurrency)

        results.append(await measure(label, root, raw, go))

    async def run_sync(label: str) -> None:
        # zarr's sync API runs its own event loop on a zarr thread; call it off our loop.
        root = tmp / "variant"
        await new_writer(root, shape, chunk, level)
        group = zarr.open_group(str(root), mode="r+")

        def write_all() -> None:
            for w, arrays in views:
                for name, value in arrays.items():
                    group[name][
                        w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width
                    ] = value

        async def go() -> None:
            await asyncio.to_thread(write_all)

        results.append(await measure(label, root, raw, go))

    await run_async("async views, 1 tile at a time", 1)
    await run_async("async views, 2 tiles concurrently", 2)
    await run_async(f"async views, {n_tiles} tiles concurrently", n_tiles)
    await run_async("async contiguous copies, 2 concurrently", 2, contiguous=True)
    await run_sync("sync API in a thread, 1 at a time")
    with zarr.config.set({"async.concurrency": 64}):
        await run_async("async views, 2 conc., async.concurrency=64", 2)
    with zarr.config.set({"codec_pipeline.batch_size": 16}):
        await run_async("async views, 2 conc., batch_size=16", 2)
    shutil.rmtree(tmp / "variant", ignore_errors=True)
    return results


# The codecs compared: (compression, level) as a job names them.
CODEC_CASES: list[tuple[str, int | None]] = [
    ("none", None), ("zstd", 1), ("zstd", 3), ("lz4", 1), ("lz4", 5), ("gzip", 1)]
assert {name for name, _ in CODEC_CASES} == set(CODECS)


def synthetic_record_tile(height: int, width: int) -> np.ndarray:
    """The emulator's synthetic bands, as one NPY record array (the benchmarks' pixels)."""
    rows, cols = np.arange(height), np.arange(width)
    record = np.empty((height, width), dtype=[(k, v) for k, v in BAND_DTYPES.items()])
    for index, (name, (_, dtype)) in enumerate(zip(BAND_DTYPES, SYNTHETIC_BANDS, strict=True)):
        assert np.dtype(BAND_DTYPES[name]) == dtype
        record[name] = synthetic_pixels(index, rows, cols)
    return record


def random_record_tile(height: int, width: int, seed: int) -> np.ndarray:
    """Random bytes in every band: nothing to compress (the worst case for a codec)."""
    dtype = np.dtype([(k, v) for k, v in BAND_DTYPES.items()])
    raw = np.random.default_rng(seed).integers(0, 256, height * width * dtype.itemsize,
                                               dtype=np.uint8)
    return raw.view(dtype).reshape(height, width)


async def codec_grid(tmp: Path, chunk: int, n_tiles: int) -> list[Result]:
    """Each codec on each kind of pixels: n_tiles 2048x2048 tiles, two at a time."""
    shape = (TILE, n_tiles * TILE)
    windows = [Window(0, i * TILE, TILE, TILE) for i in range(n_tiles)]
    kinds = {
        "realistic": make_record_tile(TILE, TILE, 4),
        "synthetic": synthetic_record_tile(TILE, TILE),
        "random": random_record_tile(TILE, TILE, 5),
    }
    results = []
    for kind, record in kinds.items():
        views = [(w, field_views(record, w)) for w in windows]
        for compression, level in CODEC_CASES:
            label = f"{kind:<9} {compression}" + ("" if level is None else f" {level}")
            tries = []
            # The first write of a run warms zarr's caches and the codec: best of three.
            for _ in range(3):
                root = tmp / "codec"
                writer = await new_writer(root, shape, chunk, level, compression)
                tries.append(await measure(label, root, n_tiles * record.nbytes,
                                           lambda writer=writer, views=views: write_tiles(
                                               writer, views, 2)))
            results.append(min(tries, key=lambda r: r.cpu_s))
    shutil.rmtree(tmp / "codec", ignore_errors=True)
    return results


# --------------------------------------------------------------------------- report


def print_table(title: str, results: list[Result]) -> None:
    print(f"\n{title}")
    header = f"{'case':<44} {'MB/s':>7} {'CPU-s/GB':>9} {'ratio':>6} {'wall s':>7} {'stall ms':>9}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.label:<44} {r.mb_per_s:>7.0f} {r.cpu_s_per_gb:>9.2f} {r.ratio:>6.2f} "
            f"{r.wall_s:>7.2f} {r.max_stall_ms:>9.1f}"
        )


async def main(quick: bool, codecs_only: bool = False) -> None:
    print(gil_check())
    print(
        f"zarr {zarr.__version__}, numcodecs {numcodecs.__version__}; zarr.config "
        f"async.concurrency={zarr.config.get('async.concurrency')}, "
        f"threading.max_workers={zarr.config.get('threading.max_workers')}, "
        f"codec_pipeline.batch_size={zarr.config.get('codec_pipeline.batch_size')}"
    )
    chunks = [512, 1024] if quick else [256, 512, 1024, 2048]
    levels: list[int | None] = [None, 1] if quick else [None, 1, 3]
    with tempfile.TemporaryDirectory(prefix="bulkpix-bench-") as tmp_name:
        tmp = Path(tmp_name)
        if codecs_only:
            return await print_codecs(tmp, quick)
        region = await region_grid(tmp, chunks, levels)
        print_table(
            f"{REGION[1]}x{REGION[0]} region, 4 bands (9 B/px, "
            f"{REGION[0] * REGION[1] * 9 / 1e6:.0f} MB raw), {TILE}x{TILE} tiles, 2 at a time",
            region,
        )
        n_tiles = 2 if quick else 4
        print_table(
            f"{n_tiles} tiles of {TILE}x{TILE}x4 bands, chunk 512, zstd 1",
            await variants(tmp, 512, 1, n_tiles),
        )
        await print_codecs(tmp, quick)


async def print_codecs(tmp: Path, quick: bool) -> None:
    n_tiles = 2 if quick else 6
    print_table(
        f"codecs: {n_tiles} tiles of {TILE}x{TILE}x4 bands (9 B/px), chunk 1024, 2 at a time",
        await codec_grid(tmp, 1024, n_tiles),
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer cases, for a smoke run")
    parser.add_argument("--codecs", action="store_true", help="only the codec comparison")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.quick, arguments.codecs))
