"""Tests of bulkpix.geometry.tiling: limits, band groups, lazy chunk-aligned plans, splits."""

from __future__ import annotations

import inspect
import itertools
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bulkpix.dtypes import request_bytes
from bulkpix.emulator.limits import request_size
from bulkpix.geometry.grid import Window
from bulkpix.geometry.tiling import (
    MAX_BANDS,
    MAX_REQUEST_BYTES,
    MAX_SIDE,
    ServiceModel,
    Tile,
    TilePlan,
    band_groups,
    parse_tile_key,
    plan_tiles,
    split_tile,
)

# derandomize: the same examples every run (CI-stable); database=None: nothing written.
FAST = settings(max_examples=150, deadline=None, derandomize=True, database=None)
MEDIUM = settings(max_examples=40, deadline=None, derandomize=True, database=None)

chunks = st.one_of(st.sampled_from([1, 7, 64, 100, 256, 512, 1024]), st.integers(1, 2048))
itemsize_lists = st.one_of(
    st.lists(st.sampled_from([1, 2, 4, 8]), min_size=1, max_size=40),
    st.builds(
        lambda size, n: [size] * n, st.sampled_from([1, 2, 4, 8]), st.integers(1, 2000)
    ),
)


def cost(itemsizes, group) -> int:
    """Bytes per pixel of a band group, computed independently of the module."""
    return sum(itemsizes[i] + 1 for i in group)


def on_chunk_edge(edge: int, chunk: int, side: int) -> bool:
    return edge in (0, side) or edge % chunk == 0


def check_tile_limits_and_alignment(plan: TilePlan, tile: Tile, itemsizes) -> None:
    w = tile.window
    assert 1 <= w.height <= MAX_SIDE and 1 <= w.width <= MAX_SIDE
    group = plan.band_groups[tile.group]
    assert len(group) <= MAX_BANDS
    assert plan.tile_request_bytes(tile) == w.height * w.width * cost(itemsizes, group)
    assert plan.tile_request_bytes(tile) <= MAX_REQUEST_BYTES
    assert 0 <= w.row_off < w.row_end <= plan.height and 0 <= w.col_off < w.col_end <= plan.width
    for edge in (w.row_off, w.row_end):
        assert on_chunk_edge(edge, plan.chunk, plan.height)
    for edge in (w.col_off, w.col_end):
        assert on_chunk_edge(edge, plan.chunk, plan.width)


def check_plan(plan: TilePlan, itemsizes, *, count_pixels: bool) -> None:
    """Limits, alignment and exactly-once coverage per band group."""
    assert [i for g in plan.band_groups for i in g] == list(range(len(itemsizes)))
    n_groups = len(plan.band_groups)
    all_bands = cost(itemsizes, range(len(itemsizes)))
    assert plan.total_request_bytes == plan.height * plan.width * all_bands
    if count_pixels:
        counts = np.zeros((n_groups, plan.height, plan.width), np.int32)
    rows: set[tuple[int, int]] = set()
    cols: set[tuple[int, int]] = set()
    seen: set[tuple[int, int, int]] = set()
    area = 0
    n = 0
    for tile in plan.tiles():
        n += 1
        check_tile_limits_and_alignment(plan, tile, itemsizes)
        w = tile.window
        if count_pixels:
            counts[tile.group][w.slices()] += 1
        rows.add((w.row_off, w.row_end))
        cols.add((w.col_off, w.col_end))
        seen.add((w.row_off, w.col_off, tile.group))
        area += w.size
    assert n == plan.n_tiles == len(seen)
    assert area == plan.height * plan.width * n_groups
    if count_pixels:
        assert (counts == 1).all()
    # Arithmetic coverage: the row (column) intervals partition the side, and every
    # (row interval, column interval, group) appears exactly once (len(seen) == n above).
    for intervals, side in ((rows, plan.height), (cols, plan.width)):
        ordered = sorted(intervals)
        assert ordered[0][0] == 0 and ordered[-1][1] == side
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ordered))
    assert n == len(rows) * len(cols) * n_groups


# -- tiles and keys ----------------------------------------------------------------------


def test_tile_key_round_trip_and_format():
    tile = Tile(Window(1024, 2048, 512, 256), 3)
    assert tile.key == "g3_r1024_c2048_h512_w256"
    assert parse_tile_key(tile.key) == tile
    for bad in ("g3_r1_c2_h3", "x", "g3_r1_c2_h3_w4.tif", "g-1_r0_c0_h1_w1", ""):
        with pytest.raises(ValueError):
            parse_tile_key(bad)


@FAST
@given(st.integers(0, 10**7), st.integers(0, 10**7), st.integers(1, MAX_SIDE),
       st.integers(1, MAX_SIDE), st.integers(0, 100))
def test_tile_key_round_trips(row, col, h, w, group):
    tile = Tile(Window(row, col, h, w), group)
    assert parse_tile_key(tile.key) == tile
    assert all(ch.isalnum() or ch == "_" for ch in tile.key)


# -- band groups -------------------------------------------------------------------------


def min_groups_dp(costs, cap, max_bands):
    """Brute-force DP: fewest in-order groups, and the smallest max group cost for it."""
    n = len(costs)
    best = [(0, 0)] + [(math.inf, math.inf)] * n  # (groups, max cost) for prefix
    for end in range(1, n + 1):
        for start in range(end - 1, -1, -1):
            size = sum(costs[start:end])
            if end - start > max_bands or size > cap:
                break
            prev = best[start]
            candidate = (prev[0] + 1, max(prev[1], size))
            best[end] = min(best[end], candidate)
    return best[n]


@FAST
@given(
    st.lists(st.sampled_from([1, 2, 4, 8]), min_size=1, max_size=30),
    st.integers(9, 80),
    st.integers(1, 8),
)
def test_band_groups_fewest_balanced_in_order(itemsizes, cap, max_bands):
    groups = band_groups(itemsizes, cap, max_bands)
    assert [i for g in groups for i in g] == list(range(len(itemsizes)))
    assert all(len(g) <= max_bands and cost(itemsizes, g) <= cap for g in groups)
    n_groups, max_cost = min_groups_dp([s + 1 for s in itemsizes], cap, max_bands)
    assert len(groups) == n_groups
    assert max(cost(itemsizes, g) for g in groups) == max_cost


def test_band_groups_examples():
    assert band_groups([1, 1, 1], 100) == ((0, 1, 2),)
    assert band_groups([2] * 1025, 10**6) == (tuple(range(513)), tuple(range(513, 1025)))
    assert band_groups([4, 4, 4, 4], 10) == ((0, 1), (2, 3))
    with pytest.raises(ValueError, match="band 1 needs 9 bytes"):
        band_groups([1, 8], 5)
    with pytest.raises(ValueError):
        band_groups([], 5)


# -- plans: properties -------------------------------------------------------------------


@st.composite
def small_plans(draw):
    height, width = draw(st.integers(1, 300)), draw(st.integers(1, 300))
    chunk = draw(st.one_of(st.integers(1, 64), st.sampled_from([100, 256, 512])))
    itemsizes = draw(itemsize_lists)
    tile = draw(st.one_of(
        st.just("auto"),
        st.tuples(st.integers(1, 8), st.integers(1, 8)).map(lambda k: (k[0] * chunk, k[1] * chunk)),
    ))
    concurrency = draw(st.integers(1, 64))
    inflight = draw(st.sampled_from([1, 10**4, 10**6, 256 * 2**20]))
    return height, width, chunk, itemsizes, tile, concurrency, inflight


def make_plan(height, width, chunk, itemsizes, tile, concurrency, inflight):
    return plan_tiles(height, width, itemsizes, chunk, tile, concurrency=concurrency,
                      max_inflight_bytes=inflight)


def check_auto_caps(plan: TilePlan, itemsizes, concurrency, inflight) -> None:
    """Auto plans respect the memory cap (never below one chunk tile)."""
    chunk_tile = min(plan.chunk, plan.height) * min(plan.chunk, plan.width)
    biggest_group = max(cost(itemsizes, g) for g in plan.band_groups)
    assert plan.max_request_bytes <= max(inflight // 2, chunk_tile * biggest_group)


@MEDIUM
@given(small_plans())
def test_small_plans_cover_each_pixel_once_per_group(case):
    height, width, chunk, itemsizes, tile, concurrency, inflight = case
    try:
        plan = make_plan(*case)
    except ValueError as exc:
        # Only an explicit tile may be refused, and only for a real limit.
        assert tile != "auto"
        th, tw = min(tile[0], height), min(tile[1], width)
        worst = max(cost(itemsizes, g) for g in band_groups(
            itemsizes, MAX_REQUEST_BYTES // (min(chunk, height) * min(chunk, width))))
        assert th * tw * worst > MAX_REQUEST_BYTES, exc
        assert str(th * tw * worst) in str(exc)
        return
    check_plan(plan, itemsizes, count_pixels=True)
    if tile == "auto":
        check_auto_caps(plan, itemsizes, concurrency, inflight)
    else:
        assert (plan.tile_height, plan.tile_width) == (min(tile[0], height), min(tile[1], width))


@MEDIUM
@given(
    st.integers(1, 200_000), st.integers(1, 200_000), chunks, itemsize_lists,
    st.integers(1, 64),
)
def test_large_auto_plans_respect_limits(height, width, chunk, itemsizes, concurrency):
    assume(max(min(chunk, height), min(chunk, width)) <= MAX_SIDE)
    try:
        plan = plan_tiles(height, width, itemsizes, chunk, concurrency=concurrency)
    except ValueError as exc:
        # Only when a single band cannot fit even a one-chunk tile.
        assert min(chunk, height) * min(chunk, width) * (max(itemsizes) + 1) > MAX_REQUEST_BYTES
        assert "smaller chunk" in str(exc)
        return
    assert plan.n_tiles == plan.tile_rows * plan.tile_cols * len(plan.band_groups)
    assert [i for g in plan.band_groups for i in g] == list(range(len(itemsizes)))
    check_auto_caps(plan, itemsizes, concurrency, 256 * 2**20)
    if plan.n_tiles <= 3000:
        check_plan(plan, itemsizes, count_pixels=False)
    else:
        # Too many to walk: check the first tiles and the arithmetic of the tiling.
        for tile in itertools.islice(plan.tiles(), 500):
            check_tile_limits_and_alignment(plan, tile, itemsizes)
        rows, cols = plan.tile_rows, plan.tile_cols
        assert (rows - 1) * plan.tile_height < plan.height <= rows * plan.tile_height
        assert (cols - 1) * plan.tile_width < plan.width <= cols * plan.tile_width
        for tile_side, side in ((plan.tile_height, height), (plan.tile_width, width)):
            assert tile_side == side or tile_side % chunk == 0
        assert plan.max_request_bytes <= MAX_REQUEST_BYTES


# -- plans: examples and the auto rule ---------------------------------------------------


def test_tiny_and_ragged_grids():
    plan = plan_tiles(1, 1, [8], 256)
    assert [t.window for t in plan.tiles()] == [Window(0, 0, 1, 1)]
    plan = plan_tiles(600, 300, [2], 256, (256, 256))
    assert [t.window for t in plan.tiles()] == [
        Window(0, 0, 256, 256), Window(0, 256, 256, 44),
        Window(256, 0, 256, 256), Window(256, 256, 256, 44),
        Window(512, 0, 88, 256), Window(512, 256, 88, 44),
    ]
    # A tile side longer than the grid just means one tile across (needs no alignment).
    plan = plan_tiles(300, 300, [1], 256, (512, 300))
    assert (plan.tile_height, plan.tile_width, plan.n_tiles) == (300, 300, 1)


def test_tiles_order_is_row_major_with_group_innermost():
    plan = plan_tiles(512, 512, [8] * 200, 256, (256, 256))  # 1800 B/px: several groups
    assert len(plan.band_groups) > 1
    tiles = list(plan.tiles())
    n_groups = len(plan.band_groups)
    assert [t.group for t in tiles[:n_groups]] == list(range(n_groups))
    assert [t.window for t in tiles[::n_groups]] == list(plan.windows())
    offsets = [(w.row_off, w.col_off) for w in plan.windows()]
    assert offsets == [(0, 0), (0, 256), (256, 0), (256, 256)]


def test_explicit_tile_errors_name_the_problem():
    with pytest.raises(ValueError, match="not a multiple of chunk 256"):
        plan_tiles(10_000, 10_000, [2], 256, (300, 512))
    # 8192 x 8192 x (4 + 1) = 335,544,320 bytes.
    with pytest.raises(ValueError, match=r"335544320 bytes.*50331648"):
        plan_tiles(10_000, 10_000, [4], 256, (8192, 8192))
    with pytest.raises(ValueError, match="32768"):
        plan_tiles(100_000, 100, [1], 256, (65536, 100))
    with pytest.raises(ValueError):
        plan_tiles(100, 100, [1], 0)
    with pytest.raises(ValueError):
        plan_tiles(100, 100, [1], 256, "big")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chunk 40000"):
        plan_tiles(100_000, 100_000, [1], 40_000)


def test_tileplan_validates_itself():
    with pytest.raises(ValueError, match="multiple of chunk"):
        TilePlan(1000, 1000, 256, 300, 256, ((0,),), (1,))
    with pytest.raises(ValueError, match="request limit"):
        TilePlan(10_000, 10_000, 256, 8192, 8192, ((0,),), (4,))
    with pytest.raises(ValueError, match="every band"):
        TilePlan(1000, 1000, 256, 256, 256, ((1, 0),), (1, 1))
    bare = TilePlan(1000, 1000, 256, 256, 256, ((0,),))
    assert bare.n_tiles == 16
    with pytest.raises(ValueError, match="itemsizes"):
        bare.tile_request_bytes(next(bare.tiles()))


def test_request_byte_counts():
    plan = plan_tiles(1000, 600, [2, 4, 1], 256, (512, 512))  # 3 + 5 + 2 = 10 B/px
    tiles = list(plan.tiles())
    assert plan.tile_request_bytes(tiles[0]) == 512 * 512 * 10
    assert plan.total_request_bytes == 1000 * 600 * 10 == sum(map(plan.tile_request_bytes, tiles))
    assert plan.max_request_bytes == 512 * 512 * 10


def test_planner_and_emulator_count_request_bytes_by_one_rule():
    plan = plan_tiles(1000, 600, [2, 4, 1], 256, (512, 512))
    dtypes = [np.dtype("uint16"), np.dtype("float32"), np.dtype("uint8")]
    expected = 512 * 512 * (3 + 5 + 2)
    assert request_bytes(512, 512, [2, 4, 1]) == expected
    assert plan.tile_request_bytes(next(plan.tiles())) == expected
    assert request_size(512, 512, dtypes) == expected


def _wall_time(plan: TilePlan, concurrency: int, qps: float, service: ServiceModel) -> float:
    """The auto-tiler's cost model: every request as long as the largest, run in waves of
    ``concurrency``, the last starting no sooner than ``(n - 1) / qps``."""
    seconds = service.seconds(plan.max_request_bytes)
    n = plan.n_tiles
    return max(-(-n // concurrency) * seconds, (n - 1) / qps + seconds)


def test_small_region_slow_service_uses_the_concurrency():
    """Fewer tiles than slots leave capacity idle: a slow-per-MB service gets many tiles."""
    service = ServiceModel(base_s=0.2, per_mb_s=1.0)
    for concurrency in (8, 16, 32):
        plan = plan_tiles(4096, 4096, [2], 256, concurrency=concurrency, service=service)
        assert plan.n_tiles >= concurrency
        one_tile = TilePlan(4096, 4096, 256, 4096, 4096, ((0,),), (2,))
        assert _wall_time(plan, concurrency, 100.0, service) < (
            _wall_time(one_tile, concurrency, 100.0, service) / 4
        )


def test_auto_not_worse_than_other_sizes():
    """The pick beats (or ties, up to the squareness weight) every aligned alternative."""
    service = ServiceModel()
    plan = plan_tiles(3000, 5000, [2, 2], 256, concurrency=40, service=service)
    def score(p: TilePlan) -> float:
        aspect = max(p.tile_height, p.tile_width) / min(p.tile_height, p.tile_width)
        return _wall_time(p, 40, 100.0, service) * (1 + 0.02 * math.log2(aspect))

    best = score(plan)
    for kh, kw in itertools.product(range(1, 13), range(1, 21)):
        th, tw = min(kh * 256, 3000), min(kw * 256, 5000)
        if th * tw * 6 > min(128 * 2**20, MAX_REQUEST_BYTES):
            continue  # over the memory cap or the request limit: not a candidate
        other = TilePlan(3000, 5000, 256, th, tw, ((0, 1),), (2, 2))
        assert best <= score(other) * (1 + 1e-9)


@pytest.mark.parametrize("itemsizes", [[1], [2], [4] * 3, [8] * 7, [1] * 1500])
def test_huge_region_gets_tiles_at_the_size_cap(itemsizes):
    inflight = 256 * 2**20
    plan = plan_tiles(200_000, 200_000, itemsizes, 256, max_inflight_bytes=inflight)
    per_px = max(cost(itemsizes, g) for g in plan.band_groups)
    cap = min(MAX_REQUEST_BYTES, max(inflight // 2, 256 * 256 * per_px))
    assert plan.max_request_bytes <= cap
    # Near the cap: a huge region wants the fewest requests.
    assert plan.max_request_bytes > 0.75 * cap


def test_memory_cap_and_request_limit_when_memory_is_plentiful():
    plan = plan_tiles(200_000, 200_000, [4, 4, 4], 256, max_inflight_bytes=10**12)
    assert plan.max_request_bytes <= MAX_REQUEST_BYTES
    assert plan.max_request_bytes > 0.8 * MAX_REQUEST_BYTES  # big tiles: fewest requests
    # Two bodies must fit the memory budget.
    small = plan_tiles(200_000, 200_000, [4, 4, 4], 256, max_inflight_bytes=16 * 2**20)
    assert 4 * 2**20 < small.max_request_bytes <= 8 * 2**20
    # Never below one chunk x chunk tile, even with a silly cap.
    tiny = plan_tiles(200_000, 200_000, [4, 4, 4], 256, max_inflight_bytes=1)
    assert (tiny.tile_height, tiny.tile_width) == (256, 256)


def test_planning_is_lazy():
    plan = plan_tiles(200_000, 200_000, [1], 256, max_inflight_bytes=1)  # 256 x 256 tiles
    assert plan.n_tiles == 782 * 782 >= 600_000
    tiles = plan.tiles()
    assert inspect.isgenerator(tiles)
    assert next(tiles) == Tile(Window(0, 0, 256, 256), 0)
    for chunk in (1, 16, 256, 2048):  # the search stays cheap even at chunk 1
        assert plan_tiles(200_000, 150_000, [2, 2, 4], chunk).n_tiles > 0
    # Many groups x many tiles: still nothing materialised.
    many = plan_tiles(150_000, 150_000, [1] * 2000, 256, max_inflight_bytes=1)
    assert many.n_tiles > 1_000_000 and next(many.tiles()).group == 0


# -- split_tile --------------------------------------------------------------------------


def test_split_tile_examples():
    tile = Tile(Window(512, 256, 1024, 700), 2)
    parts = split_tile(tile, 256)
    assert [p.window for p in parts] == [
        Window(512, 256, 512, 256), Window(512, 512, 512, 444),
        Window(1024, 256, 512, 256), Window(1024, 512, 512, 444),
    ]
    assert {p.group for p in parts} == {2}
    assert split_tile(Tile(Window(0, 0, 256, 256)), 256) == [Tile(Window(0, 0, 256, 256))]
    assert split_tile(Tile(Window(0, 0, 256, 300)), 256) == [
        Tile(Window(0, 0, 256, 256)), Tile(Window(0, 256, 256, 44))
    ]
    assert len(split_tile(Tile(Window(0, 0, 1, 1)), 1)) == 1


@FAST
@given(
    st.integers(0, 1000), st.integers(0, 1000), st.integers(1, 3000), st.integers(1, 3000),
    st.integers(1, 600), st.booleans(),
)
def test_split_tile_partitions_and_stays_aligned(rk, ck, height, width, chunk, aligned):
    row, col = (rk * chunk, ck * chunk) if aligned else (rk, ck)
    tile = Tile(Window(row, col, height, width), 1)
    parts = split_tile(tile, chunk)
    assert len(parts) in (1, 2, 4)
    assert sum(p.window.size for p in parts) == tile.window.size
    assert all(tile.window.contains(p.window) and p.group == 1 for p in parts)
    assert all(a.window.intersection(b.window) is None for a, b in itertools.combinations(parts, 2))
    for p in parts:
        for edge in (p.window.row_off, p.window.row_end):
            assert edge in (tile.window.row_off, tile.window.row_end) or edge % chunk == 0
        for edge in (p.window.col_off, p.window.col_end):
            assert edge in (tile.window.col_off, tile.window.col_end) or edge % chunk == 0
    cut_rows = len({p.window.row_off for p in parts}) == 2
    cut_cols = len({p.window.col_off for p in parts}) == 2
    assert not cut_rows or height > chunk
    assert not cut_cols or width > chunk
    if aligned:
        # An aligned side longer than a chunk is always cut, near its middle.
        assert cut_rows == (height > chunk) and cut_cols == (width > chunk)
        for p in parts:
            if cut_rows:
                assert abs(p.window.height - height / 2) <= chunk / 2 + 0.5
            if cut_cols:
                assert abs(p.window.width - width / 2) <= chunk / 2 + 0.5


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(st.integers(1, 5000), st.integers(1, 5000), st.sampled_from([64, 256, 500]))
def test_repeated_splits_reach_single_chunks(height, width, chunk):
    pending = [Tile(Window(0, 0, height, width))]
    done = []
    while pending:
        tile = pending.pop()
        parts = split_tile(tile, chunk)
        (done if parts == [tile] else pending).extend(parts)
    assert all(t.window.height <= chunk and t.window.width <= chunk for t in done)
    assert sum(t.window.size for t in done) == height * width
