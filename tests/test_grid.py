"""Tests of bulkpix.geometry.grid: windows, pixel grids, EE JSON, regions, output grids."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from affine import Affine
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pyproj import Transformer
from rasterio.crs import CRS

from bulkpix.geometry.grid import (
    SNAP_TOLERANCE_PX,
    PixelGrid,
    Window,
    aligned_grid,
    native_subgrid,
    native_window,
    region_bounds,
    same_crs,
)

# derandomize: the same examples every run (CI-stable); database=None: nothing written.
FAST = settings(max_examples=150, deadline=None, derandomize=True, database=None)
MEDIUM = settings(max_examples=60, deadline=None, derandomize=True, database=None)

UTM33 = "EPSG:32633"
S2_GRID = PixelGrid(UTM33, Affine(10.0, 0.0, 600000.0, 0.0, -10.0, 5200020.0), 10980, 10980)

# -- strategies ------------------------------------------------------------------------

small_ints = st.integers(min_value=0, max_value=60)
sizes = st.integers(min_value=1, max_value=60)
windows = st.builds(Window, small_ints, small_ints, sizes, sizes)
# Dyadic values (k / 8): products and sums of these stay exact in binary floating point.
dyadic = st.integers(min_value=-(2**20), max_value=2**20).map(lambda k: k / 8)
nonzero_dyadic = dyadic.filter(lambda v: v != 0)
finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)
scales = st.sampled_from([10.0, 20.0, 30.0, 60.0, 0.5, 1 / 3, 0.00026949458523585647, 8.983e-5])


@st.composite
def transforms(draw, rotated: bool | None = None) -> Affine:
    """A north-up or rotated (and maybe sheared / flipped) pixel-is-area transform."""
    scale_x = draw(scales)
    scale_y = draw(st.sampled_from([scale_x, draw(scales)]))
    origin_x = draw(st.floats(min_value=-1e6, max_value=1e6))
    origin_y = draw(st.floats(min_value=-1e6, max_value=1e7))
    base = Affine.translation(origin_x, origin_y) @ Affine.scale(scale_x, -scale_y)
    if rotated is None:
        rotated = draw(st.booleans())
    if not rotated:
        return base
    angle = draw(st.floats(min_value=-179.0, max_value=179.0))
    shear = draw(st.floats(min_value=-20.0, max_value=20.0))
    return base @ Affine.rotation(angle) @ Affine.shear(shear, 0.0)


@st.composite
def grids(draw, rotated: bool | None = None) -> PixelGrid:
    width = draw(st.integers(min_value=1, max_value=5000))
    height = draw(st.integers(min_value=1, max_value=5000))
    return PixelGrid(UTM33, draw(transforms(rotated)), width, height)


def pixel_coords(grid: PixelGrid, bounds) -> tuple[np.ndarray, np.ndarray]:
    """Independent oracle: the bounds' corners in the grid's pixel space, via affine's ``~``."""
    inverse = ~grid.transform
    xmin, ymin, xmax, ymax = bounds
    pts = [inverse @ (x, y) for x, y in ((xmin, ymin), (xmax, ymin), (xmax, ymax), (xmin, ymax))]
    return np.array([p[0] for p in pts]), np.array([p[1] for p in pts])


def window_of(parent: PixelGrid, sub: PixelGrid) -> Window:
    """Offset of ``sub`` inside ``parent`` (both on one lattice), as a Window."""
    col, row = ~parent.transform @ (sub.transform.c, sub.transform.f)
    assert abs(col - round(col)) < 1e-6 and abs(row - round(row)) < 1e-6
    return Window(round(row), round(col), sub.height, sub.width)


# -- Window ----------------------------------------------------------------------------


def test_window_properties():
    w = Window(2, 3, 4, 5)
    assert (w.row_end, w.col_end, w.shape, w.size) == (6, 8, (4, 5), 20)
    assert w.slices() == (slice(2, 6), slice(3, 8))
    with pytest.raises(ValueError):
        Window(0, 0, -1, 1)
    with pytest.raises(TypeError):
        Window(0, 0, 1.5, 1)  # type: ignore[arg-type]
    assert Window(np.int64(1), 0, 1, 1) == Window(1, 0, 1, 1)
    assert hash(Window(np.int64(1), 0, 1, 1)) == hash(Window(1, 0, 1, 1))


@FAST
@given(windows, windows)
def test_window_intersection_matches_pixel_sets(a: Window, b: Window):
    mask_a = np.zeros((130, 130), bool)
    mask_b = np.zeros((130, 130), bool)
    mask_a[a.slices()] = True
    mask_b[b.slices()] = True
    both = mask_a & mask_b
    result = a.intersection(b)
    assert result == b.intersection(a)
    if result is None:
        assert not both.any()
    else:
        expected = np.zeros_like(both)
        expected[result.slices()] = True
        assert (expected == both).all()
        assert a.contains(result) and b.contains(result)


# -- PixelGrid ---------------------------------------------------------------------------


def test_pixelgrid_validation():
    with pytest.raises(ValueError):
        PixelGrid(UTM33, Affine(10, 0, 0, 0, -10, 0), 0, 5)
    with pytest.raises(ValueError):
        PixelGrid(UTM33, Affine(0, 0, 0, 0, -10, 0), 5, 5)  # degenerate
    with pytest.raises(ValueError):
        PixelGrid("", Affine(10, 0, 0, 0, -10, 0), 5, 5)
    with pytest.raises(ValueError):
        PixelGrid(UTM33, Affine(math.nan, 0, 0, 0, -10, 0), 5, 5)


def test_window_grid_includes_shear():
    grid = PixelGrid(UTM33, Affine(10.0, 2.0, 1000.0, 3.0, -10.0, 5000.0), 100, 100)
    sub = grid.window_grid(Window(row_off=7, col_off=5, height=4, width=6))
    assert sub.transform == Affine(10.0, 2.0, 1000.0 + 50 + 14, 3.0, -10.0, 5000.0 + 15 - 70)
    assert (sub.width, sub.height, sub.crs) == (6, 4, UTM33)
    # Same as the contract's formula, bit for bit.
    assert sub.transform == grid.transform @ Affine.translation(5, 7)


@FAST
@given(
    st.tuples(nonzero_dyadic, dyadic, dyadic, dyadic, nonzero_dyadic, dyadic).filter(
        lambda t: t[0] * t[4] - t[1] * t[3] != 0
    ),
    windows,
    windows,
)
def test_window_grid_composes_exactly(coeffs, a: Window, b: Window):
    grid = PixelGrid(UTM33, Affine(*coeffs), 200, 200)
    twice = grid.window_grid(a).window_grid(b)
    once = grid.window_grid(Window(a.row_off + b.row_off, a.col_off + b.col_off, b.height, b.width))
    assert twice == once


@FAST
@given(grids(), windows, windows)
def test_window_grid_composes_for_any_floats(grid: PixelGrid, a: Window, b: Window):
    twice = grid.window_grid(a).window_grid(b)
    once = grid.window_grid(Window(a.row_off + b.row_off, a.col_off + b.col_off, b.height, b.width))
    assert (twice.width, twice.height) == (once.width, once.height)
    assert twice.transform[:6] == pytest.approx(once.transform[:6], rel=1e-12, abs=1e-6)


def test_footprint_bounds():
    assert S2_GRID.footprint_bounds() == (600000.0, 5090220.0, 709800.0, 5200020.0)
    # Rotated 90 degrees: x grows with rows, y with columns.
    grid = PixelGrid(UTM33, Affine(0.0, 10.0, 100.0, 10.0, 0.0, 200.0), 3, 2)
    assert grid.footprint_bounds() == (100.0, 200.0, 120.0, 230.0)
    lon_lat = S2_GRID.footprint_bounds("EPSG:4326")
    assert 16.2 < lon_lat[0] < lon_lat[2] < 17.8 and 45.9 < lon_lat[1] < lon_lat[3] < 47.0


# -- EE JSON -----------------------------------------------------------------------------


def test_to_ee_shape():
    assert S2_GRID.to_ee() == {
        "crsCode": "EPSG:32633",
        "affineTransform": {
            "scaleX": 10.0,
            "shearX": 0.0,
            "translateX": 600000.0,
            "shearY": 0.0,
            "scaleY": -10.0,
            "translateY": 5200020.0,
        },
        "dimensions": {"width": 10980, "height": 10980},
    }
    wkt = CRS.from_epsg(32633).to_wkt()
    ee = PixelGrid(wkt, S2_GRID.transform, 5, 5).to_ee()
    assert ee["crsWkt"] == wkt and "crsCode" not in ee
    proj = PixelGrid("+proj=utm +zone=33 +datum=WGS84", S2_GRID.transform, 5, 5).to_ee()
    assert "crsCode" not in proj and same_crs(proj["crsWkt"], UTM33)
    assert PixelGrid("epsg:4326", S2_GRID.transform, 5, 5).to_ee()["crsCode"] == "EPSG:4326"


@FAST
@given(
    st.tuples(finite, finite, finite, finite, finite, finite).filter(
        lambda t: Affine(*t).determinant != 0 and math.isfinite(Affine(*t).determinant)
    ),
    sizes,
    sizes,
    st.sampled_from([UTM33, "EPSG:4326", "SR-ORG:6974", CRS.from_epsg(3857).to_wkt()]),
)
def test_ee_json_round_trip_is_exact(coeffs, width: int, height: int, crs: str):
    grid = PixelGrid(crs, Affine(*coeffs), width, height)
    wire = json.loads(json.dumps(grid.to_ee()))
    assert PixelGrid.from_ee(wire) == grid
    # proto3 JSON leaves zero numbers out: dropping them must change nothing.
    sparse = dict(wire)
    sparse["affineTransform"] = {k: v for k, v in wire["affineTransform"].items() if v != 0}
    assert PixelGrid.from_ee(sparse) == grid


def test_from_ee_defaults():
    native = {
        "affineTransform": {"scaleX": 10, "translateX": 600000, "scaleY": -10},
        "dimensions": {"width": 3, "height": 2},
    }
    grid = PixelGrid.from_ee(native, default_crs=UTM33)
    assert grid == PixelGrid(UTM33, Affine(10, 0, 600000, 0, -10, 0), 3, 2)
    with pytest.raises(ValueError, match="crsCode"):
        PixelGrid.from_ee(native)
    with pytest.raises(ValueError):
        PixelGrid.from_ee({"crsCode": UTM33, "affineTransform": {"scaleX": 1, "scaleY": -1}})
    with pytest.raises(ValueError):
        PixelGrid.from_ee({**native, "affineTransform": {"scaleX": "x"}}, default_crs=UTM33)


def test_same_crs():
    assert same_crs("EPSG:4326", CRS.from_epsg(4326).to_wkt())
    assert same_crs("epsg:32633", "+proj=utm +zone=33 +datum=WGS84 +units=m +no_defs")
    assert not same_crs("EPSG:32633", "EPSG:32634")
    with pytest.raises(ValueError):
        same_crs("EPSG:4326", "not a crs")


# -- regions -----------------------------------------------------------------------------

BOX = [14.5, 45.0, 15.5, 45.4]  # straddles the central meridian: bottom edge bulges
BOX_POLYGON = {
    "type": "Polygon",
    "coordinates": [[[14.5, 45.0], [15.5, 45.0], [15.5, 45.4], [14.5, 45.4], [14.5, 45.0]]],
}


def dense_oracle_bounds(lonlat_box, dst: str, n: int = 2000):
    """Bounds of the box's edges sampled very densely, with pyproj (independent of rasterio)."""
    xmin, ymin, xmax, ymax = lonlat_box
    t = np.linspace(0, 1, n)
    xs = np.concatenate([xmin + (xmax - xmin) * t, np.full(n, xmax), xmax - (xmax - xmin) * t,
                         np.full(n, xmin)])
    ys = np.concatenate([np.full(n, ymin), ymin + (ymax - ymin) * t, np.full(n, ymax),
                         ymax - (ymax - ymin) * t])
    px, py = Transformer.from_crs("EPSG:4326", dst, always_xy=True).transform(xs, ys)
    return px.min(), py.min(), px.max(), py.max()


@pytest.mark.parametrize("region", [BOX, BOX_POLYGON], ids=["bbox", "polygon"])
def test_region_bounds_cover_the_curved_utm_box(region):
    got = region_bounds(region, "EPSG:4326", UTM33)
    want = dense_oracle_bounds(BOX, UTM33)
    # Covers (to float noise) and is tight (densified edges: within a few cm).
    assert got[0] <= want[0] + 1e-6 and got[1] <= want[1] + 1e-6
    assert got[2] >= want[2] - 0.05 and got[3] >= want[3] - 0.05
    assert got == pytest.approx(want, abs=0.05)
    # The 4 corners alone would miss the bulge of the edges.
    corners = dense_oracle_bounds(BOX, UTM33, n=2)
    assert got[1] < corners[1] - 100


def test_region_bounds_geojson_flavours():
    want = region_bounds(BOX_POLYGON, "EPSG:4326", UTM33)
    feature = {"type": "Feature", "properties": {}, "geometry": BOX_POLYGON}
    collection = {"type": "FeatureCollection", "features": [feature]}
    multi = {"type": "MultiPolygon", "coordinates": [BOX_POLYGON["coordinates"]]}
    for region in (feature, collection, multi):
        assert region_bounds(region, "EPSG:4326", UTM33) == pytest.approx(want, abs=1e-6)
    two = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}},
            {
                "type": "Feature",
                "geometry": {"type": "LineString", "coordinates": [[3, -4], [0, 9]]},
            },
        ],
    }
    assert region_bounds(two, UTM33, UTM33) == (0.0, -4.0, 3.0, 9.0)
    point = region_bounds({"type": "Point", "coordinates": [15.0, 45.0, 100.0]}, "EPSG:4326", UTM33)
    assert point[0] == point[2] and point[1] == point[3]


def test_region_bounds_same_crs_is_exact_and_validates():
    assert region_bounds([1.5, 2.5, 3.5, 4.5], UTM33, "epsg:32633") == (1.5, 2.5, 3.5, 4.5)
    assert region_bounds((1, 2, 3, 4), UTM33) == (1.0, 2.0, 3.0, 4.0)
    for bad in ([1, 2, 3], [3, 0, 1, 1], [0, 0, math.inf, 1], "0,0,1,1"):
        with pytest.raises(ValueError):
            region_bounds(bad, UTM33, UTM33)
    with pytest.raises(ValueError, match="unsupported"):
        region_bounds({"type": "Circle", "coordinates": [0, 0]}, "EPSG:4326", UTM33)


def test_region_bounds_drops_points_outside_the_projection():
    # A point past the pole cannot be projected; the others still give bounds.
    geom = {"type": "MultiPoint", "coordinates": [[15.0, 45.0], [15.0, 95.0], [15.1, 45.1]]}
    xmin, ymin, xmax, ymax = region_bounds(geom, "EPSG:4326", UTM33)
    assert 499000 < xmin < xmax < 510000 and 4.98e6 < ymin < ymax < 5.0e6


# -- native_subgrid ------------------------------------------------------------------------


@st.composite
def grid_and_bounds(draw, rotated: bool | None = None):
    """A grid and a bounds box whose corners are random points around the grid."""
    grid = draw(grids(rotated))
    frac = st.floats(min_value=-0.3, max_value=1.3)
    u0, u1 = sorted(draw(st.tuples(frac, frac)))
    v0, v1 = sorted(draw(st.tuples(frac, frac)))
    x0, y0 = grid.transform @ (u0 * grid.width, v0 * grid.height)
    x1, y1 = grid.transform @ (u1 * grid.width, v1 * grid.height)
    return grid, (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def check_covering_and_minimal(grid: PixelGrid, bounds) -> None:
    window = native_window(grid, bounds)
    cols, rows = pixel_coords(grid, bounds)
    # Float noise grows with coordinate magnitude over pixel size; allow for it generously.
    a, b, c0, d, e, f0 = grid.transform[:6]
    magnitude = max(*(abs(v) for v in bounds), abs(c0), abs(f0))
    tol = 1e-5 + 1024 * 2.2e-16 * magnitude / min(math.hypot(a, d), math.hypot(b, e))
    # Overlap of the bounds' pixel-space box with the grid, in px per axis.
    overlap_c = min(cols.max(), grid.width) - max(cols.min(), 0)
    overlap_r = min(rows.max(), grid.height) - max(rows.min(), 0)
    if window is None:
        assert overlap_c <= tol or overlap_r <= tol  # no clear overlap
        return
    assert overlap_c >= -tol and overlap_r >= -tol  # no clear miss
    assert Window(0, 0, grid.height, grid.width).contains(window)
    sub = native_subgrid(grid, bounds)
    assert sub == grid.window_grid(window)
    # Covers: every corner, clipped to the grid, lies inside the window.
    c = np.clip(cols, 0, grid.width)
    r = np.clip(rows, 0, grid.height)
    assert (c >= window.col_off - tol).all() and (c <= window.col_end + tol).all()
    assert (r >= window.row_off - tol).all() and (r <= window.row_end + tol).all()
    # Minimal: giving up a row/column on any side uncovers part of the (clipped) bounds,
    # unless the window is a single pixel wide there (a degenerate box gets one pixel).
    if window.width > 1:
        assert c.min() < window.col_off + 1 + tol
        assert c.max() > window.col_end - 1 - tol
    if window.height > 1:
        assert r.min() < window.row_off + 1 + tol
        assert r.max() > window.row_end - 1 - tol


@FAST
@given(grid_and_bounds(rotated=False))
def test_native_subgrid_covers_minimally_north_up(case):
    check_covering_and_minimal(*case)


@FAST
@given(grid_and_bounds(rotated=True))
def test_native_subgrid_covers_minimally_rotated(case):
    check_covering_and_minimal(*case)


@FAST
@given(
    grids(rotated=False),
    st.data(),
    st.floats(min_value=-1e-7, max_value=1e-7),
)
def test_native_subgrid_recovers_a_window_from_noisy_bounds(grid: PixelGrid, data, noise):
    """Bounds on pixel edges up to float noise give exactly that window, no extra row/col."""
    row0 = data.draw(st.integers(0, grid.height - 1))
    col0 = data.draw(st.integers(0, grid.width - 1))
    window = Window(
        row0, col0,
        data.draw(st.integers(1, grid.height - row0)), data.draw(st.integers(1, grid.width - col0)),
    )
    xmin, ymin, xmax, ymax = grid.window_grid(window).footprint_bounds()
    sx, sy = abs(grid.transform.a), abs(grid.transform.e)
    noisy = (xmin + noise * sx, ymin - noise * sy, xmax - noise * sx, ymax + noise * sy)
    assert native_window(grid, noisy) == window
    assert native_window(grid, (xmin - noise * sx, ymin + noise * sy,
                                xmax + noise * sx, ymax - noise * sy)) == window


def test_native_subgrid_examples():
    sub = native_subgrid(S2_GRID, (600005.0, 5190000.0, 600100.0, 5200000.0))
    assert sub == PixelGrid(UTM33, Affine(10.0, 0.0, 600000.0, 0.0, -10.0, 5200000.0), 10, 1000)
    # 1e-9 px past an edge is noise; 1e-3 px is real and costs a column.
    assert native_window(S2_GRID, (600000.0 - 1e-8, 5199000.0, 600100.0 + 1e-8, 5200000.0)) == (
        Window(2, 0, 100, 10)
    )
    assert native_window(S2_GRID, (600000.0, 5199000.0, 600100.01, 5200000.0)).width == 11
    # Partly outside: clipped. Entirely outside or only touching: None.
    assert native_window(S2_GRID, (590000.0, 5199000.0, 600100.0, 5210000.0)) == (
        Window(0, 0, 102, 10)
    )
    assert native_window(S2_GRID, (500000.0, 5100000.0, 599000.0, 5200000.0)) is None
    assert native_window(S2_GRID, (590000.0, 5100000.0, 600000.0, 5200000.0)) is None
    # A point gets one pixel.
    assert native_window(S2_GRID, (600015.0, 5200005.0, 600015.0, 5200005.0)) == (
        Window(1, 1, 1, 1)
    )


# -- aligned_grid --------------------------------------------------------------------------

coords = st.floats(min_value=-2e7, max_value=2e7)


@st.composite
def boxes(draw):
    """Boxes anywhere up to 2e7 from the origin, up to 1e5 across."""
    x0, y0 = draw(coords), draw(coords)
    extent = st.floats(min_value=0.0, max_value=1e5)
    return (x0, y0, x0 + draw(extent), y0 + draw(extent))


def is_multiple(value: float, scale: float) -> bool:
    k = value / scale
    return abs(k - round(k)) <= 1e-9 * max(1.0, abs(k))


@FAST
@given(scales, scales, boxes())
def test_aligned_grid_edges_on_multiples_and_minimal(scale_x: float, scale_y: float, box):
    grid = aligned_grid(UTM33, (scale_x, scale_y), box)
    a, b, c, d, e, f = grid.transform[:6]
    assert (a, b, d, e) == (scale_x, 0.0, 0.0, -scale_y)
    assert is_multiple(c, scale_x) and is_multiple(f, scale_y)
    gx0, gy0, gx1, gy1 = grid.footprint_bounds()
    xmin, ymin, xmax, ymax = box
    tol_x = (SNAP_TOLERANCE_PX + 1e-6) * scale_x + 1e-9 * abs(xmin + xmax)
    tol_y = (SNAP_TOLERANCE_PX + 1e-6) * scale_y + 1e-9 * abs(ymin + ymax)
    # Covers ...
    assert gx0 <= xmin + tol_x and gx1 >= xmax - tol_x
    assert gy0 <= ymin + tol_y and gy1 >= ymax - tol_y
    # ... minimally (one pixel less on any side uncovers the box), unless one pixel wide.
    if grid.width > 1:
        assert gx0 + scale_x > xmin - tol_x and gx1 - scale_x < xmax + tol_x
    if grid.height > 1:
        assert gy0 + scale_y > ymin - tol_y and gy1 - scale_y < ymax + tol_y


def lattice_cols(grid: PixelGrid) -> tuple[int, int]:
    start = round(grid.transform.c / grid.transform.a)
    return start, start + grid.width


def lattice_rows(grid: PixelGrid) -> tuple[int, int]:
    top = round(grid.transform.f / -grid.transform.e)
    return top - grid.height, top


@FAST
@given(scales, boxes(), st.data())
def test_neighbouring_boxes_share_the_lattice(scale: float, box, data):
    xmin, ymin, xmax, ymax = box
    assume(xmax - xmin > 2 * scale)
    k = data.draw(st.integers(math.ceil(xmin / scale) + 1, math.floor(xmax / scale) - 1))
    split_on_edge = k * scale
    split_anywhere = data.draw(st.floats(min_value=xmin, max_value=xmax))
    for split in (split_on_edge, split_anywhere):
        west = aligned_grid(UTM33, scale, (xmin, ymin, split, ymax))
        east = aligned_grid(UTM33, scale, (split, ymin, xmax, ymax))
        assert lattice_rows(west) == lattice_rows(east)
        assert west.transform.f == east.transform.f and west.height == east.height
        west_end, east_start = lattice_cols(west)[1], lattice_cols(east)[0]
        if split == split_on_edge:
            assert west_end == east_start == k  # abut exactly: no gap, no overlap
            assert east.transform.c == k * scale
        else:
            assert east_start <= west_end <= east_start + 1  # at most the shared column
        # Same pixel lattice: east's origin is a whole number of west's pixels away.
        offset = (east.transform.c - west.transform.c) / scale
        index = max(abs(east.transform.c), abs(west.transform.c)) / scale
        assert abs(offset - round(offset)) < 1e-9 + 256 * 2.2e-16 * index


def test_aligned_grid_examples():
    grid = aligned_grid(UTM33, 10, (600003.0, 5199991.0, 600021.0, 5200000.0 + 1e-9))
    assert grid == PixelGrid(UTM33, Affine(10.0, 0.0, 600000.0, 0.0, -10.0, 5200000.0), 3, 1)
    assert aligned_grid(UTM33, 10, (-15.0, -15.0, -5.0, -5.0)).transform.c == -20.0
    assert aligned_grid(UTM33, 10, (5.0, 5.0, 5.0, 5.0)).shape == (1, 1)
    with pytest.raises(ValueError):
        aligned_grid(UTM33, 0, (0, 0, 1, 1))
    with pytest.raises(ValueError):
        aligned_grid(UTM33, (10, -10), (0, 0, 1, 1))
