"""Cutting a run's pending tiles into Dask tasks: pure arithmetic, no Dask."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

__all__ = [
    "BATCHES_PER_SLOT",
    "MAX_BATCH_TILES",
    "WAVES_PER_BATCH",
    "batch_size",
    "cut_batches",
    "iter_batches",
]

T = TypeVar("T")

# Several tasks per worker thread: a worker that finishes early takes another. A task lost
# with its worker costs only its tiles in flight (a rerun skips the recorded ones).
BATCHES_PER_SLOT = 4
MAX_BATCH_TILES = 256
# A worker runs one task at a time and a task drains before the next starts: a task of one
# wave of requests would leave the worker's CPU idle during every service time (measured:
# 66 MB/s against 112 for the same job in one task, benchmarks/RESULTS.md).
WAVES_PER_BATCH = 4


def batch_size(n_tiles: int, slots: int, concurrency: int) -> int:
    """Tiles per task: about ``BATCHES_PER_SLOT`` tasks per worker thread, at most
    ``MAX_BATCH_TILES``, but never fewer than ``WAVES_PER_BATCH`` waves of the slots' share
    of the quota, so the tasks running at once fill it and overlap its service times."""
    if n_tiles < 1:
        return 1
    slots = max(1, slots)
    fill = WAVES_PER_BATCH * math.ceil(concurrency / slots)
    size = math.ceil(n_tiles / (BATCHES_PER_SLOT * slots))
    return max(1, min(max(size, fill), max(MAX_BATCH_TILES, fill), n_tiles))


def cut_batches(
    pending: Sequence[T], slots: int, concurrency: int, size: int | None = None
) -> list[list[T]]:
    """``pending`` in order, in batches of ``size`` (default ``batch_size``); the last may be
    shorter."""
    if size is None:
        size = batch_size(len(pending), slots, concurrency)
    return list(iter_batches(pending, size))


def iter_batches(pending: Iterable[T], size: int) -> Iterator[list[T]]:
    """``pending`` in order, ``size`` at a time, taken from the iterable only as asked for."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    iterator = iter(pending)
    while batch := list(itertools.islice(iterator, size)):
        yield batch
