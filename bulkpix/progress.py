"""Live progress and the closing summary, drawn with rich from the run's counters.

The pipeline only bumps plain counters (``RunStats``); this module polls them, so drawing never
sits on the fetch path.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from bulkpix.errors import JobTooLarge, printable
from bulkpix.pipeline import RunStats, WorkerStats

if TYPE_CHECKING:  # planning loads numpy and rasterio: only `bulkpix plan` needs it here
    from bulkpix.planning import Estimate, ItemPlan, JobPlan, MosaicPlan

__all__ = [
    "confirm_large_job",
    "live_progress",
    "print_plan",
    "print_summary",
    "progress_display",
    "text_progress",
]

_MAX_ITEM_BARS = 8
_MB = 1e6


def _fields(stats: RunStats) -> dict[str, Any]:
    elapsed = max(stats.elapsed, 1e-9)
    governor = stats.governor
    limit = f" limit {governor.limit}" if governor is not None else ""
    if stats.workers:  # a cluster run: how many workers have finished tiles so far
        limit += f" workers {len(stats.workers)}"
    return {
        "mb": f"{stats.bytes / _MB:,.1f} MB",
        "rate": f"{stats.bytes / _MB / elapsed:,.1f} MB/s",
        "retries": f"retries {stats.retries}{limit}",
    }


def _worker_fields(stats: RunStats, worker: WorkerStats) -> dict[str, Any]:
    elapsed = max(stats.elapsed, 1e-9)
    return {
        "mb": f"{worker.bytes / _MB:,.1f} MB",
        "rate": f"{worker.bytes / _MB / elapsed:,.1f} MB/s",
        "retries": "",
    }


@contextlib.asynccontextmanager
async def live_progress(
    console: Console, stats_ready: asyncio.Future[RunStats]
) -> AsyncIterator[None]:
    """Draw bars for the run (total, and each item while there are few) until the block ends."""
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("tiles {task.fields[mb]} {task.fields[rate]} {task.fields[retries]}"),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        refresh_per_second=4,
    )

    async def draw() -> None:
        stats = await stats_ready
        total_task = progress.add_task("total", total=stats.total, **_fields(stats))
        item_tasks: list[tuple[TaskID, int]] = []
        if 1 < len(stats.items) <= _MAX_ITEM_BARS:
            for index, item in enumerate(stats.items):
                task = progress.add_task(f"  {item.label}", total=item.total, **_fields(stats))
                item_tasks.append((task, index))
        worker_tasks: dict[str, TaskID] = {}
        while True:
            _show_notices(progress.console, stats)
            fields = _fields(stats)
            progress.update(total_task, total=stats.total, completed=stats.finished, **fields)
            for task, index in item_tasks:
                item = stats.items[index]
                progress.update(task, total=item.total, completed=item.finished, **fields)
            # A cluster run: each worker's share of the tiles and its own MB/s, as they report.
            for address, worker in sorted(stats.workers.items())[:_MAX_ITEM_BARS]:
                if address not in worker_tasks:
                    worker_tasks[address] = progress.add_task(
                        f"  {printable(address, limit=60)}", total=stats.total, **fields
                    )
                progress.update(
                    worker_tasks[address], completed=worker.tiles, **_worker_fields(stats, worker)
                )
            await asyncio.sleep(0.25)

    with progress:
        drawer = asyncio.create_task(draw())
        try:
            yield
        finally:
            drawer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drawer
            if stats_ready.done() and not stats_ready.cancelled():
                stats = stats_ready.result()
                _show_notices(progress.console, stats)
                for task in progress.tasks:
                    if task.description == "total":
                        progress.update(task.id, completed=stats.finished, **_fields(stats))
            # Draw the final counts now: in a notebook, stopping the display draws nothing more.
            progress.refresh()


TEXT_PROGRESS_EVERY_S = 10.0
"""Seconds between the lines of the plain progress (a notebook without ipywidgets)."""


def progress_display(
    console: Console, stats_ready: asyncio.Future[RunStats]
) -> AbstractAsyncContextManager[None]:
    """The progress display ``console`` can show.

    rich's live bars on a terminal, and in a notebook where ipywidgets is installed (rich
    redraws them in an output widget). A notebook without ipywidgets cannot redraw in place
    (rich would only warn), so there a plain line is written every
    ``TEXT_PROGRESS_EVERY_S`` seconds to the console's file, the cell's output.
    """
    if console.is_jupyter and not _has_ipywidgets():

        def write(line: str) -> None:
            console.file.write(line + "\n")
            console.file.flush()

        return text_progress(stats_ready, write)
    return live_progress(console, stats_ready)


def _has_ipywidgets() -> bool:
    try:
        importlib.import_module("ipywidgets")  # rich's live display in Jupyter draws in it
    except ImportError:
        return False
    return True


def status_line(stats: RunStats) -> str:
    """One line of progress: tiles, bytes, rate, retries and the time left at this pace."""
    from bulkpix.planning import human_seconds

    fields = _fields(stats)
    share = f" ({stats.finished / stats.total:.0%})" if stats.total else ""
    line = (
        f"bulkpix: {stats.finished}/{stats.total} tiles{share}, {fields['mb']}, "
        f"{fields['rate']}, {fields['retries']}"
    )
    fetched = sum(item.done for item in stats.items)
    remaining = stats.total - stats.finished
    if fetched and remaining and stats.ended is None:
        line += f", about {human_seconds(stats.elapsed / fetched * remaining)} left"
    return line


@contextlib.asynccontextmanager
async def text_progress(
    stats_ready: asyncio.Future[RunStats],
    write: Callable[[str], None],
    every: float = TEXT_PROGRESS_EVERY_S,
) -> AsyncIterator[None]:
    """``status_line`` every ``every`` seconds, and once at the end, through ``write``."""

    def notices(stats: RunStats) -> None:
        for notice in stats.notices[stats.notices_shown :]:
            write(f"bulkpix: {printable(notice)}")
        stats.notices_shown = len(stats.notices)

    async def report() -> None:
        stats = await stats_ready
        while True:
            await asyncio.sleep(every)
            notices(stats)
            write(status_line(stats))

    reporter = asyncio.create_task(report())
    try:
        yield
    finally:
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
        if stats_ready.done() and not stats_ready.cancelled():
            notices(stats_ready.result())
            write(status_line(stats_ready.result()))


def _show_notices(console: Console, stats: RunStats) -> None:
    """Print the run's notices that have not been printed yet, each once."""
    for notice in stats.notices[stats.notices_shown :]:
        console.print(f"bulkpix: {printable(notice)}", markup=False, highlight=False)
    stats.notices_shown = len(stats.notices)


def print_summary(console: Console, stats: RunStats, output: str) -> None:
    """One screen: per item, then totals, then what went wrong and what to do next."""
    table = Table(title=f"bulkpix: {output}", title_justify="left")
    table.add_column("item")
    table.add_column("tiles", justify="right")
    table.add_column("fetched now", justify="right")
    table.add_column("failed", justify="right")
    table.add_column("MB", justify="right")
    shown = stats.items if len(stats.items) <= 20 else []
    for item in shown:
        table.add_row(
            item.label,
            f"{item.finished}/{item.total}",
            str(item.done),
            str(len(item.failed)),
            f"{item.bytes / _MB:,.1f}",
        )
    table.add_row(
        "[bold]all[/bold]",
        f"{stats.finished}/{stats.total}",
        str(sum(i.done for i in stats.items)),
        str(stats.failed),
        f"{stats.bytes / _MB:,.1f}",
    )
    _show_notices(console, stats)
    console.print(table)
    elapsed = stats.elapsed
    governor = stats.governor
    throttles = getattr(governor, "throttles", 0) if governor is not None else 0
    console.print(
        f"{elapsed:,.1f} s, {stats.bytes / _MB / max(elapsed, 1e-9):,.1f} MB/s, "
        f"{stats.retries} retries, {throttles} quota cuts"
        + (f", {stats.computation_limits} computations too costly (split, or failed at one "
           "chunk)" if stats.computation_limits else "")
    )
    if stats.workers:
        _print_workers(console, stats)
    failed = [(item.label, key, why) for item in stats.items for key, why in item.failed.items()]
    for label, key, why in failed[:10]:
        console.print(f"[red]failed[/red] {label} tile {key}: ", end="")
        console.print(printable(why), markup=False, highlight=False)
    if len(failed) > 10:
        console.print(f"... and {len(failed) - 10} more failed tiles (bulkpix status {output})")


def _print_workers(console: Console, stats: RunStats) -> None:
    """A cluster run's throughput per worker (over the whole run's time)."""
    elapsed = max(stats.elapsed, 1e-9)
    table = Table(title="workers", title_justify="left")
    table.add_column("worker")
    table.add_column("tiles", justify="right")
    table.add_column("MB", justify="right")
    table.add_column("MB/s", justify="right")
    for address, worker in sorted(stats.workers.items()):
        table.add_row(
            printable(address, limit=100),
            str(worker.tiles),
            f"{worker.bytes / _MB:,.1f}",
            f"{worker.bytes / _MB / elapsed:,.1f}",
        )
    console.print(table)


def print_plan(console: Console, plans: JobPlan | Sequence[ItemPlan]) -> None:
    """Grid, tiles, bytes and requests of every item, as ``bulkpix plan`` shows them; with a
    ``JobPlan``, the disk and time estimates and the size warning too."""
    from bulkpix.planning import JobPlan, human_bytes, human_seconds, item_request_bytes

    total_requests = 0
    total_bytes = 0
    estimates: Sequence[Estimate | None] = (
        plans.item_estimates if isinstance(plans, JobPlan) else [None] * len(plans)
    )
    for plan, cost in zip(plans, estimates, strict=True):
        grid = plan.grid
        t = grid.transform
        tiles = plan.tiles
        nbytes = item_request_bytes(plan)
        mosaic = plan.mosaic
        total_requests += (
            mosaic.n_calls * len(tiles.band_groups) if mosaic is not None else tiles.n_tiles
        )
        total_bytes += nbytes
        if mosaic is None:
            console.print(f"[bold]{plan.label}[/bold]  asset {plan.asset}")
        else:
            _print_mosaic(console, plan.label, mosaic)
        console.print(f"  bands      {', '.join(f'{b.id}:{b.dtype.name}' for b in plan.bands)}")
        console.print(f"  crs        {grid.crs}")
        console.print(f"  transform  ({t.a!r}, {t.b!r}, {t.c!r}, {t.d!r}, {t.e!r}, {t.f!r})")
        console.print(f"  size       {grid.width} x {grid.height} px")
        console.print(
            f"  tiles      {tiles.n_tiles} of {tiles.tile_height} x {tiles.tile_width} px"
            f" (chunk {tiles.chunk}, {len(tiles.band_groups)} band group(s))"
        )
        console.print(f"  bytes      {nbytes / _MB:,.1f} MB as the service counts them")
        if cost is not None:
            console.print(
                f"  disk       about {human_bytes(cost.disk_bytes)} "
                f"({human_bytes(cost.pixel_bytes)} uncompressed)"
            )
    console.print(f"[bold]{total_requests}[/bold] requests, {total_bytes / _MB:,.1f} MB in all")
    if not isinstance(plans, JobPlan):
        return
    total, service = plans.estimate, plans.service
    console.print(
        f"time       about {human_seconds(total.seconds)} if the quota holds: "
        f"{plans.concurrency} in flight, {plans.qps:g} requests/s, each request "
        f"{service.base_s:g} s + {service.per_mb_s:g} s/MB (service_model)"
    )
    console.print(
        f"disk       about {human_bytes(total.disk_bytes)}: {plans.compression} assumed to "
        f"store the {human_bytes(total.pixel_bytes)} of pixels at {plans.compression_ratio:.0%} "
        "(about the most to expect is the uncompressed size)"
    )
    if plans.size_warning:
        console.print(
            f"[yellow]note[/yellow]: {plans.size_warning}; `bulkpix run` will ask before "
            "starting (--yes to skip)",
            highlight=False,
        )


# `bulkpix plan` lists this many images of a collection, then counts the rest.
PLAN_IMAGES_SHOWN = 50


def _print_mosaic(console: Console, label: str, mosaic: MosaicPlan) -> None:
    if mosaic.is_cube:
        per = "a day" if mosaic.group_by == "day" else "an image"
        layout = f"cube of {len(mosaic.steps)} steps ({per} each, {mosaic.rule})"
    else:
        layout = f"mosaic ({mosaic.rule})"
    console.print(
        f"[bold]{label}[/bold]  collection {mosaic.collection}: {layout} of "
        f"{len(mosaic.images)} images, {mosaic.n_calls} getPixels calls per band group",
        highlight=False,
    )
    counts = mosaic.tiles_per_image()
    for image, count in list(zip(mosaic.images, counts, strict=True))[:PLAN_IMAGES_SHOWN]:
        console.print(
            f"  image      {image.name.rsplit('/', 1)[-1]}  {image.start} .. {image.end}  "
            f"{count} tile(s)",
            markup=False,
            highlight=False,
        )
    if len(mosaic.images) > PLAN_IMAGES_SHOWN:
        console.print(f"  ... and {len(mosaic.images) - PLAN_IMAGES_SHOWN} more images")


def confirm_large_job(console: Console, exc: JobTooLarge, stdin: TextIO | None = None) -> bool:
    """Ask "continue? [y/N]" about a job ``exc`` says is large; False (ask nothing) when
    ``stdin`` (default: sys.stdin) is not a terminal, so scripts must say ``--yes``."""
    stdin = stdin or sys.stdin
    if not stdin.isatty():
        return False
    console.print(f"bulkpix: {exc.summary}", markup=False, highlight=False)
    console.print("continue? [y/N] ", markup=False, highlight=False, end="")
    answer = stdin.readline()
    if not answer:  # end of input (Ctrl-D)
        console.print()
    return answer.strip().lower() in ("y", "yes")
