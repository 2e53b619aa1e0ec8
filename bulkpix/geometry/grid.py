"""Pixel grids, windows and regions: where the output pixels are.

Conventions (see ARCHITECTURE.md): pixel-is-area, ``Affine(a, b, c, d, e, f)`` maps
(col, row) -> (x, y) and (0, 0) is the outer corner of the first pixel; a sub-window at
(row_off, col_off) has transform ``transform @ Affine.translation(col_off, row_off)``.

Modelled on rasterio's ``windows``/``transform`` modules and odc-geo's ``GeoBox``: immutable
values plus small free functions. Pure: no I/O beyond PROJ/GDAL coordinate maths.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
from affine import Affine

# is_lonlat_crs and lonlat_problem live with CRS (no numpy: the job checks use them).
from bulkpix.geometry.crs import CRS, CRSLike, is_lonlat_crs, lonlat_problem

__all__ = [
    "CRS",
    "SNAP_TOLERANCE_PX",
    "Bounds",
    "CRSLike",
    "PixelGrid",
    "RegionLike",
    "Window",
    "aligned_grid",
    "describe_bounds",
    "is_lonlat_crs",
    "lonlat_problem",
    "native_subgrid",
    "native_window",
    "region_bounds",
    "same_crs",
    "sized_grid",
]

Bounds: TypeAlias = tuple[float, float, float, float]
"""(xmin, ymin, xmax, ymax) in some CRS."""

RegionLike: TypeAlias = Sequence[float] | Mapping[str, Any]
"""A bbox ``[xmin, ymin, xmax, ymax]`` or a GeoJSON geometry / Feature / FeatureCollection."""

SNAP_TOLERANCE_PX = 1e-6
"""A coordinate within this many pixels of a pixel edge counts as on the edge.

Round trips through PROJ or an inverted affine leave errors around 1e-10..1e-8 px; without a
tolerance such noise would add a whole extra row or column when snapping outward.
"""

DENSIFY_PTS = 21
"""Points inserted per edge when mapping a region to another CRS (as ``transform_bounds``)."""


# --------------------------------------------------------------------------------------
# Windows


@dataclass(frozen=True, slots=True)
class Window:
    """An integer pixel window: rows ``row_off .. row_end``, columns ``col_off .. col_end``."""

    row_off: int
    col_off: int
    height: int
    width: int

    def __post_init__(self) -> None:
        for name in ("row_off", "col_off", "height", "width"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or isinstance(value, bool):
                raise TypeError(f"Window.{name} must be an int, got {value!r}")
            object.__setattr__(self, name, int(value))  # numpy ints -> int, for hashing/JSON
        if self.height < 0 or self.width < 0:
            raise ValueError(f"Window size must be >= 0, got {self.height} x {self.width}")

    @property
    def row_end(self) -> int:
        return self.row_off + self.height

    @property
    def col_end(self) -> int:
        return self.col_off + self.width

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width), numpy order."""
        return (self.height, self.width)

    @property
    def size(self) -> int:
        """Number of pixels."""
        return self.height * self.width

    def slices(self) -> tuple[slice, slice]:
        """(row slice, column slice), to index an array laid out like the parent grid."""
        return (slice(self.row_off, self.row_end), slice(self.col_off, self.col_end))

    def intersection(self, other: Window) -> Window | None:
        """The overlap of two windows, or None when they share no pixel."""
        row0 = max(self.row_off, other.row_off)
        col0 = max(self.col_off, other.col_off)
        row1 = min(self.row_end, other.row_end)
        col1 = min(self.col_end, other.col_end)
        if row1 <= row0 or col1 <= col0:
            return None
        return Window(row0, col0, row1 - row0, col1 - col0)

    def contains(self, other: Window) -> bool:
        return (
            self.row_off <= other.row_off
            and self.col_off <= other.col_off
            and other.row_end <= self.row_end
            and other.col_end <= self.col_end
        )


# --------------------------------------------------------------------------------------
# CRS helpers


def same_crs(a: CRSLike, b: CRSLike) -> bool:
    """Whether two CRSs (or strings: authority code, WKT or PROJ) name the same CRS;
    ``ValueError`` when they differ and one names none."""
    crs_a, crs_b = CRS.of(a), CRS.of(b)
    if crs_a.text == crs_b.text:
        return True
    crs_a.to_rasterio(), crs_b.to_rasterio()  # raise for a text that names no CRS
    return crs_a == crs_b


def describe_bounds(bounds: Sequence[float]) -> str:
    """``[xmin, ymin, xmax, ymax]`` with 7 significant digits: short, and enough to compare."""
    return "[" + ", ".join(f"{float(v):.7g}" for v in bounds) + "]"


# --------------------------------------------------------------------------------------
# Affine helpers (explicit formulas: affine 3 deprecates ``*`` and 2.x lacks ``@`` on some
# versions; these give bit-identical results to ``transform @ ...``)


def _translated(transform: Affine, col: float, row: float) -> Affine:
    """``transform @ Affine.translation(col, row)``: shear terms included."""
    a, b, c, d, e, f = transform[:6]
    return Affine(a, b, a * col + b * row + c, d, e, d * col + e * row + f)


def _to_pixel(transform: Affine, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map CRS coordinates to fractional (col, row) through the inverse of ``transform``."""
    a, b, c, d, e, f = transform[:6]
    dx = np.asarray(xs, dtype=float) - c
    dy = np.asarray(ys, dtype=float) - f
    if b == 0 and d == 0:
        # North-up: a single division per axis keeps e.g. (600010 - 600000) / 10 exact.
        return dx / a, dy / e
    det = a * e - b * d
    return (e * dx - b * dy) / det, (a * dy - d * dx) / det


def _snap_tolerance(magnitude: float, pixel_size: float) -> float:
    """``SNAP_TOLERANCE_PX``, or more when coordinates this large carry more noise (in px).

    E.g. degree-sized pixels at UTM-sized coordinates: one ulp of 2e6 is 5e-6 px of 1e-4.
    """
    return max(SNAP_TOLERANCE_PX, 64 * sys.float_info.epsilon * magnitude / pixel_size)


def _snap_outward(lo: float, hi: float, tol: float = SNAP_TOLERANCE_PX) -> tuple[int, int]:
    """Integer interval covering [lo, hi]; ends within ``tol`` of an integer snap to it.

    A degenerate interval (a point, or one thinner than ``tol`` sitting on an edge) still
    gets one pixel, so a Point region yields a 1 x 1 grid.
    """
    start = math.floor(lo + tol)
    end = math.ceil(hi - tol)
    if end <= start:
        end = start + 1
    return start, end


# --------------------------------------------------------------------------------------
# Pixel grids


@dataclass(frozen=True)
class PixelGrid:
    """A raster grid: CRS, pixel-is-area affine transform and size in pixels.

    ``crs`` may be given as a string; the grid holds it as a ``CRS`` (parsed once).
    """

    crs: CRS
    transform: Affine
    width: int
    height: int

    def __post_init__(self) -> None:
        if not isinstance(self.crs, CRS):
            object.__setattr__(self, "crs", CRS.of(self.crs))
        if not isinstance(self.transform, Affine):
            object.__setattr__(self, "transform", Affine(*tuple(self.transform)[:6]))
        if not all(math.isfinite(v) for v in self.transform[:6]):
            raise ValueError(f"PixelGrid.transform must be finite, got {self.transform!r}")
        if self.transform.is_degenerate:
            raise ValueError(f"PixelGrid.transform is degenerate: {self.transform!r}")
        for name in ("width", "height"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
                raise ValueError(f"PixelGrid.{name} must be a positive int, got {value!r}")
            object.__setattr__(self, name, int(value))

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width), numpy order."""
        return (self.height, self.width)

    @property
    def window(self) -> Window:
        """The window of the whole grid."""
        return Window(0, 0, self.height, self.width)

    @property
    def is_north_up(self) -> bool:
        """No rotation or shear: rows run along y, columns along x."""
        return self.transform.b == 0 and self.transform.d == 0

    def window_grid(self, window: Window) -> PixelGrid:
        """The grid of ``window`` (same CRS and pixel lattice, origin moved to the window).

        The window may extend past this grid: the result is still on the same lattice.
        """
        return PixelGrid(
            self.crs,
            _translated(self.transform, window.col_off, window.row_off),
            window.width,
            window.height,
        )

    def corners(self) -> tuple[tuple[float, float], ...]:
        """(x, y) of the 4 outer corners: top-left, top-right, bottom-right, bottom-left."""
        a, b, c, d, e, f = self.transform[:6]
        w, h = self.width, self.height
        return tuple(
            (a * col + b * row + c, d * col + e * row + f)
            for col, row in ((0, 0), (w, 0), (w, h), (0, h))
        )

    def footprint_bounds(self, dst_crs: CRSLike | None = None) -> Bounds:
        """Bounds of the grid's outer edge, in its CRS or (densified) in ``dst_crs``."""
        corners = self.corners()
        if dst_crs is None or self.crs == CRS.of(dst_crs):
            xs = [x for x, _ in corners]
            ys = [y for _, y in corners]
            return (min(xs), min(ys), max(xs), max(ys))
        ring = [*corners, corners[0]]
        footprint = {"type": "Polygon", "coordinates": [[list(p) for p in ring]]}
        return region_bounds(footprint, self.crs, dst_crs)

    def to_ee(self) -> dict[str, Any]:
        """Earth Engine ``PixelGrid`` JSON. Floats go out as Python floats (repr-exact)."""
        a, b, c, d, e, f = (float(v) for v in self.transform[:6])
        crs_field: dict[str, str]
        code = self.crs.authority_code
        if code is not None:
            crs_field = {"crsCode": code}
        elif self.crs.text.lstrip().startswith(("+", "{")):
            # PROJ strings / PROJJSON are not something EE parses: send WKT instead.
            crs_field = {"crsWkt": self.crs.wkt}
        else:
            crs_field = {"crsWkt": self.crs.text}
        return {
            **crs_field,
            "affineTransform": {
                "scaleX": a,
                "shearX": b,
                "translateX": c,
                "shearY": d,
                "scaleY": e,
                "translateY": f,
            },
            "dimensions": {"width": self.width, "height": self.height},
        }

    @classmethod
    def from_ee(cls, grid: Mapping[str, Any], default_crs: CRSLike | None = None) -> PixelGrid:
        """Parse EE ``PixelGrid`` JSON (proto3: absent numbers are 0).

        ``default_crs`` is used when the JSON names no CRS (a request grid in the asset's
        native CRS). Dimensions are required: a grid without them has no size.
        """
        crs = grid.get("crsCode") or grid.get("crsWkt") or default_crs
        if not crs:
            raise ValueError("grid has neither crsCode nor crsWkt and no default_crs was given")
        affine_json = grid.get("affineTransform") or {}
        names = ("scaleX", "shearX", "translateX", "shearY", "scaleY", "translateY")
        try:
            values = [float(affine_json.get(name, 0.0)) for name in names]
            dims = grid.get("dimensions") or {}
            width, height = int(dims.get("width", 0)), int(dims.get("height", 0))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"malformed grid JSON: {exc}") from exc
        return cls(CRS.of(crs), Affine(*values), width, height)


# --------------------------------------------------------------------------------------
# Regions


def _geometries(obj: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Geometries inside a GeoJSON geometry, Feature or FeatureCollection."""
    kind = obj.get("type")
    if kind == "FeatureCollection":
        for feature in obj.get("features") or ():
            yield from _geometries(feature)
    elif kind == "Feature":
        if obj.get("geometry"):
            yield from _geometries(obj["geometry"])
    elif kind == "GeometryCollection":
        for geom in obj.get("geometries") or ():
            yield from _geometries(geom)
    elif kind in _PATH_DEPTH:
        yield obj
    else:
        raise ValueError(f"unsupported GeoJSON type {kind!r}")


# Nesting depth of the lists of positions that form lines (edges to densify); 0 = no edges.
_PATH_DEPTH = {
    "Point": None,
    "MultiPoint": 0,
    "LineString": 0,
    "MultiLineString": 1,
    "Polygon": 1,
    "MultiPolygon": 2,
}


def _paths(geom: Mapping[str, Any]) -> Iterator[tuple[np.ndarray, bool]]:
    """(positions as an (n, 2) array, whether consecutive positions form edges)."""
    kind = geom["type"]
    coords = geom.get("coordinates")
    if coords is None:
        raise ValueError(f"{kind} without coordinates")
    if kind == "Point":
        yield np.asarray([coords], dtype=float)[:, :2], False
        return
    depth = _PATH_DEPTH[kind]
    assert depth is not None  # only a Point has no depth, and it returned above
    stack = [(coords, depth)]
    while stack:
        item, level = stack.pop()
        if level == 0:
            if len(item):
                yield np.asarray(item, dtype=float)[:, :2], kind != "MultiPoint"
        else:
            stack.extend((sub, level - 1) for sub in item)


def _densify(points: np.ndarray, n: int = DENSIFY_PTS) -> np.ndarray:
    """Insert ``n`` evenly spaced points along each edge of a path."""
    if len(points) < 2:
        return points
    starts, ends = points[:-1], points[1:]
    fractions = np.linspace(0.0, 1.0, n + 2)[:-1]  # end of each edge = start of the next
    dense = starts[:, None, :] + (ends - starts)[:, None, :] * fractions[None, :, None]
    return np.concatenate([dense.reshape(-1, 2), points[-1:]])


def _transform_points(src: CRS, dst: CRS, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Points mapped to ``dst`` as an (n, 2) array; points PROJ cannot map are dropped."""
    from rasterio.warp import transform as _warp_points

    src_crs, dst_crs = src.to_rasterio(), dst.to_rasterio()
    try:
        out_x, out_y = _warp_points(src_crs, dst_crs, xs.tolist(), ys.tolist())
        out = np.column_stack([out_x, out_y])
    except Exception:
        # One point outside the projection's domain fails the whole batch: go one by one.
        kept = []
        for x, y in zip(xs.tolist(), ys.tolist(), strict=True):
            try:
                (px,), (py,) = _warp_points(src_crs, dst_crs, [x], [y])
            except Exception:
                continue
            kept.append((px, py))
        out = np.asarray(kept, dtype=float).reshape(-1, 2)
    return out[np.isfinite(out).all(axis=1)]


def _as_bbox(region: Sequence[float]) -> Bounds:
    if len(region) != 4:
        raise ValueError(f"a bbox region needs 4 numbers [xmin, ymin, xmax, ymax], got {region!r}")
    xmin, ymin, xmax, ymax = (float(v) for v in region)
    if not all(math.isfinite(v) for v in (xmin, ymin, xmax, ymax)):
        raise ValueError(f"bbox must be finite, got {region!r}")
    if xmin > xmax or ymin > ymax:
        raise ValueError(f"bbox must be [xmin, ymin, xmax, ymax] with min <= max, got {region!r}")
    return (xmin, ymin, xmax, ymax)


def region_bounds(
    region: RegionLike | Any,
    region_crs: CRSLike = "EPSG:4326",
    dst_crs: CRSLike | None = None,
) -> Bounds:
    """Bounding box of ``region`` in ``dst_crs`` (default: ``region_crs``).

    ``region`` is a bbox ``[xmin, ymin, xmax, ymax]`` or a GeoJSON geometry, Feature or
    FeatureCollection (anything with ``__geo_interface__`` too), in ``region_crs`` with x
    first (lon, lat for EPSG:4326). Edges are densified before reprojecting, so a lon/lat
    box maps to the whole projected box that covers its curved edges.
    """
    src = CRS.of(region_crs)
    dst = src if dst_crs is None else CRS.of(dst_crs)
    if hasattr(region, "__geo_interface__"):
        region = region.__geo_interface__
    if isinstance(region, Mapping):
        return _geojson_bounds(region, src, dst)
    if isinstance(region, str | bytes):
        raise ValueError(f"region must be a bbox or a GeoJSON mapping, got {region!r}")
    bbox = _as_bbox(region)
    if src == dst:
        return bbox
    if is_lonlat_crs(region_crs):
        problem = lonlat_problem(bbox, region_crs)
        if problem:
            raise ValueError(f"bbox {describe_bounds(bbox)} is {problem}")

    from rasterio.warp import transform_bounds

    return tuple(  # type: ignore[return-value]
        float(v)
        for v in transform_bounds(
            src.to_rasterio(), dst.to_rasterio(), *bbox, densify_pts=DENSIFY_PTS
        )
    )


def _geojson_bounds(region: Mapping[str, Any], src: CRS, dst: CRS) -> Bounds:
    paths = [
        _densify(points) if has_edges else points
        for geom in _geometries(region)
        for points, has_edges in _paths(geom)
    ]
    if not paths:
        raise ValueError("region has no coordinates")
    points = np.concatenate(paths)
    if not np.isfinite(points).all():
        raise ValueError("region coordinates must be finite")
    if src.is_geographic:
        # A stray point past a pole is dropped below; a region with no lon/lat point at all
        # was written in another CRS.
        inside = (np.abs(points[:, 0]) <= 360) & (np.abs(points[:, 1]) <= 90)
        if not inside.any():
            problem = lonlat_problem((*points.min(axis=0), *points.max(axis=0)), src)
            raise ValueError(f"region coordinates are {problem}")
    if src != dst:
        points = _transform_points(src, dst, points[:, 0], points[:, 1])
        if not len(points):
            raise ValueError(f"region cannot be mapped from {src} to {dst}")
    xmin, ymin = points.min(axis=0)
    xmax, ymax = points.max(axis=0)
    return (float(xmin), float(ymin), float(xmax), float(ymax))


# --------------------------------------------------------------------------------------
# Output grids


def native_window(native: PixelGrid, bounds: Sequence[float]) -> Window | None:
    """The window of ``native`` covering ``bounds`` (in ``native.crs``), or None if it misses.

    Snapped outward to whole pixels (with ``SNAP_TOLERANCE_PX``) and clipped to the grid.
    Works for rotated/sheared grids: the 4 corners of ``bounds`` go through the inverse
    transform and the pixel-space bounding box of the result is taken.
    """
    xmin, ymin, xmax, ymax = _as_bbox(bounds)
    cols, rows = _to_pixel(
        native.transform, np.array([xmin, xmax, xmax, xmin]), np.array([ymin, ymin, ymax, ymax])
    )
    a, b, c, d, e, f = native.transform[:6]
    tol = _snap_tolerance(
        max(abs(xmin), abs(xmax), abs(ymin), abs(ymax), abs(c), abs(f)),
        min(math.hypot(a, d), math.hypot(b, e)),
    )
    col0, col1 = _snap_outward(float(cols.min()), float(cols.max()), tol)
    row0, row1 = _snap_outward(float(rows.min()), float(rows.max()), tol)
    col0, col1 = max(col0, 0), min(col1, native.width)
    row0, row1 = max(row0, 0), min(row1, native.height)
    if col1 <= col0 or row1 <= row0:
        return None
    return Window(row0, col0, row1 - row0, col1 - col0)


def native_subgrid(native: PixelGrid, bounds: Sequence[float]) -> PixelGrid | None:
    """The sub-grid of ``native`` over ``native_window(native, bounds)``, or None."""
    window = native_window(native, bounds)
    return None if window is None else native.window_grid(window)


def _scales(scale: float | tuple[float, float]) -> tuple[float, float]:
    if isinstance(scale, int | float | np.floating | np.integer):
        scale_x = scale_y = float(scale)
    else:
        scale_x, scale_y = (float(v) for v in scale)
    if not (scale_x > 0 and scale_y > 0 and math.isfinite(scale_x) and math.isfinite(scale_y)):
        raise ValueError(f"scale must be positive and finite, got {scale!r}")
    return scale_x, scale_y


def aligned_grid(
    crs: CRSLike, scale: float | tuple[float, float], bounds: Sequence[float]
) -> PixelGrid:
    """North-up grid covering ``bounds`` whose pixel edges lie on multiples of ``scale``.

    Like ``gdalwarp -tap``: the edges are ``i * scale_x`` and ``j * scale_y`` for integers
    i, j, so grids made for neighbouring regions share one pixel lattice. ``scale`` is one
    pixel size or ``(scale_x, scale_y)``, positive, in CRS units.
    """
    scale_x, scale_y = _scales(scale)
    xmin, ymin, xmax, ymax = _as_bbox(bounds)
    tol_x = _snap_tolerance(max(abs(xmin), abs(xmax)), scale_x)
    tol_y = _snap_tolerance(max(abs(ymin), abs(ymax)), scale_y)
    col0, col1 = _snap_outward(xmin / scale_x, xmax / scale_x, tol_x)
    row0, row1 = _snap_outward(ymin / scale_y, ymax / scale_y, tol_y)  # counted upward
    transform = Affine(scale_x, 0.0, col0 * scale_x, 0.0, -scale_y, row1 * scale_y)
    return PixelGrid(CRS.of(crs), transform, col1 - col0, row1 - row0)


def sized_grid(crs: CRSLike, dimensions: tuple[int, int], bounds: Sequence[float]) -> PixelGrid:
    """North-up grid of exactly ``dimensions`` = (width, height) pixels spanning ``bounds``.

    What the service does with ``grid.dimensions`` and a ``region``: the region's bounding box
    is rescaled to the requested size, so the pixel size is the extent over the dimensions
    (``(xmax - xmin) / width`` by ``(ymax - ymin) / height``, not square in general) and the
    grid's edges are the bounds' own, not snapped to any lattice.
    """
    width, height = dimensions
    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
            raise ValueError(f"dimensions {name} must be a positive int, got {value!r}")
    xmin, ymin, xmax, ymax = _as_bbox(bounds)
    if not (xmax > xmin and ymax > ymin):
        raise ValueError(
            f"the region has no area in {crs} ({xmin}, {ymin}, {xmax}, {ymax}); "
            "dimensions needs a region with an extent in both directions"
        )
    pixel_x = (xmax - xmin) / width
    pixel_y = (ymax - ymin) / height
    transform = Affine(pixel_x, 0.0, xmin, 0.0, -pixel_y, ymax)
    return PixelGrid(CRS.of(crs), transform, int(width), int(height))
