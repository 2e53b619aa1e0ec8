"""The async core: plan every item, then fetch, decode, write and record each tile.

The CLI and the sync API (``bulkpix.run``) are thin shells over ``run_job``. Order matters for
safety: everything that can refuse a job (the job file, the asset's metadata, the bands, the
region, an output holding another job) is checked before the store is touched, so bad input
never leaves a half-made output behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
)
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from bulkpix.ee.auth import load_credentials
from bulkpix.ee.client import EEClient, RequestTimeouts
from bulkpix.errors import (
    ComputationLimited,
    JobError,
    JobTooLarge,
    PermanentError,
    PermissionDenied,
    RemoteError,
    RequestTooLarge,
    RetryableError,
    RunStopped,
    TooManyBands,
    Unauthenticated,
    printable,
)
from bulkpix.job import Job
from bulkpix.mosaic_run import assemble_tile, assembly_slots
from bulkpix.sources import gather_all, import_store_side, plan_items, resolve_sources
from bulkpix.store.location import check_output_location
from bulkpix.store.state import absent_output
from bulkpix.store.write_loop import WriteLoop
from bulkpix.transfer.array_pool import ArrayPool
from bulkpix.transfer.budget import ByteBudget
from bulkpix.transfer.limits import Governor, GovernorLike, GovernorView
from bulkpix.transfer.pool import run_workers
from bulkpix.transfer.retry import RetryBudget, RetryPolicy, retrying

# Planning and the store (numpy, zarr, rasterio: about half a second of imports on a slow
# machine) are imported where they are used, after the first request is on its way:
# `bulkpix.sources` loads them on a thread while the first metadata call is in flight.
if TYPE_CHECKING:
    import numpy as np
    from zarr.abc.store import Store

    from bulkpix.geometry.tiling import Tile
    from bulkpix.planning import ItemPlan
    from bulkpix.store.output import ClaimedOutput, OpenedItem
    from bulkpix.store.record import TileRecord
    from bulkpix.store.state import OutputState

__all__ = [
    "ItemStats",
    "RunItems",
    "RunStats",
    "TileWork",
    "WorkerStats",
    "item_stats",
    "open_session",
    "plan_job",
    "run_job",
    "run_work",
]

T = TypeVar("T")


@dataclass
class ItemStats:
    """Live counters of one item; the progress display polls them."""

    label: str
    total: int
    done_before: int = 0  # finished in an earlier run
    done: int = 0  # finished in this run
    bytes: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    refusals: int = 0  # tiles refused access (401/403) in a row, since the last success
    abandoned: str | None = None  # why the rest of this item was left for the next run

    @property
    def finished(self) -> int:
        return self.done_before + self.done


@dataclass
class WorkerStats:
    """What one worker of a cluster run has finished (the cluster's progress and summary)."""

    tiles: int = 0
    bytes: int = 0


@dataclass
class RunStats:
    """Live counters of a whole run."""

    items: list[ItemStats] = field(default_factory=list)
    retries: int = 0
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    interrupted: bool = False
    aborted: str | None = None  # why the run stopped by itself, if it did
    governor: GovernorView | None = None
    # Things the user should hear about once (the progress display prints each once).
    notices: list[str] = field(default_factory=list)
    notices_shown: int = 0  # how many of them the live display has printed
    # Tiles of computed images the service found too costly ("User memory limit exceeded."
    # and the like): split, or failed at the floor.
    computation_limits: int = 0
    # A cluster run's workers, by address; empty for a run on this machine.
    workers: dict[str, WorkerStats] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(i.total for i in self.items)

    @property
    def finished(self) -> int:
        return sum(i.finished for i in self.items)

    @property
    def bytes(self) -> int:
        return sum(i.bytes for i in self.items)

    @property
    def failed(self) -> int:
        return sum(len(i.failed) for i in self.items)

    @property
    def elapsed(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    @property
    def ok(self) -> bool:
        return (
            not self.interrupted
            and self.aborted is None
            and not any(i.abandoned for i in self.items)
            and self.failed == 0
            and self.finished == self.total
        )



async def plan_job(job: Job) -> list[ItemPlan]:
    """Every item's grid and tiles; listings and one metadata GET per asset, no pixels."""
    async with open_session(job) as (client, retry, _stats):
        return plan_items(await resolve_sources(job, client, retry))


# --------------------------------------------------------------------------- the run


@contextlib.asynccontextmanager
async def _endpoint_url(job: Job) -> AsyncIterator[str]:
    """The base URL to talk to; ``emulator`` starts the stand-in server in this process."""
    if job.endpoint != "emulator":
        yield job.endpoint
        return
    # Imported only here: the download path never loads the emulator otherwise.
    from bulkpix.emulator.in_process import emulator_url

    async with emulator_url(job) as url:
        yield url


class _Retry:
    """The run's one retry loop, bound to its policy, budget and counters.

    Its backoff sleeps end early when the run's ``stop`` is set (the run owns that event):
    Ctrl-C stops issuing requests at once, and a tile caught between attempts is left for the
    next run, not failed. A server asking for a longer wait than ``retries.max_wait`` is
    told no, and the user is told once.
    """

    def __init__(self, job: Job, stats: RunStats, stop: asyncio.Event) -> None:
        self.policy = RetryPolicy(**job.retries.model_dump())
        self.budget = RetryBudget(self.policy.budget)
        self.rng = random.Random()
        self.stats = stats
        self.stop = stop
        self._said_long_wait = False

    async def _sleep(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), delay)
        if self.stop.is_set():
            raise RunStopped

    def _on_retry(self, exc: BaseException, attempt: int, delay: float) -> None:
        self.stats.retries += 1
        asked = getattr(exc, "asked_wait", None)
        if asked is not None and not self._said_long_wait:
            self._said_long_wait = True
            shown = f"{asked:,.0f} s" if asked < 1e12 else "forever"
            self.stats.notices.append(
                f"the service asked to wait {shown} before retrying; waiting "
                f"{self.policy.longest_wait:g} s at most (retries.max_wait)"
            )

    async def __call__(self, fn: Callable[[], Awaitable[T]]) -> T:
        return await retrying(
            fn,
            policy=self.policy,
            budget=self.budget,
            rng=self.rng,
            sleep=self._sleep,
            on_retry=self._on_retry,
        )


@contextlib.asynccontextmanager
async def open_session(
    job: Job,
    stop: asyncio.Event | None = None,
    *,
    governor: GovernorLike | None = None,
    url: str | None = None,
) -> AsyncIterator[tuple[EEClient, _Retry, RunStats]]:
    """The run's client, retry loop and counters. A cluster worker passes the cluster's
    ``governor`` and the ``url`` its submitting client resolved (an emulator started there)."""
    stats = RunStats()
    retry = _Retry(job, stats, stop or asyncio.Event())
    longest_wait = retry.policy.longest_wait  # what a server's Retry-After may impose
    auth = load_credentials(job.credentials_spec)
    if governor is None:
        governor = Governor(job.concurrency, job.qps, max_pause_s=longest_wait)
    stats.governor = governor
    async with contextlib.AsyncExitStack() as stack:
        if url is None:
            url = await stack.enter_async_context(_endpoint_url(job))
        client = EEClient(
            url,
            auth=auth,
            governor=governor,
            project=job.project,
            api_version=job.api_version,
            timeouts=RequestTimeouts(**job.timeouts.model_dump()),
            pool_size=job.concurrency,
            max_wait_s=longest_wait,
        )
        from bulkpix.computed_run import QuotaStatusNotice

        client.on_quota_status = QuotaStatusNotice(stats.notices)
        async with client:
            yield client, retry, stats


class RunItems:
    """The run's items by number: each plan at once, each opened item (writer, record, the
    tiles finished before) once the output is claimed. Tiles of a new output are requested
    while it is made; writing and recording a tile wait for it."""

    def __init__(self, plans: Mapping[int, ItemPlan], store: Store | None = None) -> None:
        self.plans = plans
        self.store = store  # where tiles are written: None for a new local output
        self._opened: Mapping[int, OpenedItem] = {}
        self._ready = asyncio.Event()

    @classmethod
    def opened_now(cls, opened: Mapping[int, OpenedItem]) -> RunItems:
        """Items of an output already claimed."""
        items = cls(
            {i: item.plan for i, item in opened.items()},
            next((item.writer.store for item in opened.values()), None),
        )
        items.open(opened)
        return items

    def open(self, opened: Mapping[int, OpenedItem]) -> None:
        self._opened = opened
        self._ready.set()

    async def opened(self, index: int) -> OpenedItem:
        await self._ready.wait()
        return self._opened[index]

    def finished_before(self, index: int) -> frozenset[str]:
        """The keys an earlier run finished, as far as known: none for an item not opened
        yet (a new output before its claim)."""
        item = self._opened.get(index)
        return item.done if item is not None else frozenset()


@dataclass
class _Run:
    """What every tile of a run shares. ``stop`` is the run's: Ctrl-C, or the run deciding
    by itself that it cannot go on (its credentials refused)."""

    client: EEClient
    retry: _Retry
    budget: ByteBudget
    arrays: ArrayPool
    write_loop: WriteLoop
    write_slots: asyncio.Semaphore
    stats: RunStats
    stop: asyncio.Event
    items: RunItems
    # Mosaic tiles being assembled at once: enough to keep the quota's calls in flight, no
    # more, as each holds its output buffers until its last call is in.
    assembling: asyncio.Semaphore | None = None


# A job whose every request is refused (credentials revoked, project lost access) stops after
# this many tiles in a row, rather than spending one request on each of its other tiles.
REFUSALS_BEFORE_STOPPING = 20


@dataclass
class _Split:
    """A tile the server found too large, waiting for its parts.

    It is recorded as finished once every part is, or as failed (once, with the first
    part's reason) once every part has ended and one failed; a part left by a stop leaves
    the tile for the next run, which skips the parts already finished.
    """

    work: TileWork
    remaining: int
    parts: int
    failures: list[RemoteError] = field(default_factory=list)
    incomplete: bool = False


@dataclass(frozen=True)
class TileWork:
    """One request of the run: a tile of an item, or a part of a split one.

    ``bands`` narrows the tile's band group to positions ``[lo, hi)`` when the service
    refused its band count; ``parent`` is the split this work is a part of.
    """

    item: int
    tile: Tile
    bands: tuple[int, int] | None = None
    parent: _Split | None = field(default=None, compare=False)

    @property
    def key(self) -> str:
        if self.bands is None:
            return self.tile.key
        return f"{self.tile.key}_b{self.bands[0]}-{self.bands[1]}"


async def run_job(
    job: Job,
    *,
    restart: bool = False,
    stop: asyncio.Event | None = None,
    stats_ready: asyncio.Future[RunStats] | None = None,
    yes: bool = False,
    dask_client: Any = None,
) -> RunStats:
    """Run (or resume) a job; returns its counters. ``stop`` asks for a graceful halt.

    With a ``dask_client`` (a ``distributed.Client``, asynchronous) or the job's
    ``executor.dask`` address, the tiles run on that Dask cluster (``bulkpix.cluster``):
    everything up to the output's claim still happens here, once.

    A job far larger than its assets' native pixels (``planning.size_warning``) raises
    ``JobTooLarge`` before the output is touched, unless ``yes``; items an earlier run has
    started are not asked about again.
    """
    check_output_location(job.output)
    on_cluster = dask_client is not None or job.executor is not None
    if on_cluster:
        try:
            from bulkpix.cluster.submit import connect, run_on_cluster
        except ImportError as exc:
            raise JobError(str(exc)) from None
    stop = stop or asyncio.Event()
    async with contextlib.AsyncExitStack() as stack:
        # The cluster first: an unreachable scheduler is refused before the output is made.
        dask = await stack.enter_async_context(connect(job, dask_client)) if on_cluster else None
        client, retry, stats = await stack.enter_async_context(open_session(job, stop))
        # A local output that does not exist yet needs no inspecting (nor zarr) first.
        state = absent_output(job.output)
        try:
            sources = await resolve_sources(job, client, retry, load_store_side=state is None)
        except RunStopped:  # Ctrl-C while the metadata call waited to be retried
            stats.ended = time.monotonic()
            stats.interrupted = True
            return stats
        job = sources.job  # a collection with layout items makes it a batch (same output)
        if state is None:
            from bulkpix.store.output import inspect_output

            state = await inspect_output(job.output, [s.name or "" for s in sources.items])
        plans = plan_items(sources, state, stats.notices, keep_images=not restart)
        if not yes:
            started = {path for path, item in state.items.items() if item.done and not restart}
            from bulkpix.planning import size_warning

            warning = size_warning([p for p in plans if p.path not in started])
            if warning is not None:
                raise JobTooLarge(warning)
        if state.absent and not on_cluster:
            output = await _fetch_while_claiming(
                job, plans, state, restart, client, retry, stats, stop, stats_ready, stack
            )
        else:
            from bulkpix.store.output import claim_output

            output = await stack.enter_async_context(
                claim_output(job, plans, state, restart=restart)
            )
            if on_cluster:
                await run_on_cluster(job, client, stats, output.items, stop, stats_ready, dask)
            else:
                opened = dict(enumerate(output.items))
                stats.items.extend(item_stats((item.plan, item.done) for item in output.items))
                await _run_tiles(
                    job, client, retry, stats, RunItems.opened_now(opened), stop, stats_ready
                )
        await _mark_complete_items(output.store, output.items, stats)
        return stats


async def _fetch_while_claiming(
    job: Job,
    plans: list[ItemPlan],
    state: OutputState,
    restart: bool,
    client: EEClient,
    retry: _Retry,
    stats: RunStats,
    stop: asyncio.Event,
    stats_ready: asyncio.Future[RunStats] | None,
    stack: contextlib.AsyncExitStack,
) -> ClaimedOutput:
    """A new local output: its first tiles are requested while it is made (the store's
    imports and the claim take a few hundred milliseconds on a slow machine, the first
    wave of requests longer). Nothing is written before the claim; if it fails, the
    requests are cancelled and its error raised, and a failure fetching cancels the claim.

    Another run of the same job may make the output first and join its lease: the claim
    then finds tiles finished, which the counters take in and no tile writes again (at
    most the requests already in flight were spent on them).
    """
    # A new local output is a LocalStore: writing on a second loop is safe (WriteLoop).
    items = RunItems(dict(enumerate(plans)))
    stats.items.extend(item_stats((plan, ()) for plan in plans))
    claimed: list[ClaimedOutput] = []

    async def claim() -> None:
        await asyncio.to_thread(import_store_side)
        from bulkpix.store.output import claim_output
        from bulkpix.store.write_loop import second_loop_safe

        output = await stack.enter_async_context(
            claim_output(job, plans, state, restart=restart)
        )
        assert second_loop_safe(output.store), "a new local output is a LocalStore"
        claimed.append(output)
        for item, counters in zip(output.items, stats.items, strict=True):
            counters.done_before = _finished_tiles(item.plan, item.done)
        items.open(dict(enumerate(output.items)))

    async def fetch() -> None:
        await _run_tiles(job, client, retry, stats, items, stop, stats_ready)

    await gather_all([claim(), fetch()])
    return claimed[0]


def item_stats(items: Iterable[tuple[ItemPlan, Collection[str]]]) -> list[ItemStats]:
    """Each item's counters at the start of a run, from its plan and the keys an earlier
    run finished."""
    return [
        ItemStats(
            label=plan.label,
            total=plan.tiles.n_tiles,
            done_before=_finished_tiles(plan, done),
        )
        for plan, done in items
    ]


def _finished_tiles(plan: ItemPlan, done: Collection[str]) -> int:
    # Parts of split tiles have markers of their own: count the plan's tiles only.
    return sum(1 for key in done if plan.tiles.has_tile_key(key))


async def _run_tiles(
    job: Job,
    client: EEClient,
    retry: _Retry,
    stats: RunStats,
    items: RunItems,
    stop: asyncio.Event,
    stats_ready: asyncio.Future[RunStats] | None,
) -> RunStats:
    """Every tile of ``items`` not finished before (``stats.items`` already counts them)."""
    if stats_ready is not None and not stats_ready.done():
        stats_ready.set_result(stats)
    stats.started = time.monotonic()

    def work() -> Iterator[TileWork]:
        for index, plan in items.plans.items():
            for tile in plan.tiles.tiles():
                if stats.items[index].abandoned:
                    break
                # Looked up per tile: a new output's claim may still find some finished.
                if tile.key not in items.finished_before(index):
                    yield TileWork(index, tile)

    try:
        await run_work(job, client, retry, stats, items, work(), stop)
    finally:
        stats.ended = time.monotonic()
        stats.interrupted = stop.is_set() and stats.aborted is None
    return stats


async def run_work(
    job: Job,
    client: EEClient,
    retry: _Retry,
    stats: RunStats,
    items: RunItems,
    work: Iterable[TileWork],
    stop: asyncio.Event,
) -> None:
    """Fetch, decode, write and record each piece of ``work`` with the job's worker pool.

    ``items`` and ``stats.items`` are indexed by item number (``TileWork.item``); a cluster
    worker opens only the items its batch touches.
    """
    budget = ByteBudget(job.memory_mb * 2**20)
    async with WriteLoop(items.store) as write_loop:
        run = _Run(
            client=client,
            retry=retry,
            budget=budget,
            arrays=ArrayPool(budget),
            write_loop=write_loop,
            # Two tiles compress at once: more only lengthens stalls on 2 cores.
            write_slots=asyncio.Semaphore(2),
            stats=stats,
            stop=stop,
            items=items,
            assembling=assembly_slots(job, items.plans.values()),
        )

        async def handle(item: TileWork) -> list[TileWork] | None:
            if stop.is_set() or stats.items[item.item].abandoned:
                await _settle(run, item, finished=False)
                return None
            if _finished_elsewhere(item, items.finished_before(item.item)):
                return None
            return await _process_tile(run, item)

        await run_workers(work, handle, workers=job.concurrency, stop=stop)


async def _mark_complete_items(
    store: Store,
    opened: list[OpenedItem],
    stats: RunStats,
) -> None:
    """Say in each finished item's attributes that it is complete (readers check it)."""
    from bulkpix.store.zarr_store import consolidate

    marked = False
    for item, item_stats in zip(opened, stats.items, strict=True):
        if (
            item_stats.finished == item_stats.total
            and not item_stats.failed
            and not item_stats.abandoned
        ):
            await item.writer.mark_complete()
            marked = True
    if marked:  # the consolidated copy of the attributes too
        await consolidate(store)


async def _process_tile(run: _Run, work: TileWork) -> list[TileWork] | None:
    """Fetch, decode, write and record one tile (or part); returns the parts to fetch
    instead when the service finds it too large.

    Permanent failures are recorded, not raised. The response body is a unit with its tile:
    budget is held from before the body is read until the tile is written, released once.
    """
    from bulkpix.ee.decode import NpyReceiver, decode_pixels, max_payload_bytes
    from bulkpix.planning import request_body

    plan = run.items.plans[work.item]
    if plan.mosaic is not None:
        assert run.assembling is not None
        async with run.assembling:
            await _process_mosaic_tile(run, work)
        return None
    tile = work.tile
    group = plan.tiles.band_groups[tile.group]
    if work.bands is not None:
        group = group[work.bands[0] : work.bands[1]]
    band_ids = [plan.bands[i].id for i in group]
    dtypes = [plan.bands[i].dtype for i in group]
    grid = plan.grid.window_grid(tile.window)
    body = request_body(plan, grid, band_ids)
    height, width = tile.window.height, tile.window.width
    most = max_payload_bytes(plan.file_format, band_ids, dtypes, height, width)

    async def fetch_and_decode() -> tuple[contextlib.AsyncExitStack, int, dict[str, np.ndarray]]:
        async with contextlib.AsyncExitStack() as attempt:
            async with (
                run.client.stream_computed(body, max_bytes=most) if plan.expression is not None
                else run.client.stream_pixels(plan.asset, body, max_bytes=most)
            ) as response:
                # Headers are in: wait for room before reading (the body waits in the socket).
                await attempt.enter_async_context(run.budget.hold(most))
                if plan.file_format == "NPY":  # decoded into the bands as it arrives
                    receiver = NpyReceiver(band_ids, dtypes, height, width, run.arrays.take)
                    nbytes = await response.read_into(receiver.feed)
                    arrays = receiver.finish()
                else:
                    payload = await response.read_pixels()
                    nbytes = len(payload)
            if plan.file_format != "NPY":  # decoded once the call's quota slot is free
                arrays = await asyncio.to_thread(
                    decode_pixels, payload, plan.file_format, band_ids, dtypes, height, width
                )
            # The hold goes with the arrays to the write; a failed attempt gives it back here.
            return attempt.pop_all(), nbytes, arrays

    try:
        held, nbytes, arrays = await run.retry(fetch_and_decode)
    except RunStopped:
        await _settle(run, work, finished=False)  # left for the next run, not a failure
        return None
    except RequestTooLarge as exc:
        if isinstance(exc, ComputationLimited):
            run.stats.computation_limits += 1
        parts = _split(work, exc, plan.tiles.chunk, len(group))
        if not parts:
            await _settle(run, work, finished=False, failure=exc)
            return None
        split = _Split(work, remaining=len(parts), parts=len(parts))
        done = (await run.items.opened(work.item)).done
        todo = [TileWork(work.item, p.tile, p.bands, split) for p in parts if p.key not in done]
        split.remaining = len(todo)
        if not todo:  # every part finished in an earlier run
            await _finish_split(run, split)
        return todo
    except (PermanentError, RetryableError) as exc:
        await _settle(run, work, finished=False, failure=exc)
        return None
    async with held:
        item = await run.items.opened(work.item)  # a new output: made while this was fetched
        if _finished_elsewhere(work, item.done):
            return None
        async with run.write_slots:
            checksums = await run.write_loop.run(item.writer.write_tile(tile.window, arrays))
    if item.writer.stores_copies:  # every chunk is in new bytes: the next tile may have them
        run.arrays.give_back(arrays.values())
    del arrays
    # Only now, with every chunk of the tile stored, does the tile count as finished.
    await item.record.mark_done(work.key, checksums)
    run.stats.items[work.item].bytes += nbytes
    run.stats.items[work.item].refusals = 0
    await _settle(run, work, finished=True)
    return None


async def _process_mosaic_tile(run: _Run, work: TileWork) -> None:
    """One output tile of a mosaic (``mosaic_run.assemble_tile``): written once, when every
    call is in, and only then recorded as done."""
    tile = work.tile
    plan = run.items.plans[work.item]
    out, outcomes = await assemble_tile(plan, tile, run.client, run.budget, run.retry)
    for outcome in outcomes:
        if isinstance(outcome, RunStopped):
            await _settle(run, work, finished=False)  # left for the next run
            return
    for outcome in outcomes:
        if isinstance(outcome, PermanentError | RetryableError):
            await _settle(run, work, finished=False, failure=outcome)
            return
        if isinstance(outcome, BaseException):
            raise outcome
    item = await run.items.opened(work.item)
    if _finished_elsewhere(work, item.done):
        return
    async with run.write_slots:
        checksums = await run.write_loop.run(
            item.writer.write_tile(tile.window, out, step=tile.step)
        )
    await item.record.mark_done(work.key, checksums)
    run.stats.items[work.item].bytes += sum(o for o in outcomes if isinstance(o, int))
    run.stats.items[work.item].refusals = 0
    await _settle(run, work, finished=True)


def _finished_elsewhere(work: TileWork, done: frozenset[str]) -> bool:
    """Whether another run of the job finished this tile before this one's claim (it made
    the output first): counted there, so neither written nor counted again here."""
    return work.parent is None and work.key in done


def _split(work: TileWork, exc: RequestTooLarge, chunk: int, n_bands: int) -> list[TileWork]:
    """The parts that help with this refusal; none when nothing can be cut.

    Too many bands: the bands in two halves, the window as it is. Too large (size or
    dimensions): the window in up to four, each with all the bands; a window of one chunk
    with several bands is cut by bands, as that is what is left to make it smaller.
    """
    lo, hi = work.bands if work.bands is not None else (0, n_bands)
    by_bands: list[TileWork] = []
    if hi - lo > 1:
        middle = lo + (hi - lo) // 2
        by_bands = [
            TileWork(work.item, work.tile, (lo, middle)),
            TileWork(work.item, work.tile, (middle, hi)),
        ]
    if isinstance(exc, TooManyBands):
        return by_bands
    from bulkpix.geometry.tiling import split_tile

    windows = split_tile(work.tile, chunk)
    if len(windows) > 1:
        return [TileWork(work.item, part, work.bands) for part in windows]
    # A computation too costly at one chunk fails there (with the service's message).
    return [] if isinstance(exc, ComputationLimited) else by_bands


async def _settle(
    run: _Run, work: TileWork, *, finished: bool, failure: RemoteError | None = None
) -> None:
    """Account for a tile or part that has ended: finished, failed, or left for later."""
    split = work.parent
    if split is None:
        if finished:
            run.stats.items[work.item].done += 1
        elif failure is not None:
            record = (await run.items.opened(work.item)).record
            await _record_failure(run, record, run.stats.items[work.item], work.key, failure)
        return
    if failure is not None:
        split.failures.append(failure)
    elif not finished:
        split.incomplete = True
    split.remaining -= 1
    if split.remaining == 0:
        await _finish_split(run, split)


async def _finish_split(run: _Run, split: _Split) -> None:
    if split.failures:
        first = split.failures[0]
        summary = type(first)(
            f"{len(split.failures)} of {split.parts} parts failed: {first.message}",
            status=first.status,
        )
        await _settle(run, split.work, finished=False, failure=summary)
    elif split.incomplete:
        await _settle(run, split.work, finished=False)
    else:
        await (await run.items.opened(split.work.item)).record.mark_done(split.work.key)
        await _settle(run, split.work, finished=True)


async def _record_failure(
    run: _Run, record: TileRecord, item_stats: ItemStats, key: str, exc: RemoteError
) -> None:
    reason = printable(exc.message, limit=1000)  # server text: no terminal escapes stored
    if isinstance(exc, RetryableError):
        reason = f"gave up after retries: {reason}"
    item_stats.failed[key] = reason
    await record.mark_failed(key, reason)
    if not isinstance(exc, Unauthenticated | PermissionDenied):
        return
    item_stats.refusals += 1
    if item_stats.refusals < REFUSALS_BEFORE_STOPPING or item_stats.abandoned:
        return
    why = f"{item_stats.refusals} tiles in a row were refused access ({reason})"
    if isinstance(exc, Unauthenticated):  # the credentials, not one asset: stop everything
        run.stats.aborted = f"stopped: {why}"
        run.stop.set()
    else:
        item_stats.abandoned = f"left the rest of item {item_stats.label}: {why}"
