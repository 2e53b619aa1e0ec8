"""Live progress and the closing summary, drawn with rich from the run's counters.

The pipeline only bumps plain counters (``RunStats``); this module polls them, so drawing never
sits on the fetch path.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

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

from bulkpix.errors import printable
from bulkpix.pipeline import RunStats

if TYPE_CHECKING:  # planning loads numpy and rasterio: only `bulkpix plan` needs it here
    from bulkpix.planning import ItemPlan

__all__ = ["live_progress", "print_plan", "print_summary"]

_MAX_ITEM_BARS = 8
_MB = 1e6


def _fields(stats: RunStats) -> dict[str, str]:
    elapsed = max(stats.elapsed, 1e-9)
    governor = stats.governor
    limit = f" limit {governor.limit}" if governor is not None else ""
    return {
        "mb": f"{stats.bytes / _MB:,.1f} MB",
        "rate": f"{stats.bytes / _MB / elapsed:,.1f} MB/s",
        "retries": f"retries {stats.retries}{limit}",
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
        while True:
            _show_notices(progress.console, stats)
            fields = _fields(stats)
            progress.update(total_task, total=stats.total, completed=stats.finished, **fields)
            for task, index in item_tasks:
                item = stats.items[index]
                progress.update(task, total=item.total, completed=item.finished, **fields)
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
    )
    failed = [(item.label, key, why) for item in stats.items for key, why in item.failed.items()]
    for label, key, why in failed[:10]:
        console.print(f"[red]failed[/red] {label} tile {key}: ", end="")
        console.print(printable(why), markup=False, highlight=False)
    if len(failed) > 10:
        console.print(f"... and {len(failed) - 10} more failed tiles (bulkpix status {output})")


def print_plan(console: Console, plans: list[ItemPlan]) -> None:
    """Grid, tiles, bytes and requests of every item, as ``bulkpix plan`` shows them."""
    from bulkpix.planning import item_request_bytes

    total_requests = 0
    total_bytes = 0
    for plan in plans:
        grid = plan.grid
        t = grid.transform
        tiles = plan.tiles
        nbytes = item_request_bytes(plan)
        total_requests += tiles.n_tiles
        total_bytes += nbytes
        console.print(f"[bold]{plan.label}[/bold]  asset {plan.asset}")
        console.print(f"  bands      {', '.join(f'{b.id}:{b.dtype.name}' for b in plan.bands)}")
        console.print(f"  crs        {grid.crs}")
        console.print(f"  transform  ({t.a!r}, {t.b!r}, {t.c!r}, {t.d!r}, {t.e!r}, {t.f!r})")
        console.print(f"  size       {grid.width} x {grid.height} px")
        console.print(
            f"  tiles      {tiles.n_tiles} of {tiles.tile_height} x {tiles.tile_width} px"
            f" (chunk {tiles.chunk}, {len(tiles.band_groups)} band group(s))"
        )
        console.print(f"  bytes      {nbytes / _MB:,.1f} MB as the service counts them")
    console.print(f"[bold]{total_requests}[/bold] requests, {total_bytes / _MB:,.1f} MB in all")
