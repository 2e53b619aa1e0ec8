"""``bulkpix status OUTPUT``: what an output holds, read from its record, and any damage."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table
from zarr.abc.store import Store

from bulkpix.errors import JobError, printable
from bulkpix.planning import tile_plan_from_fingerprint
from bulkpix.store.output import OutputKind, RecordedItem, inspect_output
from bulkpix.store.record import TileRecord

__all__ = ["ItemStatus", "StatusReport", "print_status", "read_status"]


@dataclass(frozen=True)
class ItemStatus:
    label: str
    asset: str
    total: int
    done: int
    failed: dict[str, str]
    nbytes: int
    damage: tuple[str, ...] = ()


@dataclass(frozen=True)
class StatusReport:
    output: str
    items: list[ItemStatus] = field(default_factory=list)
    damage: tuple[str, ...] = ()  # everything damaged in the output, each naming where

    @property
    def complete(self) -> bool:
        return (
            bool(self.items)
            and not self.damage
            and all(i.done >= i.total and not i.failed and not i.damage for i in self.items)
        )


async def _item_status(store: Store, item: RecordedItem) -> ItemStatus:
    record = TileRecord(store, item.path)
    fingerprint = item.fingerprint or {}
    nbytes = 0
    with contextlib.suppress(AttributeError, NotImplementedError, FileNotFoundError):
        nbytes = await store.getsize_prefix(item.path)
    plan = tile_plan_from_fingerprint(fingerprint)
    done = await record.done_keys()
    if plan is not None:  # parts of split tiles have markers of their own
        done = {key for key in done if plan.has_tile_key(key)}
    return ItemStatus(
        label=item.label,
        asset=str(fingerprint.get("asset", "?")),
        total=int(fingerprint.get("n_tiles", 0)),
        done=len(done),
        failed=await record.failed(),
        nbytes=nbytes,
        damage=item.damage,
    )


async def read_status(output: str) -> StatusReport:
    state = await inspect_output(output)
    if state.kind is OutputKind.EMPTY or state.store is None:
        raise JobError(f"{output} is not a bulkpix output (it holds no bulkpix record)")
    if state.kind is OutputKind.FOREIGN:
        raise JobError(f"{output} is not a bulkpix output (it holds data bulkpix did not write)")
    items = [await _item_status(state.store, item) for item in state.items.values()]
    if not items and not state.damage:
        raise JobError(f"{output} holds no bulkpix job record")
    return StatusReport(output, items, state.damage)


def print_status(console: Console, report: StatusReport) -> None:
    table = Table(title=f"bulkpix status: {report.output}", title_justify="left")
    for column in ("item", "asset", "finished", "missing", "failed", "MB on disk"):
        table.add_column(column, justify="left" if column in ("item", "asset") else "right")
    for item in report.items:
        table.add_row(
            item.label,
            item.asset,
            f"{item.done}/{item.total}",
            str(max(item.total - item.done, 0)),
            str(len(item.failed)),
            f"{item.nbytes / 1e6:,.1f}",
        )
    console.print(table)
    for item in report.items:
        for key, why in sorted(item.failed.items())[:20]:
            # A stored reason quotes the server: printed without its control characters.
            console.print(f"failed {item.label} {key}: {printable(why)}", markup=False)
    for what in report.damage:
        console.print(f"damaged: {what}", markup=False)
    if report.damage:
        state = "damaged: `bulkpix run --restart` discards what bulkpix wrote and starts again"
    elif report.complete:
        state = "complete"
    else:
        state = "incomplete: rerun the job to fetch what is missing"
    console.print(state)
