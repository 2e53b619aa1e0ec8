"""Cutting an output grid into getPixels requests: limits, band groups, tile plans.

A plan is a regular tiling of the output grid (tile rows/columns of ``tile_height`` x
``tile_width`` pixels, cropped at the grid's far edges) repeated once per band group. Every
tile edge inside the grid lies on a multiple of ``chunk``, so two tiles never write the same
Zarr chunk and tiles can be written concurrently without locks.

Tiles are generated lazily from a handful of integers (a 1,000,000-tile plan costs O(1)
memory until iterated), in the spirit of odc-geo's ``GeoboxTiles``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from bulkpix.dtypes import request_bytes_per_pixel
from bulkpix.geometry.grid import Window
from bulkpix.limits import MAX_BANDS, MAX_REQUEST_BYTES, MAX_SIDE

__all__ = [
    "MAX_BANDS",
    "MAX_REQUEST_BYTES",
    "MAX_SIDE",
    "ServiceModel",
    "Tile",
    "TilePlan",
    "band_groups",
    "parse_tile_key",
    "plan_tiles",
    "split_tile",
]


SQUARENESS_WEIGHT = 0.02
"""Auto tiling: a tile whose sides differ by a factor 2**k scores ``1 + 0.02 * k`` worse."""

_MAX_SIDE_CANDIDATES = 1024  # cap on tile sizes tried per side, so the search stays cheap


# --------------------------------------------------------------------------------------
# Tiles


# The fields of ``Tile.key``: a time cube's step (only in a cube), band group, row and column
# offsets, height, width.
_TILE_KEY_FIELDS = re.compile(r"(?:s(\d+)_)?g(\d+)_r(\d+)_c(\d+)_h(\d+)_w(\d+)")


@dataclass(frozen=True, slots=True)
class Tile:
    """One request: a window of the output grid and the index of its band group; in a time
    cube, also the step (the index along time) it fills."""

    window: Window
    group: int = 0
    step: int | None = None

    @property
    def key(self) -> str:
        """Stable, filename-safe name, e.g. ``g0_r1024_c2048_h512_w512``; a cube's tiles
        start with their step, ``s3_g0_r1024_...`` (2-D keys stay as they were)."""
        w = self.window
        key = f"g{self.group}_r{w.row_off}_c{w.col_off}_h{w.height}_w{w.width}"
        return key if self.step is None else f"s{self.step}_{key}"


def parse_tile_key(key: str) -> Tile:
    """Inverse of ``Tile.key``."""
    match = _TILE_KEY_FIELDS.fullmatch(key)
    if match is None:
        raise ValueError(f"not a tile key: {key!r}")
    step, (group, row, col, height, width) = match[1], (int(v) for v in match.groups()[1:])
    return Tile(Window(row, col, height, width), group, None if step is None else int(step))


# --------------------------------------------------------------------------------------
# Service time model


@dataclass(frozen=True)
class ServiceModel:
    """Expected service time of one request: ``base_s + per_mb_s * bytes / 1e6``."""

    base_s: float = 0.2
    per_mb_s: float = 0.05

    def __post_init__(self) -> None:
        if not (self.base_s >= 0 and self.per_mb_s >= 0):
            raise ValueError(f"ServiceModel times must be >= 0, got {self!r}")

    def seconds(self, nbytes: float) -> float:
        """Service time of a request of ``nbytes`` (as the service counts them)."""
        return self.base_s + self.per_mb_s * nbytes / 1e6


def _makespan(
    n_requests: np.ndarray | int,
    request_s: np.ndarray | float,
    concurrency: int,
    qps: float,
) -> np.ndarray | float:
    """Wall time of ``n_requests`` requests of ``request_s`` each (vectorised).

    Concurrency: they run in ``ceil(n / concurrency)`` waves of the slowest request. Rate:
    the last one cannot start before ``(n - 1) / qps``. The bigger bound wins.
    """
    waves = -(-np.asarray(n_requests) // concurrency)
    return np.maximum(waves * request_s, (np.asarray(n_requests) - 1) / qps + request_s)


# --------------------------------------------------------------------------------------
# Band groups


def _greedy_groups(
    costs: Sequence[int], capacity: int, max_bands: int
) -> list[tuple[int, ...]] | None:
    """In-order groups, each as full as ``capacity``/``max_bands`` allow; None if a band
    alone exceeds ``capacity``. Greedy is optimal for in-order packing (fewest groups)."""
    groups: list[tuple[int, ...]] = []
    current: list[int] = []
    used = 0
    for index, cost in enumerate(costs):
        if cost > capacity:
            return None
        if current and (used + cost > capacity or len(current) >= max_bands):
            groups.append(tuple(current))
            current, used = [], 0
        current.append(index)
        used += cost
    if current:
        groups.append(tuple(current))
    return groups


def band_groups(
    itemsizes: Sequence[int], max_group_bytes_per_px: int, max_bands: int = MAX_BANDS
) -> tuple[tuple[int, ...], ...]:
    """Split band indices, in order, into the fewest groups that each fit.

    A group fits when it has at most ``max_bands`` bands and ``sum(itemsize + 1)`` over its
    bands is at most ``max_group_bytes_per_px``. Among partitions with that fewest number of
    groups, the one with the smallest largest group (in bytes per pixel) is returned: every
    tile of a plan has the same shape, so the largest group sets the tile size limit.
    """
    costs = [request_bytes_per_pixel([_positive_int(s, "itemsize")]) for s in itemsizes]
    if not costs:
        raise ValueError("at least one band is needed")
    if max_bands < 1:
        raise ValueError(f"max_bands must be >= 1, got {max_bands}")
    groups = _greedy_groups(costs, max_group_bytes_per_px, max_bands)
    if groups is None:
        worst = max(range(len(costs)), key=costs.__getitem__)
        raise ValueError(
            f"band {worst} needs {costs[worst]} bytes per pixel but a request may only use "
            f"{max_group_bytes_per_px} bytes per pixel here; use a smaller chunk"
        )
    # Balance: binary-search the smallest capacity that still needs no more groups.
    lo, hi = max(costs), max_group_bytes_per_px
    while lo < hi:
        mid = (lo + hi) // 2
        trial = _greedy_groups(costs, mid, max_bands)
        if trial is not None and len(trial) <= len(groups):
            hi = mid
        else:
            lo = mid + 1
    balanced = _greedy_groups(costs, lo, max_bands)
    assert balanced is not None and len(balanced) == len(groups)
    return tuple(balanced)


# --------------------------------------------------------------------------------------
# Tile plans


def _positive_int(value: object, name: str) -> int:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class TilePlan:
    """A lazy, chunk-aligned tiling of a ``height`` x ``width`` grid, per band group.

    ``tile_height``/``tile_width`` are the size of a full tile: a multiple of ``chunk``, or
    the grid's whole side. Tiles are ordered row-major over the grid, band group innermost
    (all groups of one window come together, so an area is finished for every band early).
    ``itemsizes`` (bytes per band, in band order) is needed for the byte counts; when given,
    the plan checks that its largest request fits the service limits.
    """

    height: int
    width: int
    chunk: int
    tile_height: int
    tile_width: int
    band_groups: tuple[tuple[int, ...], ...]
    itemsizes: tuple[int, ...] | None = field(default=None, compare=True)
    # A time cube's steps: every window is fetched once per step (0: a 2-D output).
    steps: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be 0 or more, got {self.steps}")
        for name in ("height", "width", "chunk", "tile_height", "tile_width"):
            _positive_int(getattr(self, name), name)
        for name, side, tile in (
            ("tile_height", self.height, self.tile_height),
            ("tile_width", self.width, self.tile_width),
        ):
            if tile > side:
                raise ValueError(f"{name} {tile} exceeds the grid side {side}")
            if tile != side and tile % self.chunk:
                raise ValueError(
                    f"{name} {tile} is neither a multiple of chunk {self.chunk} "
                    f"nor the whole side {side}"
                )
        groups = tuple(tuple(int(i) for i in g) for g in self.band_groups)
        object.__setattr__(self, "band_groups", groups)
        if not groups or not all(groups):
            raise ValueError("band_groups must be non-empty groups of band indices")
        if any(len(g) > MAX_BANDS for g in groups):
            raise ValueError(f"a band group has more than {MAX_BANDS} bands")
        if max(self.tile_height, self.tile_width) > MAX_SIDE:
            raise ValueError(
                f"tile {self.tile_height} x {self.tile_width} exceeds {MAX_SIDE} px a side"
            )
        if self.itemsizes is not None:
            itemsizes = tuple(_positive_int(s, "itemsize") for s in self.itemsizes)
            object.__setattr__(self, "itemsizes", itemsizes)
            flat = [i for g in groups for i in g]
            if flat != list(range(len(itemsizes))):
                raise ValueError("band_groups must list every band index once, in order")
            if self.max_request_bytes > MAX_REQUEST_BYTES:
                raise ValueError(
                    f"tile {self.tile_height} x {self.tile_width} x "
                    f"{max(self.group_bytes_per_px)} bytes/px = {self.max_request_bytes} bytes "
                    f"exceeds the request limit of {MAX_REQUEST_BYTES} bytes"
                )

    # -- counts ------------------------------------------------------------------------

    @property
    def tile_rows(self) -> int:
        return -(-self.height // self.tile_height)

    @property
    def tile_cols(self) -> int:
        return -(-self.width // self.tile_width)

    @property
    def n_windows(self) -> int:
        """Number of distinct tile windows (tiles of one band group)."""
        return self.tile_rows * self.tile_cols

    @property
    def n_tiles(self) -> int:
        """Number of requests: windows x band groups (x steps in a cube)."""
        return self.n_windows * len(self.band_groups) * max(1, self.steps)

    # -- iteration ---------------------------------------------------------------------

    def windows(self) -> Iterator[Window]:
        """Tile windows, row-major; edge windows cropped at the grid's edge."""
        for row in range(0, self.height, self.tile_height):
            height = min(self.tile_height, self.height - row)
            for col in range(0, self.width, self.tile_width):
                yield Window(row, col, height, min(self.tile_width, self.width - col))

    def tiles(self) -> Iterator[Tile]:
        """Every request, row-major over windows, band group innermost; in a cube, step by
        step (a step is finished before the next begins)."""
        n_groups = len(self.band_groups)
        steps: Iterable[int | None] = range(self.steps) if self.steps else (None,)
        for step in steps:
            for window in self.windows():
                for group in range(n_groups):
                    yield Tile(window, group, step)

    def has_tile(self, tile: Tile) -> bool:
        """Whether ``tile`` is one of this plan's tiles (not a part of a split one)."""
        w = tile.window
        if self.steps:
            step_ok = tile.step is not None and 0 <= tile.step < self.steps
        else:
            step_ok = tile.step is None
        return (
            step_ok
            and 0 <= tile.group < len(self.band_groups)
            and 0 <= w.row_off < self.height
            and 0 <= w.col_off < self.width
            and w.row_off % self.tile_height == 0
            and w.col_off % self.tile_width == 0
            and w.height == min(self.tile_height, self.height - w.row_off)
            and w.width == min(self.tile_width, self.width - w.col_off)
        )

    def has_tile_key(self, key: str) -> bool:
        try:
            return self.has_tile(parse_tile_key(key))
        except ValueError:
            return False

    # -- bytes -------------------------------------------------------------------------

    def _itemsizes(self) -> tuple[int, ...]:
        if self.itemsizes is None:
            raise ValueError("this TilePlan was built without itemsizes; byte counts unknown")
        return self.itemsizes

    @property
    def group_bytes_per_px(self) -> tuple[int, ...]:
        """Request bytes per pixel of each band group (itemsize + 1 mask byte per band)."""
        itemsizes = self._itemsizes()
        return tuple(
            request_bytes_per_pixel(itemsizes[i] for i in g) for g in self.band_groups
        )

    def tile_request_bytes(self, tile: Tile) -> int:
        """Bytes of the request for ``tile``, as the service counts them."""
        return tile.window.size * self.group_bytes_per_px[tile.group]

    @property
    def max_request_bytes(self) -> int:
        """Bytes of the largest request (a full tile of the heaviest band group)."""
        return self.tile_height * self.tile_width * max(self.group_bytes_per_px)

    @property
    def total_request_bytes(self) -> int:
        # Tiles partition the grid once per group (and step): no need to iterate.
        return self.height * self.width * sum(self.group_bytes_per_px) * max(1, self.steps)


def _side_candidates(side: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Useful tile sizes along one side: (tile sides in px, tiles along the side).

    Tile sides are multiples of ``chunk`` (or the whole side) no larger than ``MAX_SIDE``.
    Only the smallest size giving each tile count is kept: a bigger tile with the same count
    only makes the slowest request slower.
    """
    n_chunks = -(-side // chunk)
    k_max = n_chunks if side <= MAX_SIDE else MAX_SIDE // chunk
    ks = np.arange(1, k_max + 1, dtype=np.int64)
    counts = -(-n_chunks // ks)
    keep = np.ones(len(ks), dtype=bool)
    keep[1:] = counts[1:] < counts[:-1]
    ks, counts = ks[keep], counts[keep]
    if len(ks) > _MAX_SIDE_CANDIDATES:
        # Pathological (tiny chunk, huge side): keep a geometric sample incl. both ends.
        picks = np.unique(np.geomspace(1, len(ks), _MAX_SIDE_CANDIDATES).round().astype(int) - 1)
        ks, counts = ks[picks], counts[picks]
    return np.minimum(ks * chunk, side), counts


def _auto_tile(
    height: int,
    width: int,
    chunk: int,
    bytes_per_px: int,
    n_groups: int,
    byte_cap: int,
    concurrency: int,
    qps: float,
    service: ServiceModel,
) -> tuple[int, int]:
    """The (tile_height, tile_width) with the best score; see ``plan_tiles``."""
    tile_h, rows = _side_candidates(height, chunk)
    tile_w, cols = _side_candidates(width, chunk)
    area = tile_h[:, None] * tile_w[None, :]
    fits = area * bytes_per_px <= byte_cap
    n_requests = rows[:, None] * cols[None, :] * n_groups
    seconds = service.base_s + service.per_mb_s * (area * bytes_per_px) / 1e6
    makespan = _makespan(n_requests, seconds, concurrency, qps)
    aspect = np.maximum(tile_h[:, None], tile_w[None, :]) / np.minimum(
        tile_h[:, None], tile_w[None, :]
    )
    score = np.where(fits, makespan * (1 + SQUARENESS_WEIGHT * np.log2(aspect)), np.inf)
    best = score.min()
    assert np.isfinite(best), "the one-chunk tile always fits"
    # Ties (up to float noise): fewer requests, then the wider tile (longer contiguous rows).
    tied = np.argwhere(score <= best * (1 + 1e-9))
    i, j = min(tied, key=lambda ij: (n_requests[ij[0], ij[1]], -tile_w[ij[1]], tile_h[ij[0]]))
    return int(tile_h[i]), int(tile_w[j])


def plan_tiles(
    height: int,
    width: int,
    itemsizes: Sequence[int],
    chunk: int,
    tile: Literal["auto"] | tuple[int, int] = "auto",
    *,
    concurrency: int = 40,
    qps: float = 100.0,
    service: ServiceModel | None = None,
    max_inflight_bytes: int = 256 * 2**20,
) -> TilePlan:
    """Plan the requests for a ``height`` x ``width`` grid of bands with ``itemsizes``.

    Band groups: the fewest that let a one-chunk tile (``min(chunk, side)`` a side) fit the
    limits, balanced (see ``band_groups``). All tiles share one shape.

    ``tile=(tile_h, tile_w)``: each side a multiple of ``chunk`` (a side at least as long
    as the grid's means one tile across); the heaviest group's request must fit the limits
    (``max_inflight_bytes`` is only a guide for "auto": an explicit tile is taken as asked).

    ``tile="auto"``: among tile sides that are multiples of ``chunk`` (or the whole side),
    with each request at most ``min(MAX_REQUEST_BYTES, max(max_inflight_bytes // 2, one
    chunk tile))`` bytes (the client's memory budget for bodies must hold two), pick the lowest
    ``makespan * (1 + SQUARENESS_WEIGHT * log2(aspect))`` where, with ``n`` requests each
    taking ``t = service.seconds(full tile bytes)``::

        makespan = max(ceil(n / concurrency) * t, (n - 1) / qps + t)

    For big grids this favours the biggest tiles (fewer requests, less per-request
    overhead); for small ones it favours about ``concurrency`` smaller tiles, since fewer
    tiles than slots leave capacity idle and bigger requests take longer. Exact ties go to
    fewer, then wider tiles.
    """
    height = _positive_int(height, "height")
    width = _positive_int(width, "width")
    chunk = _positive_int(chunk, "chunk")
    concurrency = _positive_int(concurrency, "concurrency")
    if not qps > 0:
        raise ValueError(f"qps must be > 0, got {qps!r}")
    service = service or ServiceModel()
    sizes = tuple(_positive_int(s, "itemsize") for s in itemsizes)
    if not sizes:
        raise ValueError("at least one band is needed")

    min_h, min_w = min(chunk, height), min(chunk, width)
    if max(min_h, min_w) > MAX_SIDE:
        raise ValueError(f"chunk {chunk} exceeds the {MAX_SIDE} px request side limit")
    groups = band_groups(sizes, MAX_REQUEST_BYTES // (min_h * min_w))
    bytes_per_px = max(request_bytes_per_pixel(sizes[i] for i in g) for g in groups)

    if tile == "auto":
        # The client holds bodies within a byte budget of max_inflight_bytes (requests in
        # service cost it nothing): two tiles must fit, one being written, one arriving.
        byte_cap = min(
            MAX_REQUEST_BYTES, max(max_inflight_bytes // 2, min_h * min_w * bytes_per_px)
        )
        tile_h, tile_w = _auto_tile(
            height, width, chunk, bytes_per_px, len(groups), byte_cap, concurrency, qps, service
        )
    else:
        tile_h, tile_w = _explicit_tile(tile, height, width, chunk, bytes_per_px)
    return TilePlan(height, width, chunk, tile_h, tile_w, groups, sizes)


def _explicit_tile(
    tile: object, height: int, width: int, chunk: int, bytes_per_px: int
) -> tuple[int, int]:
    if isinstance(tile, str) or not isinstance(tile, Sequence) or len(tile) != 2:
        raise ValueError(f'tile must be "auto" or (tile_height, tile_width), got {tile!r}')
    tile_h = _positive_int(tile[0], "tile height")
    tile_w = _positive_int(tile[1], "tile width")
    for name, value, side in (("height", tile_h, height), ("width", tile_w, width)):
        if value % chunk and value < side:
            raise ValueError(f"tile {name} {value} is not a multiple of chunk {chunk}")
    tile_h, tile_w = min(tile_h, height), min(tile_w, width)
    if max(tile_h, tile_w) > MAX_SIDE:
        raise ValueError(f"tile {tile_h} x {tile_w} exceeds {MAX_SIDE} px a side")
    size = tile_h * tile_w * bytes_per_px
    if size > MAX_REQUEST_BYTES:
        raise ValueError(
            f"tile {tile_h} x {tile_w} at {bytes_per_px} bytes/px is {size} bytes, over the "
            f"{MAX_REQUEST_BYTES}-byte request limit; use a tile of at most "
            f"{MAX_REQUEST_BYTES // bytes_per_px} px"
        )
    return tile_h, tile_w


# --------------------------------------------------------------------------------------
# Splitting


def _cut(offset: int, length: int, chunk: int) -> int | None:
    """Absolute multiple of ``chunk`` strictly inside (offset, offset + length), nearest
    the middle; None when the side is one chunk or less, or no such multiple exists."""
    if length <= chunk:
        return None
    first = offset // chunk + 1  # first multiple index > offset
    last = (offset + length - 1) // chunk  # last multiple index < end
    if first > last:
        return None
    middle = (2 * offset + length + chunk) // (2 * chunk)  # round(mid / chunk), halves up
    return min(max(middle, first), last) * chunk


def split_tile(tile: Tile, chunk: int) -> list[Tile]:
    """Split a tile in up to four (halving each side at a chunk multiple), row-major.

    Used when the service says a request is too large. Cuts fall on absolute multiples of
    ``chunk`` (the grid origin is 0), so the pieces stay chunk-aligned; a side of one chunk
    or less is not cut; ``[tile]`` when nothing can be cut.
    """
    chunk = _positive_int(chunk, "chunk")
    w = tile.window
    row_cut = _cut(w.row_off, w.height, chunk)
    col_cut = _cut(w.col_off, w.width, chunk)
    rows = [(w.row_off, w.row_end)] if row_cut is None else [
        (w.row_off, row_cut), (row_cut, w.row_end)
    ]
    cols = [(w.col_off, w.col_end)] if col_cut is None else [
        (w.col_off, col_cut), (col_cut, w.col_end)
    ]
    return [
        Tile(Window(r0, c0, r1 - r0, c1 - c0), tile.group, tile.step)
        for r0, r1 in rows
        for c0, c1 in cols
    ]
