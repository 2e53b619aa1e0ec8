"""``bulkpix verify OUTPUT``: re-read every recorded chunk and check it against its crc32c.

Each done-marker lists the crc32c of the chunks its tile stored (``bulkpix.store.checksum``).
A chunk that is missing or whose bytes no longer match fails its tile: the tile's marker is
cleared (with the marker of any split tile it was part of), so the next ``bulkpix run``
fetches exactly those tiles again. Damage to the output's structure (an unreadable record, a
missing array) is reported too; ``run --restart`` repairs that.

Verify holds the output's lease as an exclusive run: it does not race a run writing markers.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any

from zarr.abc.store import Store
from zarr.core.buffer import default_buffer_prototype

from bulkpix.errors import JobError
from bulkpix.geometry.tiling import Tile, parse_tile_key
from bulkpix.store.checksum import crc32c
from bulkpix.store.lease import Lease
from bulkpix.store.output import OutputKind, RecordedItem, inspect_output
from bulkpix.store.record import TileRecord

__all__ = ["BadChunk", "ItemVerification", "VerifyReport", "verify_output"]

_READ_CONCURRENCY = 16


@dataclass(frozen=True)
class BadChunk:
    tile: str
    chunk: str  # the chunk's key relative to the item, e.g. "B4/c/0/1"
    why: str


@dataclass
class ItemVerification:
    label: str
    tiles: int = 0  # done-markers checked
    chunks: int = 0  # chunks re-read
    unverified: int = 0  # markers without checksums (written before bulkpix kept them)
    bad: list[BadChunk] = field(default_factory=list)
    cleared: list[str] = field(default_factory=list)  # markers cleared: refetched next run


@dataclass
class VerifyReport:
    output: str
    items: list[ItemVerification] = field(default_factory=list)
    damage: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.damage and not any(item.bad for item in self.items)


async def verify_output(output: str) -> VerifyReport:
    """Check every finished tile's chunks; clear the markers of tiles that fail."""
    state = await inspect_output(output)
    if state.store is None or state.kind in (OutputKind.EMPTY, OutputKind.FOREIGN):
        raise JobError(f"{output} is not a bulkpix output (it holds no bulkpix record)")
    report = VerifyReport(output, damage=state.damage)
    async with Lease(state.store, "verify", exclusive=True, output=output) as lease:
        for item in state.items.values():
            report.items.append(await _verify_item(state.store, item, lease))
    return report


async def _verify_item(store: Store, item: RecordedItem, lease: Lease) -> ItemVerification:
    result = ItemVerification(item.label)
    record = TileRecord(store, item.path, guard=lease.check)
    markers = await record.done_markers()
    prefix = f"{item.path}/" if item.path else ""
    semaphore = asyncio.Semaphore(_READ_CONCURRENCY)
    prototype = default_buffer_prototype()

    async def check(tile: str, chunk: str, expected: Any) -> BadChunk | None:
        async with semaphore:
            buffer = await store.get(prefix + chunk, prototype=prototype)
        if buffer is None:
            return BadChunk(tile, chunk, "missing")
        if crc32c(buffer.to_bytes()) != expected:
            return BadChunk(tile, chunk, "checksum mismatch")
        return None

    checks = []
    for tile, marker in markers.items():
        chunks = marker.get("chunks")
        if not isinstance(chunks, dict) or not chunks:
            result.unverified += 1
            continue
        result.tiles += 1
        for chunk, expected in chunks.items():
            if isinstance(chunk, str) and ".." not in chunk.split("/"):
                checks.append(check(tile, chunk, expected))
    outcomes = await asyncio.gather(*checks)
    result.chunks = len(outcomes)
    result.bad = sorted((o for o in outcomes if o is not None), key=lambda b: (b.tile, b.chunk))
    failed_tiles = {bad.tile for bad in result.bad}
    # A split tile's marker has no chunks of its own: it goes when one of its parts fails.
    containing = {
        tile
        for tile in markers
        if tile not in failed_tiles and any(_contains(tile, part) for part in failed_tiles)
    }
    for tile in sorted(failed_tiles | containing):
        await record.clear_done(tile)
        result.cleared.append(tile)
    return result


# A split tile's part: the tile's key, and ``_b{lo}-{hi}`` when it holds only the band
# positions [lo, hi) of the tile's band group (bulkpix.pipeline's ``_Work.key``).
_BAND_PART = re.compile(r"(?P<tile>.+?)(?:_b(?P<lo>\d+)-(?P<hi>\d+))?")


def _parse_part_key(key: str) -> tuple[Tile, tuple[int, int] | None]:
    match = _BAND_PART.fullmatch(key)
    if match is None:
        raise ValueError(f"not a tile key: {key!r}")
    tile = parse_tile_key(match["tile"])
    if match["lo"] is None:
        return tile, None
    return tile, (int(match["lo"]), int(match["hi"]))


def _contains(outer_key: str, inner_key: str) -> bool:
    """Whether the part ``inner_key`` lies inside ``outer_key``: its window and its bands."""
    try:
        (outer, outer_bands), (inner, inner_bands) = (
            _parse_part_key(outer_key),
            _parse_part_key(inner_key),
        )
    except ValueError:
        return False
    if outer.group != inner.group or outer.step != inner.step:
        return False
    if outer_bands is not None and (
        inner_bands is None
        or not outer_bands[0] <= inner_bands[0] <= inner_bands[1] <= outer_bands[1]
    ):
        return False
    o, i = outer.window, inner.window
    return (
        o.row_off <= i.row_off
        and o.col_off <= i.col_off
        and i.row_off + i.height <= o.row_off + o.height
        and i.col_off + i.width <= o.col_off + o.width
    )
