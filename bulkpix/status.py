"""``bulkpix status OUTPUT``: what an output holds, read from its record alone."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table
from zarr.abc.store import Store

from bulkpix.errors import JobError, printable
from bulkpix.planning import tile_plan_from_fingerprint
from bulkpix.store.record import TileRecord
from bulkpix.store.zarr_store import open_store

__all__ = ["ItemStatus", "StatusReport", "print_status", "read_status"]


@dataclass(frozen=True)
class ItemStatus:
    label: str
    asset: str
    total: int
    done: int
    failed: dict[str, str]
    nbytes: int


@dataclass(frozen=True)
class StatusReport:
    output: str
    items: list[ItemStatus] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return bool(self.items) and all(i.done >= i.total and not i.failed for i in self.items)


async def _item_status(store: Store, path: str) -> ItemStatus | None:
    record = TileRecord(store, path)
    fingerprint = await record.fingerprint()
    if fingerprint is None:
        return None
    nbytes = 0
    with contextlib.suppress(AttributeError, NotImplementedError, FileNotFoundError):
        nbytes = await store.getsize_prefix(path)
    plan = tile_plan_from_fingerprint(fingerprint)
    done = await record.done_keys()
    if plan is not None:  # parts of split tiles have markers of their own
        done = {key for key in done if plan.has_tile_key(key)}
    return ItemStatus(
        label=path or "(root)",
        asset=str(fingerprint.get("asset", "?")),
        total=int(fingerprint.get("n_tiles", 0)),
        done=len(done),
        failed=await record.failed(),
        nbytes=nbytes,
    )


async def read_status(output: str) -> StatusReport:
    if "://" not in output and not any(
        (Path(output) / name).is_file() for name in ("zarr.json", ".zgroup")
    ):
        raise JobError(f"{output} is not a bulkpix output (no zarr.json there)")
    store = await open_store(output, read_only=True)
    root = await _item_status(store, "")
    if root is not None:
        return StatusReport(output, [root])
    items = []
    children = sorted([c async for c in store.list_dir("")])
    for child in children:
        child = child.rstrip("/")
        if child.startswith(".") or child == "zarr.json":  # .zgroup, .zattrs too
            continue
        status = await _item_status(store, child)
        if status is not None:
            items.append(status)
    if not items:
        raise JobError(f"{output} holds no bulkpix job record")
    return StatusReport(output, items)


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
    state = "complete" if report.complete else "incomplete: rerun the job to fetch what is missing"
    console.print(state)
