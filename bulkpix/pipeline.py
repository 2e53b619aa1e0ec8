"""The async core: plan every item, then fetch, decode, write and record each tile.

The CLI and the sync API (``bulkpix.run``) are thin shells over ``run_job``. Order matters for
safety: everything that can refuse a job (the job file, the asset's metadata, the bands, the
region, an output holding another job) is checked before the store is touched, so bad input
never leaves a half-made output behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from zarr.abc.store import Store
from zarr.core.buffer import default_buffer_prototype

from bulkpix.assets import asset_name
from bulkpix.ee.auth import load_credentials
from bulkpix.ee.client import EEClient, Timeouts
from bulkpix.ee.decode import decode_pixels
from bulkpix.errors import (
    JobError,
    PermanentError,
    PermissionDenied,
    RemoteError,
    RequestTooLarge,
    RetryableError,
    StoreError,
    StoreMismatch,
    Unauthenticated,
)
from bulkpix.geometry.tiling import Tile, split_tile
from bulkpix.job import EmulatorSection, Job
from bulkpix.planning import (
    AssetInfo,
    ItemPlan,
    parse_asset,
    plan_item,
    replan_with_tile,
    request_body,
)
from bulkpix.store.record import TileRecord, fingerprint_diff
from bulkpix.store.write_loop import WriteLoop
from bulkpix.store.zarr_store import (
    ItemWriter,
    consolidate,
    has_keys_under,
    mark_batch_root,
    open_store,
)
from bulkpix.transfer.budget import ByteBudget
from bulkpix.transfer.limits import Governor
from bulkpix.transfer.pool import run_workers
from bulkpix.transfer.retry import RetryBudget, RetryPolicy, retrying

__all__ = ["ItemStats", "RunStats", "plan_job", "run_job"]

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
class RunStats:
    """Live counters of a whole run."""

    items: list[ItemStats] = field(default_factory=list)
    retries: int = 0
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    interrupted: bool = False
    aborted: str | None = None  # why the run stopped by itself, if it did
    governor: Governor | None = None

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


# --------------------------------------------------------------------------- endpoint


@contextlib.asynccontextmanager
async def _endpoint_url(job: Job) -> AsyncIterator[str]:
    """The base URL to talk to; ``emulator`` starts the stand-in server in this process."""
    if job.endpoint != "emulator":
        yield job.endpoint
        return
    # Imported only here: the download path never loads the emulator otherwise.
    from bulkpix.emulator import EmulatorConfig, SyntheticAsset, emulator_in_thread

    section = job.emulator or EmulatorSection()
    synthetic = {}
    for name, size in section.synthetic.items():
        width, height = (int(v) for v in size.split("x"))
        synthetic[asset_name(name)] = SyntheticAsset(width=width, height=height)
    assets = {
        asset_name(name): [str(_job_path(job, p)) for p in paths]
        for name, paths in section.assets.items()
    }
    # An asset the section does not mention is served as a synthetic one, so a job that
    # only says `endpoint: emulator` runs as is.
    for item in job.resolved_items():
        name = asset_name(item.asset or "")
        if name not in assets and name not in synthetic:
            synthetic[name] = SyntheticAsset(width=20000, height=20000)
    config = EmulatorConfig(
        assets=assets,
        synthetic=synthetic,
        max_concurrent=section.max_concurrent,
        max_qps=section.max_qps,
        qps_window=section.qps_window,
        service_base_s=section.service_base_s,
        service_per_mb_s=section.service_per_mb_s,
        seed=section.seed,
    )
    # On its own thread and event loop, so serving does not queue behind the download's work.
    with contextlib.ExitStack() as stack:
        try:
            emu = await asyncio.to_thread(stack.enter_context, emulator_in_thread(config))
        except ValueError as exc:  # an asset file it cannot read, and the like
            raise JobError(f"emulator: {exc}") from None
        try:
            yield emu.url
        finally:
            await asyncio.to_thread(stack.close)


def _job_path(job: Job, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else job.base_dir / p


# --------------------------------------------------------------------------- planning


async def _fetch_assets(job: Job, client: EEClient, retry: _Retry) -> dict[str, AssetInfo]:
    """One GET per distinct asset, for band types and the native grid."""
    infos: dict[str, AssetInfo] = {}
    for item in job.resolved_items():
        name = asset_name(item.asset or "")
        if name not in infos:
            metadata = await retry(lambda n=name: client.get_asset(n))
            infos[name] = parse_asset(metadata, name)
    return infos


def _plan_items(job: Job, infos: dict[str, AssetInfo]) -> list[ItemPlan]:
    plans = []
    for index, spec in enumerate(job.resolved_items()):
        try:
            plans.append(plan_item(spec, infos[asset_name(spec.asset or "")], job))
        except JobError as exc:
            if job.is_batch:
                raise JobError(f"item {spec.name or index}: {exc}") from None
            raise
    return plans


async def plan_job(job: Job) -> list[ItemPlan]:
    """Every item's grid and tiles; one metadata GET per asset, no pixels."""
    async with _session(job) as (client, retry, _stats):
        return _plan_items(job, await _fetch_assets(job, client, retry))


# --------------------------------------------------------------------------- the run


class _Stopped(Exception):
    """The run was asked to stop while a tile waited to be retried: abandon the tile."""


class _Retry:
    """The run's one retry loop, bound to its policy, budget and counters.

    Its backoff sleeps end early when the run is asked to stop: Ctrl-C stops issuing requests
    at once, and a tile caught between attempts is left for the next run, not failed.
    """

    def __init__(self, job: Job, stats: RunStats) -> None:
        self.policy = RetryPolicy(
            max_attempts=job.retries.max_attempts,
            base_s=job.retries.backoff_base,
            cap_s=job.retries.backoff_cap,
        )
        self.budget = RetryBudget(job.retries.budget)
        self.rng = random.Random()
        self.stats = stats
        self.stop = asyncio.Event()

    async def _sleep(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), delay)
        if self.stop.is_set():
            raise _Stopped

    def _on_retry(self, exc: BaseException, attempt: int, delay: float) -> None:
        self.stats.retries += 1

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
async def _session(job: Job) -> AsyncIterator[tuple[EEClient, _Retry, RunStats]]:
    stats = RunStats()
    auth = load_credentials(job.credentials_spec)
    governor = Governor(job.concurrency, job.qps)
    stats.governor = governor
    async with _endpoint_url(job) as url:
        client = EEClient(
            url,
            auth=auth,
            governor=governor,
            project=job.project,
            api_version=job.api_version,
            timeouts=Timeouts(
                connect_s=job.timeouts.connect,
                read_s=job.timeouts.read,
                total_s=job.timeouts.total,
            ),
            pool_size=job.concurrency,
        )
        async with client:
            yield client, _Retry(job, stats), stats


def _check_output_location(output: str) -> None:
    """Refuse an output that cannot be ours before anything is written."""
    if "://" in output:
        return
    path = Path(output).expanduser()
    for link in (path, *path.parents):
        if link.is_symlink() and not link.exists():  # mkdir would say only "File exists"
            raise JobError(
                f"output {output}: {link} is a symbolic link to {os.readlink(link)}, which "
                "does not exist; create its target, or remove the link"
            )
    if path.is_file():
        raise JobError(f"output {output} is a file, not a Zarr store")
    if path.exists() and not path.is_dir():  # /dev/null, a FIFO, a socket
        raise JobError(f"output {output} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not (path / "zarr.json").is_file():
        raise JobError(f"output {output} exists and is not a Zarr store; choose another path")
    if not path.exists():
        parent = path.parent if str(path.parent) else Path(".")
        probe = parent
        while not probe.exists():
            probe = probe.parent
        if probe.is_file():
            raise JobError(f"output {output}: {probe} is a file, not a directory")


async def _node_attributes(store: Store, path: str) -> dict[str, Any] | None:
    """The attributes of the Zarr node at ``path``, or None when there is none."""
    key = f"{path}/zarr.json" if path else "zarr.json"
    buffer = await store.get(key, prototype=default_buffer_prototype())
    if buffer is None:
        return None
    try:
        document = json.loads(buffer.to_bytes())
    except ValueError:
        return {}
    attributes = document.get("attributes") if isinstance(document, dict) else None
    return attributes if isinstance(attributes, dict) else {}


async def _keys_under(store: Store, path: str, most: int) -> list[str]:
    """Up to ``most`` keys under ``path``: enough to tell empty, bare and full apart."""
    prefix = f"{path}/" if path else ""
    keys = []
    async for key in store.list_prefix(prefix):
        keys.append(key)
        if len(keys) >= most:
            break
    return keys


async def _has_item_records(store: Store) -> bool:
    """Whether any child group of the root holds a bulkpix record (a batch output, including
    one written before batch roots were marked)."""
    async for child in store.list_dir(""):
        name = child.rstrip("/")
        if name.startswith(".") or name == "zarr.json":
            continue
        if await TileRecord(store, name).fingerprint() is not None:
            return True
    return False


async def _check_output(
    job: Job, store: Store, plans: list[ItemPlan], restart: bool
) -> list[ItemPlan]:
    """Refuse an output that holds another job, or data bulkpix did not write.

    Returns the plans to run: with ``tile: auto``, an item resumed keeps the tile shape it was
    started with, so changing the quota settings between runs does not orphan its tiles.
    """
    output = job.output
    root_attrs = await _node_attributes(store, "")
    root_fp = await TileRecord(store, "").fingerprint()
    root_mark = root_attrs.get("bulkpix") if root_attrs is not None else None
    batch_root = isinstance(root_mark, dict) and root_mark.get("batch") is True
    items_recorded = root_fp is None and await _has_item_records(store)
    keys = await _keys_under(store, "", 2)
    # Nothing at all, or only a bare root group (a run killed right after making it).
    empty = not keys or (keys == ["zarr.json"] and not root_attrs)
    ours = root_fp is not None or root_mark is not None or items_recorded
    if not empty and not ours:
        advice = "--restart will not delete it" if restart else "use another output"
        raise StoreMismatch(f"output {output} holds data bulkpix did not write; {advice}")
    if restart:
        return plans
    if job.is_batch and root_fp is not None:
        raise StoreMismatch(
            f"output {output} holds a single-item job, this is a batch; "
            "use --restart to replace it, or another output"
        )
    if not job.is_batch and root_fp is None and (batch_root or items_recorded):
        raise StoreMismatch(
            f"output {output} holds a batch job; use --restart to replace it, or another output"
        )
    checked = []
    for plan in plans:
        old = await TileRecord(store, plan.path).fingerprint()
        if old is None:
            attrs = await _node_attributes(store, plan.path)
            foreign = (attrs is not None and "bulkpix" not in attrs) or (
                attrs is None and await has_keys_under(store, plan.path)
            )
            if plan.path and foreign:
                raise StoreMismatch(
                    f"output {output} holds data bulkpix did not write at {plan.path}; "
                    "use another item name or output"
                )
            checked.append(plan)
            continue
        if job.tile == "auto":
            plan = replan_with_tile(plan, old.get("tile"))
        changes = fingerprint_diff(old, plan.fingerprint(job.compression_level))
        if changes:
            where = f"item {plan.label}" if job.is_batch else "the job"
            raise StoreMismatch(
                f"output {output} holds a different job ({where} changed: "
                f"{'; '.join(changes)}); use --restart to discard it, or another output"
            )
        checked.append(plan)
    return checked


async def _open_items(
    job: Job, store: Store, plans: list[ItemPlan], stats: RunStats
) -> list[tuple[ItemPlan, ItemWriter, TileRecord, set[str]]]:
    opened = []
    if job.is_batch:
        # Marks the root as a bulkpix batch output before any item exists in it.
        await mark_batch_root(store)
    for plan in plans:
        record = TileRecord(store, plan.path)
        fingerprint = plan.fingerprint(job.compression_level)
        if await record.fingerprint() is None:
            writer = await ItemWriter.create(
                store,
                plan.path,
                plan.grid,
                plan.bands,
                plan.tiles.chunk,
                attrs={"asset": plan.asset},
                compression_level=job.compression_level,
                overwrite=True,
            )
            await record.write_fingerprint(fingerprint)
            done: set[str] = set()
        else:
            writer = await ItemWriter.open(store, plan.path)
            done = await record.done_keys()
            for key in list((await record.failed()).keys()):
                await record.clear_failed(key)
        # Parts of split tiles have markers of their own: count the plan's tiles only.
        finished = sum(1 for key in done if plan.tiles.has_tile_key(key))
        stats.items.append(
            ItemStats(label=plan.label, total=plan.tiles.n_tiles, done_before=finished)
        )
        opened.append((plan, writer, record, done))
    return opened


@dataclass
class _Run:
    """What every tile of a run shares."""

    client: EEClient
    retry: _Retry
    budget: ByteBudget
    write_loop: WriteLoop
    write_slots: asyncio.Semaphore
    stats: RunStats
    refusals: int = 0  # tiles refused for access (401/403) in a row, since the last success


# A job whose every request is refused (credentials revoked, project lost access) stops after
# this many tiles in a row, rather than spending one request on each of its other tiles.
REFUSALS_BEFORE_STOPPING = 20


async def run_job(
    job: Job,
    *,
    restart: bool = False,
    stop: asyncio.Event | None = None,
    stats_ready: asyncio.Future[RunStats] | None = None,
) -> RunStats:
    """Run (or resume) a job; returns its counters. ``stop`` asks for a graceful halt."""
    _check_output_location(job.output)
    stop = stop or asyncio.Event()
    async with _session(job) as (client, retry, stats):
        retry.stop = stop
        try:
            infos = await _fetch_assets(job, client, retry)
        except _Stopped:  # Ctrl-C while the metadata call waited to be retried
            stats.ended = time.monotonic()
            stats.interrupted = True
            return stats
        plans = _plan_items(job, infos)
        store = await open_store(job.output)
        plans = await _check_output(job, store, plans, restart)
        if restart:
            await _clear_store(store)
        opened = await _open_items(job, store, plans, stats)
        # Metadata is complete once every item exists: consolidate now, once, so xarray
        # opens the store (or any item of it) with one read even while tiles are written.
        await consolidate(store)
        if stats_ready is not None and not stats_ready.done():
            stats_ready.set_result(stats)
        stats.started = time.monotonic()

        def work() -> Iterator[tuple[int, Tile]]:
            for index, (plan, _w, _r, done) in enumerate(opened):
                for tile in plan.tiles.tiles():
                    if stats.items[index].abandoned:
                        break
                    if tile.key not in done:
                        yield index, tile

        async with WriteLoop() as write_loop:
            run = _Run(
                client=client,
                retry=retry,
                budget=ByteBudget(job.memory_mb * 2**20),
                write_loop=write_loop,
                # Two tiles compress at once: more only lengthens stalls on 2 cores.
                write_slots=asyncio.Semaphore(2),
                stats=stats,
            )

            async def handle(work_item: tuple[int, Tile]) -> None:
                index, tile = work_item
                if stop.is_set() or stats.items[index].abandoned:
                    return
                plan, writer, record, done = opened[index]
                if await _process_tile(run, plan, writer, record, done, stats.items[index], tile):
                    stats.items[index].done += 1

            try:
                await run_workers(work(), handle, workers=job.concurrency, stop=stop)
            finally:
                stats.ended = time.monotonic()
                stats.interrupted = stop.is_set() and stats.aborted is None
        return stats


async def _process_tile(
    run: _Run,
    plan: ItemPlan,
    writer: ItemWriter,
    record: TileRecord,
    done: set[str],
    item_stats: ItemStats,
    tile: Tile,
    part_failures: list[RemoteError] | None = None,
) -> bool:
    """Fetch, decode, write and record one tile; True once it is recorded as finished.

    Permanent failures are recorded, not raised. A tile the server finds too large is split
    in four; it is recorded as finished when all its parts are (or as failed, once, when one
    is not: a part's failure goes to ``part_failures``), and a resumed run skips the parts
    already finished.
    """

    async def fail(exc: RemoteError) -> bool:
        if part_failures is not None:
            part_failures.append(exc)
        else:
            await _record_failure(run, record, item_stats, tile, exc)
        return False

    band_ids = plan.band_ids(tile.group)
    grid = plan.grid.window_grid(tile.window)
    body = request_body(plan, grid, band_ids)
    dtypes = [plan.bands[i].dtype for i in plan.tiles.band_groups[tile.group]]
    height, width = tile.window.height, tile.window.width
    body_bytes = height * width * sum(d.itemsize for d in dtypes)
    held = 0

    async def take_budget() -> None:
        nonlocal held
        held = await run.budget.acquire(body_bytes)

    async def fetch_and_decode() -> tuple[int, dict[str, np.ndarray]]:
        nonlocal held
        try:
            payload = await run.client.get_pixels(plan.asset, body, before_body=take_budget)
            if plan.file_format == "NPY":  # views into the payload, no copy: cheap
                arrays = decode_pixels(payload, "NPY", band_ids, dtypes, height, width)
            else:
                arrays = await asyncio.to_thread(
                    decode_pixels, payload, plan.file_format, band_ids, dtypes, height, width
                )
            return len(payload), arrays
        except BaseException:
            run.budget.release(held)
            held = 0
            raise

    try:
        try:
            nbytes, arrays = await run.retry(fetch_and_decode)
        except _Stopped:
            return False  # left for the next run, not a failure
        except RequestTooLarge as exc:
            parts = split_tile(tile, plan.tiles.chunk)
            if len(parts) == 1:
                return await fail(exc)
            failures: list[RemoteError] = []
            finished = True
            for part in parts:
                if part.key in done:
                    continue
                if run.retry.stop.is_set() or not await _process_tile(
                    run, plan, writer, record, done, item_stats, part, failures
                ):
                    finished = False
            if finished:
                await record.mark_done(tile.key)
            elif failures:
                first = failures[0]
                summary = type(first)(
                    f"{len(failures)} of {len(parts)} parts failed: {first.message}",
                    status=first.status,
                )
                await fail(summary)
            return finished
        except (PermanentError, RetryableError) as exc:
            return await fail(exc)
        async with run.write_slots:
            await run.write_loop.run(writer.write_tile(tile.window, arrays))
        del arrays
    finally:
        run.budget.release(held)
        held = 0
    # Only now, with every chunk of the tile stored, does the tile count as finished.
    await record.mark_done(tile.key)
    item_stats.bytes += nbytes
    item_stats.refusals = 0
    return True


async def _record_failure(
    run: _Run, record: TileRecord, item_stats: ItemStats, tile: Tile, exc: RemoteError
) -> None:
    reason = exc.message
    if isinstance(exc, RetryableError):
        reason = f"gave up after retries: {reason}"
    item_stats.failed[tile.key] = reason
    await record.mark_failed(tile.key, reason)
    if not isinstance(exc, Unauthenticated | PermissionDenied):
        return
    item_stats.refusals += 1
    if item_stats.refusals < REFUSALS_BEFORE_STOPPING or item_stats.abandoned:
        return
    why = f"{item_stats.refusals} tiles in a row were refused access ({reason})"
    if isinstance(exc, Unauthenticated):  # the credentials, not one asset: stop everything
        run.stats.aborted = f"stopped: {why}"
        run.retry.stop.set()
    else:
        item_stats.abandoned = f"left the rest of item {item_stats.label}: {why}"


async def _clear_store(store: Store) -> None:
    try:
        await store.delete_dir("")
    except (OSError, NotImplementedError) as exc:
        raise StoreError(f"cannot clear the old output: {exc}") from None
