"""The Python API: ``await bulkpix.arun(job)`` and ``bulkpix.run(job)``, ``plan``, ``open``.

The sync forms are thin shells over the async core. Inside a running event loop (Jupyter, an
async web app) ``asyncio.run`` is refused, so there the sync form runs the coroutine on a loop
of its own, on a thread, as zarr's ``sync()`` does, and blocks until it is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import xarray
    from rich.console import Console

    from bulkpix.job import Job
    from bulkpix.pipeline import RunStats
    from bulkpix.planning import JobPlan

__all__ = [
    "ItemSummary",
    "RunSummary",
    "WorkerSummary",
    "aplan",
    "arun",
    "load",
    "open",
    "plan",
    "run",
]

T = TypeVar("T")


@dataclass(frozen=True)
class ItemSummary:
    """One item of a finished (or stopped) run."""

    label: str
    tiles: int  # tiles in the item's plan
    finished: int  # recorded as finished, this run and earlier ones
    fetched: int  # finished by this run
    failed: dict[str, str]  # tile key -> reason
    bytes: int  # pixel bytes fetched by this run
    abandoned: str | None  # why the rest of the item was left for the next run


@dataclass(frozen=True)
class WorkerSummary:
    """What one worker of a cluster run finished."""

    address: str
    tiles: int
    bytes: int


@dataclass(frozen=True)
class RunSummary:
    """What a run did: a plain value, safe to keep after the run is gone."""

    output: str
    items: tuple[ItemSummary, ...]
    tiles: int
    finished: int
    failed: int
    bytes: int
    retries: int
    seconds: float
    interrupted: bool
    aborted: str | None  # why the run stopped by itself (access refused everywhere)
    # Computed tiles the service found too costly (memory, time, aggregations): split, or
    # failed at one chunk.
    computation_limits: int = 0
    # A cluster run's workers (empty for a run on this machine).
    workers: tuple[WorkerSummary, ...] = ()

    @property
    def complete(self) -> bool:
        """Every tile of every item is in the output."""
        return self.finished == self.tiles and self.failed == 0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    @classmethod
    def from_stats(cls, stats: RunStats, output: str) -> RunSummary:
        items = tuple(
            ItemSummary(
                label=item.label,
                tiles=item.total,
                finished=item.finished,
                fetched=item.done,
                failed=dict(item.failed),
                bytes=item.bytes,
                abandoned=item.abandoned,
            )
            for item in stats.items
        )
        return cls(
            output=output,
            items=items,
            tiles=stats.total,
            finished=stats.finished,
            failed=stats.failed,
            bytes=stats.bytes,
            retries=stats.retries,
            seconds=stats.elapsed,
            interrupted=stats.interrupted,
            aborted=stats.aborted,
            computation_limits=stats.computation_limits,
            workers=tuple(
                WorkerSummary(address, worker.tiles, worker.bytes)
                for address, worker in sorted(stats.workers.items())
            ),
        )


def load(job: str | Path | dict[str, Any] | Job) -> Job:
    """A validated job from a YAML path, a mapping shaped like the YAML file, or a Job."""
    from bulkpix.job import Job, load_job, parse_job

    if isinstance(job, Job):
        return job
    if isinstance(job, dict):
        return parse_job(job, base_dir=Path.cwd())
    return load_job(job)


async def arun(
    job: str | Path | dict[str, Any] | Job,
    *,
    restart: bool = False,
    progress: bool | None = None,
    stop: asyncio.Event | None = None,
    yes: bool = False,
    console: Console | None = None,
    dask: Any = None,
) -> RunSummary:
    """Run or resume a job to completion on the running loop; returns its summary.

    ``progress``: draw a live progress bar (None: only where someone can see it, a terminal
    or a notebook). In a notebook the bar is rich's live display, which needs ipywidgets;
    without it a plain progress line is printed every 10 s instead. ``console``: the rich
    Console to draw on (default: a new one on stdout, which finds a notebook by itself).
    ``stop``: set it to halt gracefully (the tiles in flight finish).
    ``yes``: run a job far larger than its assets' native pixels (``bulkpix.plan(job)
    .size_warning`` says why); without it such a job raises ``bulkpix.JobTooLarge`` before
    anything is written.
    ``dask``: a ``distributed.Client`` (or a scheduler address): run the tiles on that
    cluster, under the job's one quota (as ``executor: {dask: ...}`` in the job does).
    """
    from bulkpix.pipeline import run_job

    resolved = load(job)
    show = _can_show_progress(console) if progress is None else progress
    if not show:
        stats = await run_job(resolved, restart=restart, stop=stop, yes=yes, dask_client=dask)
        return RunSummary.from_stats(stats, resolved.output)

    from rich.console import Console

    from bulkpix.progress import progress_display

    stats_ready: asyncio.Future[RunStats] = asyncio.get_running_loop().create_future()
    async with progress_display(console or Console(), stats_ready):
        stats = await run_job(
            resolved, restart=restart, stop=stop, stats_ready=stats_ready, yes=yes,
            dask_client=dask,
        )
    return RunSummary.from_stats(stats, resolved.output)


def run(
    job: str | Path | dict[str, Any] | Job,
    *,
    restart: bool = False,
    progress: bool | None = None,
    yes: bool = False,
    console: Console | None = None,
    dask: Any = None,
) -> RunSummary:
    """``arun`` for callers without a loop, or inside one (a notebook cell): blocks until done.

    Ctrl-C (a notebook's "interrupt") stops gracefully: the tiles in flight finish, and the
    summary says ``interrupted``; a second one aborts at once. Either way a rerun resumes.
    """
    return _sync(
        lambda stop: arun(
            job, restart=restart, progress=progress, stop=stop, yes=yes, console=console,
            dask=dask,
        )
    )


async def aplan(job: str | Path | dict[str, Any] | Job) -> JobPlan:
    """Each item's output grid and tiles (asset metadata only, no pixels), as a sequence of
    ``ItemPlan``, with the job's time and disk estimates (``.estimate``, ``.item_estimates``)
    and ``.size_warning`` (why ``run`` would ask for ``yes=True``, or None)."""
    from bulkpix.pipeline import plan_job
    from bulkpix.planning import job_plan

    resolved = load(job)
    return job_plan(await plan_job(resolved), resolved)


def plan(job: str | Path | dict[str, Any] | Job) -> JobPlan:
    """``aplan``, from sync code or inside a running loop."""
    return _sync(lambda _stop: aplan(job))


def open(output: str | Path, item: str | None = None, **kwargs: Any) -> xarray.Dataset:
    """The output (or one item of a batch output) as an xarray Dataset, CRS and transform
    decoded (rioxarray's ``.rio`` accessor works when rioxarray is installed).

    Needs xarray: ``pip install 'bulkpix[xarray]'``. Extra keyword arguments go to
    ``xarray.open_zarr``.
    """
    try:
        import xarray as xr
    except ImportError:
        raise ImportError(
            "bulkpix.open needs xarray: pip install 'bulkpix[xarray]'"
        ) from None
    with contextlib.suppress(ImportError):
        import rioxarray  # noqa: F401  (registers the .rio accessor)
    kwargs.setdefault("decode_coords", "all")
    ds = xr.open_zarr(str(output), group=item, **kwargs)
    # Zarr lists arrays in no set order: put the bands in the job's order.
    info = ds.attrs.get("bulkpix")
    order = [b.get("id") for b in info.get("bands", [])] if isinstance(info, dict) else []
    if order and set(order) == set(ds.data_vars):
        ds = ds[order]
    return ds


# --------------------------------------------------------------------------- sync shell


def _sync(make: Callable[[asyncio.Event | None], Coroutine[Any, Any, T]]) -> T:
    """Run ``make(stop)`` to completion from sync code, whether or not a loop is running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run_here(make)
    return _run_on_thread(make)


def _run_here(make: Callable[[asyncio.Event | None], Coroutine[Any, Any, T]]) -> T:
    async def main() -> T:
        return await _stoppable(make, asyncio.Event())

    return asyncio.run(main())


async def _stoppable(
    make: Callable[[asyncio.Event | None], Awaitable[T]], stop: asyncio.Event
) -> T:
    """``make(stop)``, where a first cancellation (Ctrl-C) asks for a graceful stop and a
    second one goes through."""
    task = asyncio.ensure_future(make(stop))
    while True:
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if stop.is_set() or task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                raise
            stop.set()


def _run_on_thread(make: Callable[[asyncio.Event | None], Coroutine[Any, Any, T]]) -> T:
    """Run on a fresh loop on its own thread; the caller's thread waits (the caller's loop is
    blocked meanwhile, exactly as zarr's sync() blocks it)."""
    outcome: dict[str, Any] = {}
    ready = threading.Event()
    state: dict[str, Any] = {}

    def main() -> None:
        loop = asyncio.new_event_loop()
        state["loop"] = loop
        stop = asyncio.Event()
        state["stop"] = stop
        asyncio.set_event_loop(loop)
        try:
            task = loop.create_task(make(stop))
            state["task"] = task
            ready.set()
            outcome["value"] = loop.run_until_complete(task)
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc
        finally:
            ready.set()
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    thread = threading.Thread(target=main, name="bulkpix-sync", daemon=True)
    thread.start()
    ready.wait()
    interrupts = 0
    while thread.is_alive():
        try:
            thread.join(0.1)
        except KeyboardInterrupt:
            interrupts += 1
            loop, stop, task = state.get("loop"), state.get("stop"), state.get("task")
            if loop is None or loop.is_closed():
                raise
            if interrupts == 1 and stop is not None:
                loop.call_soon_threadsafe(stop.set)
            elif task is not None:
                loop.call_soon_threadsafe(task.cancel)
    if "error" in outcome:
        error = outcome["error"]
        if isinstance(error, asyncio.CancelledError):
            raise KeyboardInterrupt from None
        raise error
    return outcome["value"]


def _can_show_progress(console: Console | None) -> bool:
    from rich.console import Console

    console = console or Console()
    return console.is_jupyter or console.is_terminal
