"""Shared fixtures: an emulator on its own thread (for blocking callers such as the CLI,
subprocesses, GDAL), small source rasters, and a virtual-time event loop for timing tests."""

from __future__ import annotations

import asyncio
import contextlib
import selectors
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import rasterio
import yaml
from affine import Affine

T = TypeVar("T")

SRC_CRS = "EPSG:32633"
SRC_TRANSFORM = Affine(10.0, 0.0, 600000.0, 0.0, -10.0, 5200000.0)


class EmulatorThread:
    """The emulator serving from a background thread with its own event loop."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.url = ""
        self.emu: Any = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        from bulkpix.emulator import run_emulator

        self._stop = asyncio.Event()
        try:
            async with run_emulator(self.config) as emu:
                self.emu = emu
                self.url = emu.url
                self._ready.set()
                await self._stop.wait()
        except BaseException as exc:  # surfaced to the test by __enter__
            self._error = exc
            self._ready.set()

    @property
    def log(self) -> list[dict[str, Any]]:
        return list(self.emu.log)

    def __enter__(self) -> EmulatorThread:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


@contextlib.contextmanager
def emulator_thread(**config: Any) -> Iterator[EmulatorThread]:
    from bulkpix.emulator import EmulatorConfig

    with EmulatorThread(EmulatorConfig(**config)) as emu:
        yield emu


@contextlib.asynccontextmanager
async def local_cluster(n_workers: int) -> AsyncIterator[Any]:
    """A Dask LocalCluster of worker processes (one thread each) on 127.0.0.1, and an
    asynchronous client of it."""
    import distributed

    async with distributed.LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        scheduler_port=0,
        dashboard_address="127.0.0.1:0",
        asynchronous=True,
        silence_logs=40,
    ) as cluster, distributed.Client(cluster, asynchronous=True) as client:
        yield client


def write_tif(
    path: Path,
    arrays: Sequence[np.ndarray] | np.ndarray,
    *,
    crs: str = SRC_CRS,
    transform: Affine = SRC_TRANSFORM,
    descriptions: Sequence[str | None] | None = None,
) -> Path:
    """A GeoTIFF of 2-D bands (a list, or a (bands, rows, cols) array) on one grid."""
    height, width = arrays[0].shape
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=len(arrays),
        dtype=arrays[0].dtype,
        crs=crs,
        transform=transform,
    ) as dst:
        for index, array in enumerate(arrays, start=1):
            dst.write(array, index)
        if descriptions:
            dst.descriptions = tuple(descriptions)
    return path


def exception_texts(exc: BaseException) -> Iterator[str]:
    """str, repr and args of an exception and everything chained to it."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield str(current)
        yield repr(current)
        yield from (repr(arg) for arg in current.args)
        current = current.__cause__ or current.__context__


def mixed_arrays(height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    """uint8, int16 and float32 bands with distinct, position-dependent values."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    u8 = ((rows * 7 + cols * 3) % 251 + 1).astype(np.uint8)
    i16 = (rows * 13 - cols * 5 - 1000).astype(np.int16)
    f32 = (rng.standard_normal((height, width)) * 100).astype(np.float32)
    return [u8, i16, f32]


@pytest.fixture
def mixed_asset(tmp_path: Path) -> tuple[list[Path], list[np.ndarray]]:
    """Three single-band GeoTIFFs (uint8, int16, float32) on one 10 m UTM grid."""
    arrays = mixed_arrays(700, 900)
    paths = [write_tif(tmp_path / f"band{i}.tif", [a]) for i, a in enumerate(arrays)]
    return paths, arrays


def write_job(path: Path, **keys: Any) -> Path:
    path.write_text(yaml.safe_dump(keys, sort_keys=False))
    return path


# -- virtual time --------------------------------------------------------------------------
# Code that waits only on loop timers and reads ``loop.time()`` (the Governor, aiolimiter, the
# retry sleeps) runs on this loop with exact timings and no real sleeping: whenever the loop
# would wait, its clock jumps to the next timer. Not for tests with real sockets or threads,
# whose events the jump would outrun.

_TICK = 1e-9  # the smallest step the virtual clock takes when it is asked not to wait


class _FastForwardSelector(selectors.DefaultSelector):
    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is None:  # nothing scheduled: only another thread can wake us
            return super().select(None)
        events = super().select(0)
        if not events and (timeout > 0 or not self._loop._ready):  # type: ignore[attr-defined]
            # Jump to the next timer instead of waiting for it. A real clock also moves on
            # a little between two loop iterations; without that, a timer that re-arms
            # itself for "now" (a limiter may, for a float-rounding remainder) spins.
            self._loop.now += max(timeout, _TICK)
        return events


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock starts at 0 and jumps to the next timer instead of waiting."""

    def __init__(self) -> None:
        self.now = 0.0
        super().__init__(selector=_FastForwardSelector(self))

    def time(self) -> float:
        return self.now


def run_virtual(main: Callable[[], Awaitable[T]]) -> T:
    """Run ``main()`` to completion on a fresh virtual-time loop."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main())  # type: ignore[arg-type]


def loop_now() -> float:
    """The running loop's clock (virtual seconds on a ``VirtualTimeLoop``)."""
    return asyncio.get_running_loop().time()
