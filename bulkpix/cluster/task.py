"""A worker's side of a cluster run: one batch of tiles through bulkpix's own pipeline.

A batch is a Dask task: an ``async`` function, so it runs in the worker's event loop, with the
same worker pool, retry loop, byte budget and write path as a run on one machine. Its requests
take their slots from the cluster's quota (``quota.ClusterGovernor``); its tiles are written
straight into the shared output, chunk-aligned and lock-free, and recorded there one marker
each. A batch rerun after its worker died skips the tiles that attempt finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import platform
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bulkpix.cluster.quota import ClusterGovernor
from bulkpix.errors import StoreError
from bulkpix.job import Job
from bulkpix.pipeline import ItemStats, RunItems, RunStats, TileWork, open_session, run_work
from bulkpix.store.output import attach_items

if TYPE_CHECKING:
    from bulkpix.geometry.tiling import Tile
    from bulkpix.planning import ItemPlan

__all__ = ["BatchResult", "ClusterRun", "run_batch"]

# How often a worker tells the submitting client what its batch has done.
REPORT_EVERY_S = 0.5


@dataclass(frozen=True)
class ClusterRun:
    """What every batch of one run shares, sent to each worker once."""

    run_id: str  # the quota's name on the scheduler and the progress topic
    job: Job
    plans: tuple[ItemPlan, ...]
    url: str  # the service, as the submitting client resolved it


@dataclass
class BatchResult:
    """How one batch ended, for the submitting client's summary."""

    worker: str
    done: dict[int, tuple[int, int]] = field(default_factory=dict)  # item: (tiles, bytes)
    retries: int = 0
    failed: dict[int, dict[str, str]] = field(default_factory=dict)
    abandoned: dict[int, str] = field(default_factory=dict)
    aborted: str | None = None
    stopped: bool = False  # the run was stopping: tiles were left for the next run
    notices: list[str] = field(default_factory=list)
    computation_limits: int = 0


async def run_batch(shared: ClusterRun, batch: list[tuple[int, Tile]]) -> BatchResult:
    """Fetch, write and record ``batch`` ((item number, tile) pairs) on this worker."""
    try:
        from distributed import get_worker
    except ImportError:  # a worker without dask cannot have started this task
        raise
    worker = get_worker()
    _restore_mmap_threshold()
    job = shared.job
    stop = asyncio.Event()
    keys: dict[int, list[str]] = {}
    for index, tile in batch:
        keys.setdefault(index, []).append(tile.key)
    try:
        opened = await attach_items(job, {i: shared.plans[i] for i in keys}, keys)
    except StoreError as exc:
        raise StoreError(
            f"worker {worker.address} cannot open the output {job.output}: {exc}; every worker "
            "must reach the output (a shared filesystem, or an object store such as s3://)"
        ) from None
    governor = ClusterGovernor(worker, shared.run_id, stop)
    async with open_session(job, stop, governor=governor, url=shared.url) as session:
        client, retry, stats = session
        stats.items = [ItemStats(label=plan.label, total=0) for plan in shared.plans]
        work = [TileWork(i, tile) for i, tile in batch if tile.key not in opened[i].done]
        async with _reporting(worker, shared.run_id, stats):
            await run_work(job, client, retry, stats, RunItems.opened_now(opened), work, stop)
    return BatchResult(
        worker=worker.address,
        done={
            i: (item.done, item.bytes)
            for i, item in enumerate(stats.items)
            if item.done or item.bytes
        },
        retries=stats.retries,
        failed={i: dict(item.failed) for i, item in enumerate(stats.items) if item.failed},
        abandoned={i: item.abandoned for i, item in enumerate(stats.items) if item.abandoned},
        aborted=stats.aborted,
        stopped=stop.is_set() and stats.aborted is None,
        notices=list(stats.notices),
        computation_limits=stats.computation_limits,
    )


@functools.cache
def _restore_mmap_threshold() -> bool:
    """Undo, for large buffers, what Dask's nanny does to glibc's malloc; once per process.

    The nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also turns off
    glibc's dynamic mmap threshold: every response body and chunk buffer over 128 KiB then
    becomes a fresh mmap, zero-filled by the kernel (measured: twice the system time and five
    times the page faults of a plain process, benchmarks/RESULTS.md). A fixed threshold of
    32 MiB (glibc's largest) lets the heap reuse those buffers again. Returns whether it did.
    """
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    m_mmap_threshold = -3  # malloc.h
    try:
        return bool(ctypes.CDLL(None).mallopt(m_mmap_threshold, 32 * 2**20))
    except (OSError, AttributeError):
        return False


@contextlib.asynccontextmanager
async def _reporting(worker: Any, topic: str, stats: RunStats) -> AsyncIterator[None]:
    """Send what the batch has done since the last report, every ``REPORT_EVERY_S`` and at
    the end, as events the submitting client subscribes to (no round trip)."""
    sent_retries = 0
    sent = [(0, 0)] * len(stats.items)  # per item: (tiles, bytes) reported so far

    def report() -> None:
        nonlocal sent_retries
        items: dict[str, tuple[int, int]] = {}
        for i, item in enumerate(stats.items):
            tiles, nbytes = sent[i]
            if (item.done, item.bytes) != (tiles, nbytes):
                items[str(i)] = (item.done - tiles, item.bytes - nbytes)
                sent[i] = (item.done, item.bytes)
        retries = stats.retries - sent_retries
        if items or retries:
            sent_retries = stats.retries
            worker.log_event(topic, {"items": items, "retries": retries})

    async def every() -> None:
        while True:
            await asyncio.sleep(REPORT_EVERY_S)
            report()

    reporter = asyncio.create_task(every())
    try:
        yield
    finally:
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
        report()
