"""What an output holds, as one value: ``OutputState`` (its kind, the items its record shows).

Free of zarr, so that a run into a new local output learns its state (``absent_output``)
without waiting for the store's libraries to load: ``bulkpix.store.output`` inspects outputs
that exist and re-exports these names.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bulkpix.store.location import COORD_NAMES, JOB_KEY, RECORD_DIR, V3_METADATA

if TYPE_CHECKING:
    from zarr.abc.store import Store

__all__ = ["OutputKind", "OutputState", "RecordedItem", "absent_output"]


class OutputKind(enum.Enum):
    EMPTY = "empty"
    SINGLE = "single"
    BATCH = "batch"
    FOREIGN = "foreign"
    DAMAGED = "damaged"


@dataclass(frozen=True)
class RecordedItem:
    """One item the output's record shows, as found."""

    path: str
    fingerprint: dict[str, Any] | None  # None: the record is unreadable
    bands: tuple[str, ...]  # from the record, or from the group's copy when it is unreadable
    done: int  # done-markers listed
    missing: tuple[str, ...]  # nodes bulkpix made that are gone ("zarr.json": the group)
    # Metadata documents of nodes bulkpix made that do not parse (keys relative to the item).
    unparseable: tuple[str, ...] = ()
    record_missing: bool = False  # the batch record lists it, its own record is gone

    @property
    def label(self) -> str:
        return self.path or "(root)"

    @property
    def unreadable(self) -> bool:
        return self.fingerprint is None

    @property
    def unfinished(self) -> bool:
        """Recorded, but its creation was cut short (no tile finished): made again, no damage."""
        return not self.unreadable and bool(self.missing) and self.done == 0

    @property
    def damage(self) -> tuple[str, ...]:
        found = []
        prefix = f"{self.path}/" if self.path else ""
        if self.unreadable:
            how = "missing" if self.record_missing else "unreadable"
            found.append(f"the record {prefix}{RECORD_DIR}/{JOB_KEY} is {how}")
        if self.missing and not self.unfinished:
            for name in self.missing:
                if name == V3_METADATA:
                    found.append(f"the group metadata {prefix}{V3_METADATA} is missing")
                elif name in COORD_NAMES:
                    found.append(f"the coordinate array {prefix}{name} is missing")
                else:
                    found.append(f"the band array {prefix}{name} is missing")
        for key in self.unparseable:
            node = key.rpartition("/")[0]
            what = (
                "group"
                if not node
                else ("coordinate array" if node in COORD_NAMES else "band array")
            )
            found.append(f"the {what} metadata {prefix}{key} is unreadable")
        return tuple(found)

    @property
    def tile(self) -> tuple[int, int] | None:
        """The tile shape the item was started with."""
        tile = (self.fingerprint or {}).get("tile")
        if isinstance(tile, list) and len(tile) == 2 and all(isinstance(v, int) for v in tile):
            return int(tile[0]), int(tile[1])
        return None


@dataclass(frozen=True)
class OutputState:
    """What an output holds: one classification, and what it was made from."""

    output: str
    kind: OutputKind
    store: Store | None  # None: a local output that does not exist yet
    items: Mapping[str, RecordedItem] = field(default_factory=dict)
    batch: bool = False  # the record shows a batch output (kind BATCH, or DAMAGED)
    damage: tuple[str, ...] = ()
    foreign_paths: tuple[str, ...] = ()  # asked-for item paths holding data of someone else

    def recorded_tile(self, path: str) -> tuple[int, int] | None:
        item = self.items.get(path)
        return item.tile if item is not None else None

    @property
    def single(self) -> bool:
        return "" in self.items

    @property
    def absent(self) -> bool:
        """A local output that does not exist yet: nothing in it to read, keep or refuse."""
        return self.store is None and self.kind is OutputKind.EMPTY


def absent_output(output: str) -> OutputState | None:
    """The state of ``output`` when it is a local path that does not exist (EMPTY, no store
    opened), else None: it must be inspected (``bulkpix.store.output.inspect_output``)."""
    if "://" in output or Path(output).expanduser().exists():
        return None
    return OutputState(output, OutputKind.EMPTY, None)
