"""The submitting client's side of a cluster run.

Everything that can refuse a job (metadata, planning, the output's checks and claim, the
lease) has happened once, here, before this runs. It cuts the pending tiles into batches,
opens the run's quota on the scheduler, submits one task per batch and follows them: live
progress from the workers' events, the summary from the tasks' results, and the finished
tiles counted, at the end, from the store's own record (the one owner of that fact).

Fault tolerance is Dask's: a task whose worker dies is run again elsewhere (and skips the
tiles already recorded); Ctrl-C stops the quota, so every batch ends at its next request and
leaves the rest for the next run.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bulkpix.cluster.batches import batch_size, iter_batches
from bulkpix.cluster.quota import open_quota
from bulkpix.cluster.task import BatchResult, ClusterRun, run_batch
from bulkpix.errors import JobError
from bulkpix.job import Job
from bulkpix.pipeline import RunStats, WorkerStats, item_stats

if TYPE_CHECKING:
    from bulkpix.ee.client import EEClient
    from bulkpix.store.output import OpenedItem

__all__ = ["connect", "run_on_cluster"]

CONNECT_TIMEOUT_S = 10.0  # for the scheduler to answer (it retries a refused connection)
_TASKS_AHEAD_PER_SLOT = 2  # tasks submitted ahead, per worker thread
_POLL_S = 0.5  # how often the quota's counters are read for the live display


@dataclass
class QuotaView:
    """The cluster's quota as the progress display reads a governor."""

    limit: int
    throttles: int = 0
    in_flight: int = 0


@contextlib.asynccontextmanager
async def connect(job: Job, dask_client: Any) -> AsyncIterator[Any]:
    """An asynchronous ``distributed.Client`` on this loop: the one given if it is such,
    else a new one to its scheduler (a notebook's synchronous client), to the address given,
    or to the job's ``executor.dask`` address."""
    if job.output.startswith("memory://"):
        raise JobError(
            f"output {job.output}: an in-memory store lives in one process, and a cluster's "
            "workers cannot reach it; write to a shared filesystem or an object store"
        )
    try:
        from distributed import Client
    except ImportError:
        raise JobError(
            "a Dask run needs dask.distributed: pip install 'bulkpix[dask]'"
        ) from None
    if (
        dask_client is not None
        and getattr(dask_client, "asynchronous", False)
        and dask_client.loop.asyncio_loop is asyncio.get_running_loop()
    ):
        yield dask_client
        return
    if isinstance(dask_client, str):
        address = dask_client
    elif dask_client is not None:
        address = dask_client.scheduler.address
    else:
        assert job.executor is not None
        address = job.executor.dask
    try:
        client = await Client(address, asynchronous=True, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, ValueError) as exc:
        raise JobError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
    try:
        yield client
    finally:
        await client.close()


async def run_on_cluster(
    job: Job,
    ee_client: EEClient,
    stats: RunStats,
    opened: list[OpenedItem],
    stop: asyncio.Event,
    stats_ready: asyncio.Future[RunStats] | None,
    dask: Any,
) -> None:
    """Run the pending tiles of ``opened`` on the cluster (``dask``: an asynchronous
    ``distributed.Client`` from ``connect``); ``stats`` follow it live."""
    stats.items.extend(item_stats((item.plan, item.done) for item in opened))
    # Tiles are taken from the plans lazily, a batch at a time, as tasks are submitted.
    pending = (
        (index, tile)
        for index, item in enumerate(opened)
        for tile in item.plan.tiles.tiles()
        if tile.key not in item.done
    )
    if "://" not in job.output:  # the workers' working directory may not be ours
        job = job.model_copy(update={"output": str(Path(job.output).expanduser().resolve())})
    run_id = f"bulkpix-{uuid.uuid4().hex[:16]}"
    shared = ClusterRun(run_id, job, tuple(item.plan for item in opened), ee_client.base_url)
    quota = QuotaView(limit=job.concurrency)
    stats.governor = quota
    info = await dask.scheduler.identity()
    slots = sum(w.get("nthreads", 1) for w in info.get("workers", {}).values())
    size = job.executor.batch_tiles if job.executor is not None else None
    if size is None:
        size = batch_size(stats.total - stats.finished, slots, job.concurrency)
    batches = iter_batches(pending, size)
    if stats_ready is not None and not stats_ready.done():
        stats_ready.set_result(stats)
    stats.started = time.monotonic()
    longest_wait = job.retries.max_wait
    try:
        async with open_quota(dask, run_id, job.concurrency, job.qps, longest_wait):
            await _follow(dask, shared, batches, slots, stats, quota, stop)
    finally:
        stats.ended = time.monotonic()
        stats.interrupted = stop.is_set() and stats.aborted is None
    # The store's record is the count of finished tiles (a batch lost with its worker and
    # run again must not count twice).
    for index, item in enumerate(opened):
        keys = await item.record.done_keys(validate=False)
        finished = sum(1 for key in keys if item.plan.tiles.has_tile_key(key))
        stats.items[index].done = finished - stats.items[index].done_before


async def _follow(
    dask: Any,
    shared: ClusterRun,
    batches: Iterator[list[Any]],
    slots: int,
    stats: RunStats,
    quota: QuotaView,
    stop: asyncio.Event,
) -> None:
    try:
        from distributed import as_completed
    except ImportError:  # connect() has said what to install
        raise
    run_id = shared.run_id

    def on_event(event: tuple[float, dict[str, Any]]) -> None:
        _, message = event
        worker = stats.workers.setdefault(str(message.get("worker", "?")), WorkerStats())
        for key, (tiles, nbytes) in message.get("items", {}).items():
            stats.items[int(key)].done += tiles
            stats.items[int(key)].bytes += nbytes
            worker.tiles += tiles
            worker.bytes += nbytes
        stats.retries += message.get("retries", 0)

    async def poll_quota() -> None:
        while True:
            counters = await dask.scheduler.bulkpix_quota_stats(job=run_id)
            if counters is not None:
                quota.limit = counters["limit"]
                quota.throttles = counters["throttles"]
                quota.in_flight = counters["in_flight"]
            await asyncio.sleep(_POLL_S)

    async def stop_quota_on_stop() -> None:
        await stop.wait()
        await dask.scheduler.bulkpix_quota_stop(job=run_id)

    dask.subscribe_topic(run_id, on_event)
    [shared_future] = await dask.scatter([shared], broadcast=True, hash=False)
    numbers = itertools.count()
    outstanding: set[Any] = set()
    completed = as_completed()

    def submit_next() -> None:
        """One more batch to the scheduler, unless the run is stopping or all are out."""
        batch = None if stop.is_set() else next(batches, None)
        if batch is not None:
            key = f"{run_id}-{next(numbers)}"
            future = dask.submit(run_batch, shared_future, batch, key=key, pure=False)
            outstanding.add(future)
            completed.add(future)

    # A bounded number of tasks ahead of the workers, as the local pool keeps a bounded queue:
    # enough to keep every worker thread busy (and a joining worker can steal from them).
    for _ in range(_TASKS_AHEAD_PER_SLOT * max(1, slots)):
        submit_next()
    helpers = [asyncio.create_task(poll_quota()), asyncio.create_task(stop_quota_on_stop())]
    results: list[BatchResult] = []
    try:
        async for future in completed:
            outstanding.discard(future)
            result: BatchResult = await future
            results.append(result)
            if result.aborted and stats.aborted is None:
                stats.aborted = result.aborted
                stop.set()
            submit_next()
    finally:
        for helper in helpers:
            helper.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        if any(not f.done() for f in outstanding):
            stop.set()
            with contextlib.suppress(Exception):
                await dask.scheduler.bulkpix_quota_stop(job=run_id)
            await dask.cancel(list(outstanding))
        dask.unsubscribe_topic(run_id)
    _summarise(stats, results)


def _summarise(stats: RunStats, results: list[BatchResult]) -> None:
    """The run's totals from the batches' own results (events may still be in transit)."""
    for item in stats.items:
        item.bytes = 0
    stats.retries = sum(r.retries for r in results)
    stats.workers = {}
    for result in results:
        worker = stats.workers.setdefault(result.worker, WorkerStats())
        for index, (tiles, nbytes) in result.done.items():
            stats.items[index].bytes += nbytes
            worker.tiles += tiles
            worker.bytes += nbytes
        for index, failed in result.failed.items():
            stats.items[index].failed.update(failed)
        for index, why in result.abandoned.items():
            stats.items[index].abandoned = stats.items[index].abandoned or why
        for notice in result.notices:
            if notice not in stats.notices:
                stats.notices.append(notice)
        stats.computation_limits += result.computation_limits
