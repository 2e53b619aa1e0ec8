"""From a job item and its asset's metadata to an output grid and a tile plan.

Pure: the asset's metadata comes in as the JSON the service returned; nothing here does I/O
beyond reading a region file named by the job.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, overload

import numpy as np

from bulkpix import __version__
from bulkpix.dtypes import BandSpec, numpy_dtype, request_bytes
from bulkpix.errors import BadMetadata, JobError, printable
from bulkpix.geometry.grid import (
    CRS,
    PixelGrid,
    Window,
    aligned_grid,
    describe_bounds,
    is_lonlat_crs,
    native_subgrid,
    region_bounds,
    sized_grid,
)
from bulkpix.geometry.tiling import ServiceModel, TilePlan, plan_tiles
from bulkpix.job import Job, ResolvedItem
from bulkpix.store.location import RESERVED_NAMES

__all__ = [
    "ASSUMED_COMPRESSION",
    "AssetInfo",
    "Estimate",
    "ItemPlan",
    "JobPlan",
    "MosaicImage",
    "MosaicPlan",
    "estimate",
    "human_bytes",
    "human_seconds",
    "job_plan",
    "mosaic_images",
    "parse_asset",
    "plan_item",
    "plan_mosaic",
    "size_warning",
    "tile_plan_from_fingerprint",
]


# 16.7 million px a side: the whole Earth at 2.4 m. Past that a typo in `scale` is likelier
# than a real job, and the coordinate arrays alone would take gigabytes.
MAX_OUTPUT_SIDE = 2**24


@dataclass(frozen=True)
class AssetInfo:
    """What one GET of an image asset tells us."""

    name: str
    bands: tuple[BandSpec, ...]
    grids: Mapping[str, PixelGrid]
    update_time: str | None
    # Per band, what the asset says of it beyond type and grid (units, description, ...).
    band_metadata: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class MosaicImage:
    """One image of a collection as a mosaic uses it: its name, times and the lon/lat
    bounding box of its footprint (what the record keeps, so a resume uses the same images)."""

    name: str
    start: str
    end: str
    bbox: tuple[float, float, float, float]

    def record(self) -> list[Any]:
        return [self.name, self.start, self.end, list(self.bbox)]

    @classmethod
    def from_record(cls, value: Any) -> MosaicImage:
        name, start, end, bbox = value
        return cls(str(name), str(start), str(end), tuple(float(v) for v in bbox))  # type: ignore[arg-type]


def mosaic_images(listed: Sequence[Mapping[str, Any]], collection: str) -> list[MosaicImage]:
    """The listing's images in mosaic order (start time, then id); BadMetadata if unusable."""
    from bulkpix.geometry.grid import region_bounds

    images = []
    for entry in listed:
        name, start = entry.get("name"), entry.get("startTime")
        geometry = entry.get("geometry")
        if not isinstance(name, str) or not isinstance(start, str) or not isinstance(
            geometry, dict
        ):
            raise BadMetadata(
                f"collection {collection}: an image without name, startTime or geometry"
            )
        try:
            bbox = region_bounds(geometry, "EPSG:4326", "EPSG:4326")
        except (ValueError, TypeError, KeyError, IndexError):
            raise BadMetadata(f"image {name}: its footprint is not GeoJSON") from None
        end = entry.get("endTime")
        images.append(MosaicImage(name, start, end if isinstance(end, str) else start, bbox))
    images.sort(key=lambda image: (_time_key(image.start), image.name))
    return images


def _time_key(text: str) -> str:
    from bulkpix.job import parse_time, rfc3339

    try:
        return rfc3339(parse_time(text))
    except ValueError:
        return text


@dataclass(frozen=True)
class MosaicPlan:
    """A collection mosaicked into one grid: the images (in order: later ones on top with
    rule last) and, per output tile, the images whose footprints meet it."""

    collection: str
    rule: str
    images: tuple[MosaicImage, ...]
    # Per image, its footprint's pixel window in the output grid (None: it misses the grid).
    windows: tuple[Window | None, ...]
    # (tile row, tile col) -> indexes of the images whose window meets that tile.
    buckets: Mapping[tuple[int, int], tuple[int, ...]]
    tile_height: int
    tile_width: int
    # layout cube: the images (indexes, in mosaic order) of each time step; () for a mosaic.
    steps: tuple[tuple[int, ...], ...] = ()
    group_by: str | None = None

    @property
    def is_cube(self) -> bool:
        return bool(self.steps)

    def meeting(self, window: Window, step: int | None = None) -> list[tuple[int, Window]]:
        """(image index, the part of ``window`` it covers) of every image meeting ``window``
        (in a cube: of the images of ``step``), in mosaic order."""
        rows = range(window.row_off // self.tile_height,
                     (window.row_end - 1) // self.tile_height + 1)
        cols = range(window.col_off // self.tile_width,
                     (window.col_end - 1) // self.tile_width + 1)
        found: set[int] = set()
        for row in rows:
            for col in cols:
                found.update(self.buckets.get((row, col), ()))
        if step is not None:
            found &= set(self.steps[step])
        out = []
        for index in sorted(found):
            footprint = self.windows[index]
            part = footprint.intersection(window) if footprint is not None else None
            if part is not None:
                out.append((index, part))
        return out

    def tiles_per_image(self) -> list[int]:
        """How many output tiles (of one band group) each image's footprint meets."""
        counts = [0] * len(self.images)
        for members in self.buckets.values():
            for index in members:
                counts[index] += 1
        return counts

    @property
    def n_calls(self) -> int:
        """getPixels calls per band group: one per (tile, image meeting it)."""
        return sum(len(members) for members in self.buckets.values())

    def step_times(self) -> list[str]:
        """Each cube step's time: its first image's start, RFC 3339 UTC."""
        return [_time_key(self.images[members[0]].start) for members in self.steps]

    def step_ids(self) -> list[str]:
        """Each cube step's image ids (the last part of each name), joined by ``+``."""
        return [
            "+".join(self.images[i].name.rsplit("/", 1)[-1] for i in members)
            for members in self.steps
        ]

    def fingerprint(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "collection": self.collection,
            "mosaic": self.rule,
            "images": [image.record() for image in self.images],
        }
        if self.steps:
            out["cube"] = {
                "group_by": self.group_by,
                "steps": [
                    {"time": time, "images": [self.images[i].name for i in members]}
                    for time, members in zip(self.step_times(), self.steps, strict=True)
                ],
            }
        return out


def cube_steps(images: Sequence[MosaicImage], group_by: str | None) -> list[tuple[int, ...]]:
    """The images (indexes into ``images``, which are in mosaic order) of each cube step: one
    step per image, or with ``group_by: day`` the images starting on one UTC day."""
    if group_by is None:
        return [(index,) for index in range(len(images))]
    days: dict[str, list[int]] = {}
    for index, image in enumerate(images):
        days.setdefault(_time_key(image.start)[:10], []).append(index)
    return [tuple(members) for _, members in sorted(days.items())]


# Pixels added around each footprint's window: its lon/lat box is projected with densified
# edges, and a pixel whose centre lies just inside must not be left out.
_FOOTPRINT_MARGIN = 1


# Points per edge of a footprint's lon/lat box when it is projected into the output CRS.
_FOOTPRINT_EDGE_POINTS = 8


def _footprint_windows(images: Sequence[MosaicImage], grid: PixelGrid) -> list[Window | None]:
    """Each image's footprint box as a pixel window of ``grid`` (clipped to it; None when it
    misses the grid or cannot be projected), for every image in one vectorised projection."""
    if not images:
        return []
    boxes = np.array([image.bbox for image in images], dtype=np.float64)
    steps = np.linspace(0.0, 1.0, _FOOTPRINT_EDGE_POINTS, endpoint=False)[None, :]
    x0, y0, x1, y1 = (boxes[:, i : i + 1] for i in range(4))
    ones = np.ones_like(steps)
    xs = np.concatenate([x0 + (x1 - x0) * steps, x1 * ones, x1 - (x1 - x0) * steps, x0 * ones], 1)
    ys = np.concatenate([y0 * ones, y0 + (y1 - y0) * steps, y1 * ones, y1 - (y1 - y0) * steps], 1)
    if not is_lonlat_crs(grid.crs) or CRS.of(grid.crs) != CRS.of("EPSG:4326"):
        from pyproj import Transformer

        to_grid = Transformer.from_crs("EPSG:4326", grid.crs.wkt, always_xy=True)
        xs, ys = (np.asarray(v) for v in to_grid.transform(xs, ys, errcheck=False))
    inverse = ~grid.transform
    cols = inverse.a * xs + inverse.b * ys + inverse.c
    rows = inverse.d * xs + inverse.e * ys + inverse.f
    finite = np.isfinite(cols).all(axis=1) & np.isfinite(rows).all(axis=1)
    with np.errstate(invalid="ignore"):
        col0 = np.floor(cols.min(axis=1)) - _FOOTPRINT_MARGIN
        col1 = np.ceil(cols.max(axis=1)) + _FOOTPRINT_MARGIN
        row0 = np.floor(rows.min(axis=1)) - _FOOTPRINT_MARGIN
        row1 = np.ceil(rows.max(axis=1)) + _FOOTPRINT_MARGIN
    windows: list[Window | None] = []
    for ok, c0, c1, r0, r1 in zip(finite, col0, col1, row0, row1, strict=True):
        if not ok:
            windows.append(None)
            continue
        c0, r0 = max(int(c0), 0), max(int(r0), 0)
        c1, r1 = min(int(c1), grid.width), min(int(r1), grid.height)
        windows.append(Window(r0, c0, r1 - r0, c1 - c0) if c1 > c0 and r1 > r0 else None)
    return windows


def plan_mosaic_index(
    collection: str, rule: str, images: Sequence[MosaicImage], grid: PixelGrid, tiles: TilePlan
) -> MosaicPlan:
    """Each image's footprint window in ``grid`` and a bucket index of them by tile.

    Memory and time go with the tiles each footprint meets, never images x tiles.
    """
    windows = _footprint_windows(images, grid)
    buckets: dict[tuple[int, int], list[int]] = {}
    for index, window in enumerate(windows):
        if window is None:
            continue
        for row in range(window.row_off // tiles.tile_height,
                         (window.row_end - 1) // tiles.tile_height + 1):
            for col in range(window.col_off // tiles.tile_width,
                             (window.col_end - 1) // tiles.tile_width + 1):
                buckets.setdefault((row, col), []).append(index)
    return MosaicPlan(
        collection=collection,
        rule=rule,
        images=tuple(images),
        windows=tuple(windows),
        buckets={key: tuple(value) for key, value in buckets.items()},
        tile_height=tiles.tile_height,
        tile_width=tiles.tile_width,
    )


def plan_mosaic(
    spec: ResolvedItem,
    listed: Sequence[AssetInfo],
    images: Sequence[MosaicImage],
    job: Job,
    recorded_tile: tuple[int, int] | None = None,
) -> ItemPlan:
    """A collection item with layout mosaic: one grid over the region (the images' footprints
    without one), tiles, and the footprint index.

    With crs and scale the grid is aligned (edges on multiples of scale). Without them the
    images must share one native grid (one CRS, pixel size and lattice, as tiles of one
    dataset do): the output is that lattice over the region. ``listed`` holds the metadata of
    the images used (the first names the bands and types)."""
    assert spec.collection is not None
    if not images or not listed:
        raise JobError(f"collection {spec.collection}: no image to mosaic")
    if spec.dimensions is not None:
        raise JobError(
            f"collection {spec.collection}: a mosaic takes crs and scale, not dimensions"
        )
    union = _union_bbox([image.bbox for image in images])
    try:
        if spec.crs is None and spec.scale is None:
            grid = _native_mosaic_grid(spec, listed, union, job)
        elif spec.crs is None or spec.scale is None:
            raise JobError(
                f"collection {spec.collection}: a mosaic needs both crs and scale (or neither, "
                "when the images share one native grid)"
            )
        else:
            grid = _aligned_mosaic_grid(spec, listed, CRS.of(spec.crs), spec.scale, union, job)
    except JobError:
        raise
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise JobError(f"cannot make the output grid: {exc}") from None
    plan = plan_item(spec, listed[0], job, recorded_tile, grid=grid)
    _check_same_bands(spec, listed, plan.bands)
    index = plan_mosaic_index(spec.collection, spec.mosaic_rule, images, plan.grid, plan.tiles)
    if spec.layout_name == "cube":
        clash = [b.id for b in plan.bands if b.id in ("time", "image_id")]
        if clash:  # the cube's own coordinates
            raise JobError(f"collection {spec.collection}: a cube cannot hold a band {clash[0]!r}")
        steps = cube_steps(images, spec.group_by)
        index = replace(index, steps=tuple(steps), group_by=spec.group_by)
        return replace(
            plan, mosaic=index, native_pixels=None, tiles=replace(plan.tiles, steps=len(steps))
        )
    return replace(plan, mosaic=index, native_pixels=None)


def _check_same_bands(
    spec: ResolvedItem, listed: Sequence[AssetInfo], bands: Sequence[BandSpec]
) -> None:
    """Every image has the output's bands with the same types (the first image's), so no
    call of the mosaic asks for a band an image lacks or decodes to another type."""
    for info in listed[1:]:
        theirs = {band.id: band.dtype for band in info.bands}
        for band in bands:
            if band.id not in theirs:
                raise JobError(
                    f"collection {spec.collection}: image {info.name} has no band {band.id}"
                )
            if theirs[band.id] != band.dtype:
                raise JobError(
                    f"collection {spec.collection}: band {band.id} is {band.dtype.name} in "
                    f"{listed[0].name} but {theirs[band.id].name} in {info.name}"
                )


def _clip_to_region(
    spec: ResolvedItem, crs: CRS, footprints: Sequence[float], job: Job
) -> tuple[float, float, float, float]:
    if spec.region is None:
        return (footprints[0], footprints[1], footprints[2], footprints[3])
    region = spec.region.load_geometry(job.base_dir)
    rb = region_bounds(region, spec.region.region_crs, crs)
    bounds = (max(rb[0], footprints[0]), max(rb[1], footprints[1]),
              min(rb[2], footprints[2]), min(rb[3], footprints[3]))
    if bounds[0] >= bounds[2] or bounds[1] >= bounds[3]:
        raise JobError(f"collection {spec.collection}: no image falls in the region")
    return bounds


def _aligned_mosaic_grid(
    spec: ResolvedItem,
    listed: Sequence[AssetInfo],
    crs: CRS,
    scale: float,
    union: Sequence[float],
    job: Job,
) -> PixelGrid:
    band = spec.bands[0] if spec.bands else listed[0].bands[0].id
    footprints = _footprints(listed, band, crs, union)
    return aligned_grid(crs, scale, _clip_to_region(spec, crs, footprints, job))


def _footprints(
    listed: Sequence[AssetInfo], band: str, crs: CRS, union: Sequence[float]
) -> Sequence[float]:
    """The images' extent in ``crs``: from their own grids (exact), or from the lon/lat boxes
    of their footprints when a grid is missing or cannot be projected."""
    try:
        boxes = [info.grids[band].footprint_bounds(crs) for info in listed]
    except (KeyError, ValueError):
        return region_bounds(list(union), "EPSG:4326", crs)
    return _union_bbox(boxes)


# Offsets between images' grids this close to whole pixels count as one lattice.
_LATTICE_TOLERANCE_PX = 1e-6


def _native_mosaic_grid(
    spec: ResolvedItem, listed: Sequence[AssetInfo], union: Sequence[float], job: Job
) -> PixelGrid:
    """The images' shared native lattice over the region (their footprints without one)."""
    band = spec.bands[0] if spec.bands else listed[0].bands[0].id
    first = listed[0].grids.get(band)
    if first is None:
        raise JobError(f"image {listed[0].name}: band {band} has no grid")
    if not first.is_north_up:
        raise JobError(f"image {listed[0].name} is not north-up: give crs and scale")
    t0 = first.transform
    for info in listed[1:]:
        grid = info.grids.get(band)
        if grid is None:
            raise JobError(f"image {info.name}: band {band} has no grid")
        t = grid.transform
        col, row = ~t0 @ (t.c, t.f)
        if (
            grid.crs != first.crs
            or (t.a, t.b, t.d, t.e) != (t0.a, t0.b, t0.d, t0.e)
            or abs(col - round(col)) > _LATTICE_TOLERANCE_PX
            or abs(row - round(row)) > _LATTICE_TOLERANCE_PX
        ):
            raise JobError(
                f"collection {spec.collection}: the images do not share one grid ({listed[0].name}"
                f" and {info.name} differ); give crs and scale for the output grid"
            )
    footprints = _footprints(listed, band, first.crs, union)
    xmin, ymin, xmax, ymax = _clip_to_region(spec, first.crs, footprints, job)
    # Snapped outward to the lattice, as native_subgrid snaps a region to an asset's pixels.
    cols = [c for c, _ in (~t0 @ (x, y) for x in (xmin, xmax) for y in (ymin, ymax))]
    rows = [r for _, r in (~t0 @ (x, y) for x in (xmin, xmax) for y in (ymin, ymax))]
    col0, col1 = math.floor(min(cols) + 1e-9), math.ceil(max(cols) - 1e-9)
    row0, row1 = math.floor(min(rows) + 1e-9), math.ceil(max(rows) - 1e-9)
    window = Window(row0, col0, max(row1 - row0, 1), max(col1 - col0, 1))
    return PixelGrid(first.crs, t0, 1, 1).window_grid(window)


def _union_bbox(boxes: Sequence[Sequence[float]]) -> tuple[float, float, float, float]:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes),
            max(b[2] for b in boxes), max(b[3] for b in boxes))


@dataclass(frozen=True)
class ItemPlan:
    """One item, ready to fetch: where it goes, its grid, its tiles."""

    name: str | None  # None: a single-item job at the root of the store
    asset: str
    bands: tuple[BandSpec, ...]
    grid: PixelGrid
    tiles: TilePlan
    file_format: str
    workload_tag: str | None
    zarr_format: Literal[2, 3] = 3
    # Per output band: its declared nodata (fill value) and its array attributes.
    fill_values: Mapping[str, float] = field(default_factory=dict)
    band_attrs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # With a visualization: the getPixels visualizationOptions and the bands they draw on
    # (the output's bands are then vis-red, vis-green, vis-blue).
    visualization: Mapping[str, Any] | None = None
    source_bands: tuple[str, ...] = ()
    # How many of the asset's native pixels the output's footprint spans (None: unknown):
    # the output's pixel count over this says how far it oversamples the asset.
    native_pixels: float | None = None
    # A collection mosaicked into this grid: its images and their footprint index.
    mosaic: MosaicPlan | None = None
    # A computed image: its serialized graph (the pixels come from image:computePixels).
    expression: Mapping[str, Any] | None = None
    # A reduce composite: the images its collection listed when the output was started (the
    # graph names the collection, not them: a grown collection must not mix two composites).
    composite_of: tuple[str, ...] = ()

    @property
    def path(self) -> str:
        return self.name or ""

    @property
    def label(self) -> str:
        return self.name or self.asset.rsplit("/", 1)[-1]

    @property
    def pixel_bytes(self) -> int:
        """Bytes of the output's pixels, uncompressed (no mask bytes: those are not stored);
        every step of a cube."""
        itemsizes = sum(b.dtype.itemsize for b in self.bands)
        return self.grid.width * self.grid.height * itemsizes * max(1, self.tiles.steps)

    @property
    def oversampling(self) -> float | None:
        """Output pixels per native pixel of the area (1 on the native grid; 100 for 1 m
        pixels from a 10 m asset); None when unknown."""
        if not self.native_pixels:
            return None
        return self.grid.width * self.grid.height / self.native_pixels

    def band_ids(self, group: int) -> list[str]:
        return [self.bands[i].id for i in self.tiles.band_groups[group]]

    def fingerprint(self) -> dict[str, Any]:
        """What must not change between runs writing into the same output.

        Not the codec: each array's own metadata names it, and a resumed output keeps the
        codec it was created with whatever the job says now (every chunk decodes the same).
        """
        t = self.grid.transform
        return {
            "asset": self.asset,
            "bands": [b.id for b in self.bands],
            "dtypes": [b.dtype.name for b in self.bands],
            "crs": self.grid.crs.text,  # as given: outputs made earlier must match
            "transform": [t.a, t.b, t.c, t.d, t.e, t.f],
            "shape": [self.grid.height, self.grid.width],
            "chunk": self.tiles.chunk,
            "tile": [self.tiles.tile_height, self.tiles.tile_width],
            "band_groups": [list(g) for g in self.tiles.band_groups],
            "n_tiles": self.tiles.n_tiles,
            "bulkpix": __version__.split(".")[0],
        } | self._output_options() | (self.mosaic.fingerprint() if self.mosaic else {}) | (
            {"expression": dict(self.expression)} if self.expression is not None else {}) | (
            {"composite_of": list(self.composite_of)} if self.composite_of else {})

    def _output_options(self) -> dict[str, Any]:
        # Only when set, so outputs written before these options existed still match.
        options: dict[str, Any] = {}
        if self.zarr_format != 3:
            options["zarr_format"] = self.zarr_format
        if self.fill_values:
            # NaN != NaN would make every resume look changed: compare its text.
            options["nodata"] = {k: repr(float(v)) for k, v in self.fill_values.items()}
        if self.visualization is not None:
            options["visualization"] = {
                "bands": list(self.source_bands),
                **dict(self.visualization),
            }
        return options


def parse_asset(metadata: Mapping[str, Any], requested_name: str) -> AssetInfo:
    """Band types and grids of an image asset, from its proto3-JSON metadata.

    Everything the output will be built from is checked here, before any store exists: an
    answer bulkpix cannot use raises ``BadMetadata`` naming what is wrong with it.
    """
    kind = metadata.get("type", "IMAGE")
    if kind != "IMAGE":
        raise JobError(f"asset {requested_name} is a {_quote(kind)}, not an IMAGE")

    def bad(what: str) -> BadMetadata:
        return BadMetadata(f"asset {requested_name}: the service's metadata is unusable: {what}")

    raw_bands = metadata.get("bands")
    if raw_bands is None or raw_bands == []:
        raise JobError(f"asset {requested_name} has no bands")
    if not isinstance(raw_bands, list):
        raise bad(f"'bands' is a {_json_kind(raw_bands)}, not a list")
    bands = []
    grids = {}
    band_metadata: dict[str, dict[str, Any]] = {}
    for position, band in enumerate(raw_bands, start=1):
        if not isinstance(band, dict):
            raise bad(f"band {position} is a {_json_kind(band)}, not an object")
        band_id = band.get("id")
        if not isinstance(band_id, str) or not band_id:
            raise bad(f"band {position} has no 'id'")
        problem = _band_id_problem(band_id)
        if problem:
            raise bad(f"band {position} id {_quote(band_id)} {problem}")
        data_type = band.get("dataType")
        if data_type is not None and not isinstance(data_type, dict):
            raise bad(f"band {band_id}: 'dataType' is a {_json_kind(data_type)}, not an object")
        band_metadata[band_id] = {
            k: band[k] for k in ("units", "description", "scale", "offset") if k in band
        }
        try:
            dtype = numpy_dtype(data_type)
        except ValueError as exc:
            message = printable(str(exc), limit=200)
            raise JobError(f"asset {requested_name}, band {band_id}: {message}") from None
        except (TypeError, AttributeError):
            raise bad(f"band {band_id}: malformed 'dataType'") from None
        bands.append(BandSpec(band_id, dtype))
        if "grid" in band:
            grid_problem, grid = _parse_grid(band["grid"])
            if grid is None:
                raise bad(f"band {band_id}: {grid_problem}")
            grids[band_id] = grid
    ids = [b.id for b in bands]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise bad(f"band id {_quote(duplicates[0])} appears more than once")
    name = metadata.get("name", requested_name)
    update_time = metadata.get("updateTime")
    return AssetInfo(
        name=name if isinstance(name, str) and name == printable(name) else requested_name,
        bands=tuple(bands),
        grids=grids,
        update_time=update_time if isinstance(update_time, str) else None,
        band_metadata=band_metadata,
    )


_MAX_BAND_ID = 255
# An output side of 2**31 px or more is no image the service serves.
_MAX_GRID_SIDE = 2**31 - 1


def _band_id_problem(band_id: str) -> str | None:
    """Why ``band_id`` cannot name a Zarr array (and a directory) in the output, if it cannot."""
    if any(not ch.isprintable() for ch in band_id):
        return "holds control characters"
    if len(band_id) > _MAX_BAND_ID:
        return f"is longer than {_MAX_BAND_ID} characters"
    if band_id in RESERVED_NAMES:
        return "clashes with a name the output reserves"
    if "/" in band_id or "\\" in band_id:
        return "holds a path separator"
    if band_id.startswith((".", "__")):
        return "starts with '.' or '__', which Zarr reserves"
    return None


def _parse_grid(raw: Any) -> tuple[str, PixelGrid | None]:
    """(problem, None) or ("", grid) for a band's ``grid`` JSON."""
    if not isinstance(raw, dict):
        return f"'grid' is a {_json_kind(raw)}, not an object", None
    crs = raw.get("crsCode") or raw.get("crsWkt")
    if not isinstance(crs, str) or not crs.strip():
        return "the grid names no CRS", None
    try:
        CRS.of(crs).check_describable()  # the output stores its WKT: it must be there
    except ValueError:
        return f"CRS {_quote(crs)} is not one bulkpix can describe", None
    affine = raw.get("affineTransform")
    if not isinstance(affine, dict):
        return "the grid has no affineTransform", None
    values = []
    for key in ("scaleX", "shearX", "translateX", "shearY", "scaleY", "translateY"):
        value = affine.get(key, 0.0)
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            return f"{key} is not a number", None
        try:
            number = float(value)
        except ValueError:
            return f"{key} {_quote(value)} is not a number", None
        if not math.isfinite(number):
            return f"{key} is {number}", None
        values.append(number)
    a, b, _c, d, e, _f = values
    if a * e - b * d == 0 or not math.isfinite(a * e - b * d):
        return f"the affine transform is degenerate (scaleX {a:g}, scaleY {e:g})", None
    dims = raw.get("dimensions")
    if not isinstance(dims, dict):
        return "the grid has no dimensions", None
    sides = []
    for key in ("width", "height"):
        value = dims.get(key, 0)
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)  # proto3 JSON may quote 64-bit integers
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{key} {_quote(value)} is not a whole number", None
        if not 0 < value <= _MAX_GRID_SIDE:
            return f"{key} is {value}", None
        sides.append(value)
    try:
        return "", PixelGrid.from_ee(raw)
    except (ValueError, TypeError) as exc:
        return f"malformed grid: {exc}", None


def _json_kind(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean"}.get(
        type(value), "number" if isinstance(value, int | float) else "null"
    )


def _quote(value: Any, limit: int = 60) -> str:
    """A bounded, printable quote of something the service said."""
    return repr(printable(str(value), limit=limit))


VISUALIZATION_BANDS = ("vis-red", "vis-green", "vis-blue")


def _band_attrs(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """CF attributes of one band from what the asset says of it."""
    attrs: dict[str, Any] = {}
    if isinstance(metadata.get("units"), str):
        attrs["units"] = printable(metadata["units"], limit=200)
    if isinstance(metadata.get("description"), str):
        attrs["long_name"] = attrs["description"] = printable(metadata["description"], limit=2000)
    for key, cf_name in (("scale", "scale_factor"), ("offset", "add_offset")):
        value = metadata.get(key)
        if isinstance(value, int | float) and math.isfinite(value):
            attrs[cf_name] = float(value)
    if attrs.get("scale_factor") == 1.0 and attrs.get("add_offset", 0.0) == 0.0:
        attrs.pop("scale_factor")  # an identity: nothing for readers to apply
    if attrs.get("add_offset") == 0.0:
        attrs.pop("add_offset")
    return attrs


def _fill_values(spec: ResolvedItem, bands: Sequence[BandSpec]) -> dict[str, float]:
    if spec.nodata is None:
        return {}
    if not isinstance(spec.nodata, dict):
        return {b.id: spec.nodata for b in bands}
    ids = [b.id for b in bands]
    unknown = [k for k in spec.nodata if k not in ids]
    if unknown:
        raise JobError(f"nodata names band {', '.join(unknown)}, not an output band ({ids})")
    return dict(spec.nodata)


def _select_bands(spec: ResolvedItem, asset: AssetInfo) -> tuple[BandSpec, ...]:
    if spec.visualization is not None:
        spec = spec.model_copy(update={"bands": spec.visualization.bands})
    if spec.bands is None:
        return asset.bands
    by_id = {b.id: b for b in asset.bands}
    missing = [b for b in spec.bands if b not in by_id]
    if missing:
        have = ", ".join(by_id)
        raise JobError(f"asset {asset.name} has no band {', '.join(missing)} (it has: {have})")
    return tuple(by_id[b] for b in spec.bands)


def _sized_output_grid(
    spec: ResolvedItem, asset: AssetInfo, native: PixelGrid, base_dir: Any
) -> PixelGrid:
    """``dimensions``: the region's bounding box in the output CRS (the asset's footprint
    without a region), rescaled to the requested size. Not clipped to the asset and not
    snapped, as the service does it: pixels outside the asset are fill."""
    assert spec.dimensions is not None
    crs = native.crs if spec.crs is None else CRS.of(spec.crs)
    footprint = native.footprint_bounds(crs)
    if spec.region is None:
        return sized_grid(crs, spec.dimensions, footprint)
    region = spec.region.load_geometry(base_dir)
    bounds = region_bounds(region, spec.region.region_crs, crs)
    if (
        max(bounds[0], footprint[0]) >= min(bounds[2], footprint[2])
        or max(bounds[1], footprint[1]) >= min(bounds[3], footprint[3])
    ):
        raise JobError(_miss(spec, asset, native, region))
    return sized_grid(crs, spec.dimensions, bounds)


def _output_grid(
    spec: ResolvedItem, asset: AssetInfo, native: PixelGrid, base_dir: Any
) -> PixelGrid:
    crs = native.crs if spec.crs is None else CRS.of(spec.crs)
    if spec.dimensions is not None:
        return _sized_output_grid(spec, asset, native, base_dir)
    native_scale = (abs(native.transform.a), abs(native.transform.e))
    is_native_crs = crs == native.crs
    use_native = is_native_crs and (
        spec.scale is None or (native.is_north_up and native_scale == (spec.scale, spec.scale))
    )
    if not is_native_crs and spec.scale is None:
        raise JobError(
            f"key 'scale' is required when crs ({crs}) is not the asset's own "
            "(or give dimensions: [width, height])"
        )

    if use_native:
        if spec.region is None:
            return native
        region = spec.region.load_geometry(base_dir)
        bounds = region_bounds(region, spec.region.region_crs, native.crs)
        grid = native_subgrid(native, bounds)
        if grid is None:
            raise JobError(_miss(spec, asset, native, region))
        return grid

    assert spec.scale is not None
    footprint = native.footprint_bounds(crs)
    if spec.region is None:
        bounds = footprint
    else:
        region = spec.region.load_geometry(base_dir)
        rb = region_bounds(region, spec.region.region_crs, crs)
        bounds = (
            max(rb[0], footprint[0]),
            max(rb[1], footprint[1]),
            min(rb[2], footprint[2]),
            min(rb[3], footprint[3]),
        )
        if bounds[0] >= bounds[2] or bounds[1] >= bounds[3]:
            raise JobError(_miss(spec, asset, native, region))
    return aligned_grid(crs, spec.scale, bounds)


def _miss(spec: ResolvedItem, asset: AssetInfo, native: PixelGrid, region: Any) -> str:
    """Why nothing is left of the region: both extents, in the region's own CRS."""
    assert spec.region is not None
    region_crs = spec.region.region_crs
    try:
        theirs = region_bounds(region, region_crs, region_crs)
        extent = native.footprint_bounds(region_crs)
    except ValueError:  # the asset's extent has no image in the region's CRS
        return f"the region does not overlap asset {asset.name}"
    swapped = (theirs[1], theirs[0], theirs[3], theirs[2])
    hint = ""
    if _intersect(swapped, extent):
        hint = "; with x and y swapped it would: lon/lat order is [lon, lat, lon, lat]"
    return (
        f"the region does not overlap asset {asset.name}: region {describe_bounds(theirs)}, "
        f"asset {describe_bounds(extent)} (both [xmin, ymin, xmax, ymax] in {region_crs}){hint}"
    )


def _intersect(a: Sequence[float], b: Sequence[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def plan_item(
    spec: ResolvedItem,
    asset: AssetInfo,
    job: Job,
    recorded_tile: tuple[int, int] | None = None,
    *,
    grid: PixelGrid | None = None,
) -> ItemPlan:
    """Choose the output grid and cut it into tiles. Raises JobError for impossible items.

    ``recorded_tile``: the tile shape an earlier run of this item was started with (from the
    output's record). With ``tile: auto`` it is kept, so changing the quota settings between
    runs does not orphan finished tiles; a shape that no longer fits is planned afresh.
    """
    bands = _select_bands(spec, asset)
    native = asset.grids.get(bands[0].id)
    if native is None:
        raise JobError(f"asset {asset.name}: band {bands[0].id} has no grid")
    try:
        if grid is None:
            grid = _output_grid(spec, asset, native, job.base_dir)
    except JobError:
        raise
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        # A malformed GeoJSON region, a degenerate grid (a scale of 1e-300), ...
        raise JobError(f"cannot make the output grid: {exc}") from None
    if max(grid.width, grid.height) > MAX_OUTPUT_SIDE:
        raise JobError(
            f"the output grid would be {grid.width} x {grid.height} px, over the "
            f"{MAX_OUTPUT_SIDE:,} px a side bulkpix handles; use a coarser scale or a "
            "smaller region"
        )
    if job.zarr_format == 2 and not grid.is_north_up:
        # GDAL takes a v2 array's geotransform from its 1-D x/y coordinates, which cannot
        # hold a rotation: it would place the image wrongly without a word.
        raise JobError(
            "the output grid is rotated or sheared, which GDAL cannot read from a Zarr v2 "
            "store; use zarr_format: 3 (and `bulkpix export` for a GeoTIFF)"
        )
    mixed = len({b.dtype for b in bands}) > 1
    if job.file_format == "GEO_TIFF" and mixed and spec.visualization is None:
        kinds = ", ".join(f"{b.id}={b.dtype.name}" for b in bands)
        raise JobError(f"file_format GEO_TIFF needs one data type for all bands ({kinds}); use NPY")
    source_bands: tuple[str, ...] = ()
    visualization = None
    file_format: str = job.file_format
    band_attrs = {b.id: _band_attrs(asset.band_metadata.get(b.id, {})) for b in bands}
    if spec.visualization is not None:
        # The service draws the source bands as 8-bit RGB; PNG keeps it lossless. Tiles
        # are sized for the source bands, the larger request.
        source_bands = tuple(b.id for b in bands)
        visualization = spec.visualization.options()
        widest = max(b.dtype.itemsize for b in bands)
        bands = tuple(BandSpec(name, np.dtype("uint8")) for name in VISUALIZATION_BANDS)
        band_attrs = {
            name: {"long_name": f"{colour} of a visualization of {', '.join(source_bands)}"}
            for name, colour in zip(VISUALIZATION_BANDS, ("red", "green", "blue"), strict=True)
        }
        file_format = "PNG"
        itemsizes = [widest] * len(bands)
    else:
        itemsizes = [b.dtype.itemsize for b in bands]
    try:
        fill_values = {
            b.id: v for b, v in zip(bands, _checked_nodata(spec, bands), strict=True)
            if v is not None
        }
    except ValueError as exc:
        raise JobError(str(exc)) from None
    def tiling(tile: Any) -> TilePlan:
        return plan_tiles(
            grid.height,
            grid.width,
            itemsizes,
            job.chunk,
            tile,
            concurrency=job.concurrency,
            qps=job.qps,
            service=ServiceModel(**job.service_model.model_dump()),
            max_inflight_bytes=job.memory_mb * 2**20,
        )

    tiles = None
    if job.tile == "auto" and recorded_tile is not None:
        with contextlib.suppress(ValueError):
            tiles = tiling(recorded_tile)
    if tiles is None:
        tiles = tiling(job.tile)
    return ItemPlan(
        name=spec.name,
        asset=spec.source,
        bands=bands,
        grid=grid,
        tiles=tiles,
        file_format=file_format,
        workload_tag=spec.workload_tag,
        zarr_format=job.zarr_format,
        fill_values=fill_values,
        band_attrs={k: v for k, v in band_attrs.items() if v},
        visualization=visualization,
        source_bands=source_bands,
        native_pixels=_native_pixels_under(grid, native),
    )


def _native_pixels_under(grid: PixelGrid, native: PixelGrid) -> float | None:
    """The native pixels the output's footprint spans (its bounding box in the native CRS,
    so a little more than the footprint for a reprojected or rotated grid)."""
    try:
        xmin, ymin, xmax, ymax = grid.footprint_bounds(native.crs)
    except ValueError:
        return None
    a, b, _, d, e, _ = native.transform[:6]
    pixels = (xmax - xmin) * (ymax - ymin) / abs(a * e - b * d)
    return pixels if math.isfinite(pixels) and pixels > 0 else None


def _checked_nodata(spec: ResolvedItem, bands: Sequence[BandSpec]) -> list[float | None]:
    """Each band's nodata, or None; ValueError when a band's type cannot hold it."""
    values = _fill_values(spec, bands)
    out: list[float | None] = []
    for band in bands:
        value = values.get(band.id)
        if value is not None and band.dtype.kind in "iu":
            info = np.iinfo(band.dtype)
            if not (float(value).is_integer() and info.min <= value <= info.max):
                raise ValueError(
                    f"nodata {value} for band {band.id} is not a {band.dtype.name} value"
                )
            value = int(value)
        out.append(value)
    return out


def request_body(item: ItemPlan, grid: PixelGrid, band_ids: Sequence[str]) -> dict[str, Any]:
    """The getPixels body for one tile."""
    body: dict[str, Any] = {
        "fileFormat": item.file_format,
        "bandIds": list(band_ids),
        "grid": grid.to_ee(),
    }
    if item.visualization is not None:
        body["bandIds"] = list(item.source_bands)
        body["visualizationOptions"] = dict(item.visualization)
    if item.workload_tag:
        body["workloadTag"] = item.workload_tag
    if item.expression is not None:
        body["expression"] = item.expression
    return body


def item_request_bytes(item: ItemPlan) -> int:
    """Bytes of pixels (as the service counts) for the whole item (every step of a cube)."""
    itemsizes = (b.dtype.itemsize for b in item.bands)
    steps = max(1, item.tiles.steps)
    return request_bytes(item.grid.height, item.grid.width, itemsizes) * steps


def tile_plan_from_fingerprint(fingerprint: Mapping[str, Any]) -> TilePlan | None:
    """The tiling an output was written with, from its fingerprint (None if unreadable)."""
    try:
        height, width = fingerprint["shape"]
        tile_height, tile_width = fingerprint["tile"]
        groups = tuple(tuple(int(i) for i in g) for g in fingerprint["band_groups"])
        cube = fingerprint.get("cube")
        return TilePlan(
            int(height),
            int(width),
            int(fingerprint["chunk"]),
            int(tile_height),
            int(tile_width),
            groups,
            steps=len(cube["steps"]) if isinstance(cube, dict) else 0,
        )
    except (KeyError, TypeError, ValueError):
        return None


# --------------------------------------------------------------------------- estimates

ASSUMED_COMPRESSION: Mapping[str, float] = {
    "none": 1.0,
    "lz4": 1 / 1.46,
    "zstd": 1 / 1.18,
    "gzip": 1 / 1.18,
}
"""Stored bytes per raw pixel byte assumed by the disk estimate, per ``compression``.

What ``python -m benchmarks.write_path --codecs`` measured on realistic bands (smooth fields
plus noise): blosc-lz4 with shuffling stores 1.46x smaller, zstd 1.18x; gzip is taken as zstd.
Real imagery varies both ways (masked or flat areas compress far better, noisy bands worse):
about the raw size is the most to expect, this ratio is a guide.
"""


@dataclass(frozen=True)
class Estimate:
    """What a plan costs if the quota holds: requests, bytes, disk and wall time."""

    requests: int
    request_bytes: int  # as the service counts them (a mask byte per band and pixel)
    pixel_bytes: int  # the output's pixels, uncompressed: about the most to expect on disk
    disk_bytes: int  # pixel_bytes at the codec's assumed ratio (ASSUMED_COMPRESSION)
    seconds: float  # wall time at the job's concurrency, qps and service model


@dataclass(frozen=True)
class JobPlan(Sequence[ItemPlan]):
    """Every item's plan (the sequence) with what the whole job is estimated to cost.

    ``estimate.seconds`` assumes the quota holds (``concurrency`` requests in flight, ``qps``
    per second) and each request takes what the job's ``service_model`` says
    (``base_s + per_mb_s * MB``); throttling, retries and a slower disk add to it.
    """

    items: tuple[ItemPlan, ...]
    item_estimates: tuple[Estimate, ...]
    estimate: Estimate
    concurrency: int
    qps: float
    service: ServiceModel
    compression: str
    compression_ratio: float  # the stored / raw ratio assumed for the disk estimate
    size_warning: str | None  # why `run` asks for a confirmation, or None

    @overload
    def __getitem__(self, index: int) -> ItemPlan: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[ItemPlan]: ...
    def __getitem__(self, index: int | slice) -> ItemPlan | Sequence[ItemPlan]:
        return self.items[index]

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[ItemPlan]:
        return iter(self.items)


def _request_seconds(item: ItemPlan, service: ServiceModel) -> float:
    """Service time of the item's largest request, which every request is costed as."""
    return service.seconds(item.tiles.max_request_bytes)


def estimate(
    plans: Sequence[ItemPlan],
    *,
    concurrency: int,
    qps: float,
    service: ServiceModel,
    compression: str,
) -> Estimate:
    """The cost of running ``plans`` through one pool, item after item.

    Time is the tiler's service-time model over the whole run: the larger of the
    concurrency bound (each item in waves of ``concurrency`` requests, items one after the
    other: ``sum(ceil(n_i / concurrency) * t_i)``) and the rate bound (the last of all ``N``
    requests cannot start before ``(N - 1) / qps``: ``(N - 1) / qps + max(t_i)``), where
    ``t_i`` is the service time of item i's largest request.
    """
    if not plans:
        return Estimate(0, 0, 0, 0, 0.0)
    ratio = ASSUMED_COMPRESSION.get(compression, 1.0)
    requests = sum(
        p.mosaic.n_calls * len(p.tiles.band_groups) if p.mosaic else p.tiles.n_tiles
        for p in plans
    )
    times = [_request_seconds(p, service) for p in plans]
    waves = sum(-(-p.tiles.n_tiles // concurrency) * t for p, t in zip(plans, times, strict=True))
    rate = (requests - 1) / qps + max(times)
    pixel_bytes = sum(p.pixel_bytes for p in plans)
    return Estimate(
        requests=requests,
        request_bytes=sum(p.tiles.total_request_bytes for p in plans),
        pixel_bytes=pixel_bytes,
        disk_bytes=round(pixel_bytes * ratio),
        seconds=float(max(waves, rate)),
    )


# `run` asks before a job that oversamples its assets this much, when it is this large; and
# before any job past the absolute size. A small upsampled preview passes without a word.
OVERSAMPLING_LIMIT = 4.0
OVERSAMPLING_MIN_BYTES = 10**9
LARGE_JOB_BYTES = 10**12


def size_warning(plans: Sequence[ItemPlan]) -> str | None:
    """One line on why the job needs a confirmation, or None.

    Asked for when the job writes at least ``OVERSAMPLING_MIN_BYTES`` of pixels and some item
    has more than ``OVERSAMPLING_LIMIT`` output pixels per native pixel (``scale: 1`` on a
    10 m asset has 100), or when it writes at least ``LARGE_JOB_BYTES`` whatever the scale.
    """
    pixel_bytes = sum(p.pixel_bytes for p in plans)
    size = human_bytes(pixel_bytes)
    oversampled = [p for p in plans if (p.oversampling or 0) > OVERSAMPLING_LIMIT]
    if oversampled and pixel_bytes >= OVERSAMPLING_MIN_BYTES:
        worst = max(oversampled, key=lambda p: p.oversampling or 0)
        where = f"item {worst.name}, " if worst.name else ""
        ratio = worst.oversampling or 0
        times = f"{ratio:,.0f}" if ratio >= 10 else f"{ratio:.1f}"
        return (
            f"this job writes {size} of pixels ({worst.grid.width:,} x {worst.grid.height:,} "
            f"px for {where}asset {worst.asset}), {times}x the asset's native pixels over "
            "that area"
        )
    if pixel_bytes >= LARGE_JOB_BYTES:
        return f"this job writes {size} of pixels"
    return None


def job_plan(plans: Sequence[ItemPlan], job: Job) -> JobPlan:
    """``plans`` with the job's estimates and size warning (what `bulkpix plan` shows)."""
    service = ServiceModel(job.service_model.base_s, job.service_model.per_mb_s)

    def cost(items: Sequence[ItemPlan]) -> Estimate:
        return estimate(
            items,
            concurrency=job.concurrency,
            qps=job.qps,
            service=service,
            compression=job.compression,
        )

    return JobPlan(
        items=tuple(plans),
        item_estimates=tuple(cost([p]) for p in plans),
        estimate=cost(plans),
        concurrency=job.concurrency,
        qps=job.qps,
        service=service,
        compression=job.compression,
        compression_ratio=ASSUMED_COMPRESSION.get(job.compression, 1.0),
        size_warning=size_warning(plans),
    )


def human_bytes(n: float) -> str:
    """Bytes in SI units, e.g. ``149.3 GB``."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def human_seconds(seconds: float) -> str:
    """A duration to the precision a plan deserves, e.g. ``2 h 05 min``, ``40 s``."""
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"
