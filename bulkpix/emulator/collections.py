"""Image collections the emulator serves: folders of image assets with times and footprints.

A collection is a list of images, each an ``Asset`` (served by GET and getPixels under its own
name, ``{collection}/{id}``) with ``startTime``, ``endTime``, a footprint (``geometry``, GeoJSON
in lon/lat: the outline of the image's raster, so pixels outside it are 0) and ``properties``.
Collections are synthetic ("rows x cols tiles of a grid, over k dates", optionally in several
CRSs) or made of GeoTIFFs (one image per file, times from the configuration).

Listing (``listImages``, ``listAssets``) filters by time, region and a small subset of the
service's filter syntax (``filter_images``): comparisons on ``startTime``, ``endTime`` and
``properties.NAME`` joined by AND / OR, with parentheses, NOT and ``intersects("GeoJSON")``.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from affine import Affine
from pyproj import Transformer
from rasterio.crs import CRS

from bulkpix.emulator.assets import Asset, FileAsset, PixelWindow, SyntheticImage
from bulkpix.emulator.config import (
    FileCollection,
    FileImageSpec,
    SyntheticAsset,
    SyntheticCollection,
)
from bulkpix.emulator.status import ApiError
from bulkpix.emulator.synthetic import synthetic_at, synthetic_pixels

__all__ = [
    "Collection",
    "CollectionImage",
    "FileCollection",
    "FileImageSpec",
    "SyntheticCollection",
    "build_collection",
    "list_page",
    "parse_filter",
]

_EDGE_POINTS = 16  # per edge of a footprint's outline
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100


@dataclass
class CollectionImage:
    asset: Asset
    start: dt.datetime
    end: dt.datetime
    footprint: dict[str, Any]
    bbox: tuple[float, float, float, float]  # of the footprint, lon/lat
    properties: dict[str, Any]

    def metadata(self) -> dict[str, Any]:
        return {
            **self.asset.metadata(),
            "startTime": _rfc3339(self.start),
            "endTime": _rfc3339(self.end),
            "geometry": self.footprint,
            "properties": self.properties,
        }


@dataclass
class Collection:
    name: str
    images: list[CollectionImage]

    def metadata(self) -> dict[str, Any]:
        return {"type": "IMAGE_COLLECTION", "name": self.name, "id": self.name.split("/", 3)[-1]}


class _ShiftedSynthetic(SyntheticImage):
    """A synthetic image whose values are shifted by ``shift`` rows: each date differs."""

    def __init__(self, name: str, spec: SyntheticAsset, shift: int) -> None:
        super().__init__(name, spec)
        self.shift = shift

    def _read_inside(self, band_indexes: Sequence[int], window: PixelWindow) -> list[np.ndarray]:
        rows = np.arange(window.row_off, window.row_off + window.height) + self.shift
        cols = np.arange(window.col_off, window.col_off + window.width)
        return [synthetic_pixels(i, rows, cols) for i in band_indexes]

    def _read_points_inside(self, band_indexes: Sequence[int], rows: np.ndarray,
                            cols: np.ndarray) -> list[np.ndarray]:
        return [synthetic_at(i, rows + self.shift, cols) for i in band_indexes]


def _rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> dt.datetime:
    """RFC 3339 (or a bare date) as an aware datetime; ValueError if not."""
    value = text.strip()
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        return dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC)
    parsed = dt.datetime.fromisoformat(value.replace("z", "Z"))
    if parsed.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return parsed


def footprint_of(asset: Asset) -> tuple[dict[str, Any], tuple[float, float, float, float]]:
    """The outline of the asset's raster as a GeoJSON polygon in lon/lat, and its bbox."""
    steps = np.linspace(0.0, 1.0, _EDGE_POINTS, endpoint=False)
    w, h = float(asset.width), float(asset.height)
    ones, zeros = np.ones_like(steps), np.zeros_like(steps)
    cols = np.concatenate([steps * w, ones * w, (1 - steps) * w, zeros])
    rows = np.concatenate([zeros, steps * h, ones * h, (1 - steps) * h])
    a, b, c, d, e, f = asset.transform[:6]
    xs, ys = a * cols + b * rows + c, d * cols + e * rows + f
    to_lonlat = Transformer.from_crs(asset.crs.to_wkt(), "EPSG:4326", always_xy=True)
    lon, lat = to_lonlat.transform(np.asarray(xs), np.asarray(ys))
    ring = [[round(float(x), 9), round(float(y), 9)] for x, y in zip(lon, lat, strict=True)]
    ring.append(ring[0])
    bbox = (float(np.min(lon)), float(np.min(lat)), float(np.max(lon)), float(np.max(lat)))
    return {"type": "Polygon", "coordinates": [ring]}, bbox


def _image(asset: Asset, start: dt.datetime, end: dt.datetime,
           properties: dict[str, Any]) -> CollectionImage:
    footprint, bbox = footprint_of(asset)
    return CollectionImage(asset, start, end, footprint, bbox, properties)


def build_collection(name: str, spec: SyntheticCollection | FileCollection) -> Collection:
    """The collection's images (opened once, metadata only); ValueError on a bad spec."""
    images: list[CollectionImage] = []
    if isinstance(spec, FileCollection):
        for index, entry in enumerate(spec.images):
            start = parse_time(entry.start)
            end = parse_time(entry.end) if entry.end else start + dt.timedelta(days=1)
            if end <= start:
                raise ValueError(f"collection {name}: image {index} ends before it starts")
            stem = re.sub(r"[^A-Za-z0-9_.-]", "_", entry.path.rsplit("/", 1)[-1].rsplit(".", 1)[0])
            asset: Asset = FileAsset(f"{name}/{index:05d}_{stem}", [entry.path])
            images.append(_image(asset, start, end, dict(entry.properties)))
        return Collection(name, images)
    start = parse_time(spec.start)
    step = (spec.tile_size - spec.overlap) * spec.scale
    for zone, crs_text in enumerate(spec.crs):
        crs = CRS.from_user_input(crs_text)
        x0, y0 = Transformer.from_crs("EPSG:4326", crs.to_wkt(), always_xy=True).transform(
            *spec.origin)
        x0, y0 = math.floor(x0 / spec.scale) * spec.scale, math.ceil(y0 / spec.scale) * spec.scale
        code = crs_text.replace(":", "")
        for day in range(spec.dates):
            for row in range(spec.tiles[0]):
                for col in range(spec.tiles[1]):
                    transform = Affine(spec.scale, 0, x0 + col * step, 0, -spec.scale,
                                       y0 - row * step)
                    asset = _ShiftedSynthetic(
                        f"{name}/{code}_r{row}_c{col}_d{day:03d}",
                        SyntheticAsset(spec.tile_size, spec.tile_size, crs_text, transform),
                        shift=37 * day + 11 * zone,
                    )
                    when = start + dt.timedelta(days=day)
                    properties = {"zone": code, "row": row, "col": col, "day": day,
                                  "cloud": (31 * row + 17 * col + 7 * day + 3 * zone) % 100}
                    images.append(_image(asset, when, when + dt.timedelta(days=1), properties))
    return Collection(name, images)


# --------------------------------------------------------------------------- filters

_TOKEN = re.compile(r"""\s*(?:(?P<num>-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)
    |(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    |(?P<op><=|>=|!=|=|<|>|\(|\)|,)|(?P<word>[A-Za-z_][A-Za-z0-9_.]*))""", re.VERBOSE)

Predicate = Callable[[CollectionImage], bool]


def _tokens(text: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    position = 0
    text = text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise ApiError(400, f"Invalid filter: unexpected {text[position:position + 20]!r}.")
        position = match.end()
        kind = match.lastgroup
        value = match.group(kind or "")
        if kind == "num":
            out.append(("value", float(value)))
        elif kind == "str":
            out.append(("value", json.loads('"' + value[1:-1].replace('"', '\\"') + '"')
                        if value[0] == "'" else json.loads(value)))
        elif kind == "word" and value.upper() in ("AND", "OR", "NOT"):
            out.append(("kw", value.upper()))
        else:
            out.append((kind or "", value))
    return out


def parse_filter(text: str) -> Predicate:
    """A predicate on images from a filter expression; ApiError 400 when it cannot be parsed."""
    tokens = _tokens(text)
    position = 0

    def peek() -> tuple[str, Any] | None:
        return tokens[position] if position < len(tokens) else None

    def take() -> tuple[str, Any]:
        nonlocal position
        if position >= len(tokens):
            raise ApiError(400, f"Invalid filter {text!r}: it ends too early.")
        position += 1
        return tokens[position - 1]

    def expression() -> Predicate:
        parts = [conjunction()]
        while peek() == ("kw", "OR"):
            take()
            parts.append(conjunction())
        return parts[0] if len(parts) == 1 else (lambda image: any(p(image) for p in parts))

    def conjunction() -> Predicate:
        parts = [factor()]
        while peek() == ("kw", "AND"):
            take()
            parts.append(factor())
        return parts[0] if len(parts) == 1 else (lambda image: all(p(image) for p in parts))

    def factor() -> Predicate:
        kind, value = take()
        if (kind, value) == ("kw", "NOT"):
            inner = factor()
            return lambda image: not inner(image)
        if (kind, value) == ("op", "("):
            inner = expression()
            if take() != ("op", ")"):
                raise ApiError(400, f"Invalid filter {text!r}: a parenthesis is not closed.")
            return inner
        if kind == "word" and value == "intersects":
            return intersects()
        if kind != "word":
            raise ApiError(400, f"Invalid filter {text!r}: expected a field, got {value!r}.")
        op_kind, op = take()
        if op_kind != "op" or op not in ("=", "!=", "<", "<=", ">", ">="):
            raise ApiError(400, f"Invalid filter {text!r}: expected a comparison after {value}.")
        literal_kind, literal = take()
        if literal_kind != "value":
            raise ApiError(400, f"Invalid filter {text!r}: expected a value after {op}.")
        return comparison(value, op, literal)

    def intersects() -> Predicate:
        if take() != ("op", "("):
            raise ApiError(400, f"Invalid filter {text!r}: intersects needs (\"GeoJSON\").")
        kind, geometry = take()
        if kind != "value" or take() != ("op", ")"):
            raise ApiError(400, f"Invalid filter {text!r}: intersects needs (\"GeoJSON\").")
        bbox = region_bbox(geometry)
        return lambda image: _overlaps(image.bbox, bbox)

    predicate = expression()
    if position != len(tokens):
        raise ApiError(400, f"Invalid filter {text!r}: unexpected {tokens[position][1]!r}.")
    return predicate


def comparison(name: str, op: str, literal: Any) -> Predicate:
    if name in ("startTime", "endTime", "system:time_start"):
        try:
            moment = parse_time(str(literal))
        except ValueError:
            raise ApiError(400, f"Invalid filter: {literal!r} is not a time.") from None
        attribute = "end" if name == "endTime" else "start"
        return lambda image: _compare(getattr(image, attribute), op, moment)
    if not re.fullmatch(r"(properties\.)?[A-Za-z_][A-Za-z0-9_]*", name):
        raise ApiError(400, f"Invalid filter: unknown field {name!r}.")
    key = name.removeprefix("properties.")

    def check(image: CollectionImage) -> bool:
        value = image.properties.get(key)
        if value is None or isinstance(value, str) != isinstance(literal, str):
            return False
        return _compare(value, op, literal)

    return check


def _compare(left: Any, op: str, right: Any) -> bool:
    if op == "=":
        return bool(left == right)
    if op == "!=":
        return bool(left != right)
    if op == "<":
        return bool(left < right)
    if op == "<=":
        return bool(left <= right)
    if op == ">":
        return bool(left > right)
    return bool(left >= right)


def _coordinates(geometry: Any) -> Iterator[tuple[float, float]]:
    if isinstance(geometry, dict):
        if geometry.get("type") == "GeometryCollection":
            for member in geometry.get("geometries", []):
                yield from _coordinates(member)
        elif geometry.get("type") == "Feature":
            yield from _coordinates(geometry.get("geometry"))
        else:
            yield from _coordinates(geometry.get("coordinates"))
    elif isinstance(geometry, list):
        if len(geometry) >= 2 and all(isinstance(v, int | float) for v in geometry[:2]):
            yield float(geometry[0]), float(geometry[1])
        else:
            for member in geometry:
                yield from _coordinates(member)


def region_bbox(text: Any) -> tuple[float, float, float, float]:
    """The lon/lat bounding box of a GeoJSON geometry given as a string; 400 if it is not one."""
    try:
        geometry = json.loads(text) if isinstance(text, str) else text
        points = list(_coordinates(geometry))
    except (ValueError, RecursionError):
        points = []
    if not points or not all(math.isfinite(v) for p in points for v in p):
        raise ApiError(400, "Invalid region: expected a GeoJSON geometry with coordinates.")
    lon, lat = zip(*points, strict=True)
    return min(lon), min(lat), max(lon), max(lat)


def _overlaps(a: Sequence[float], b: Sequence[float]) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def list_page(collection: Collection, query: dict[str, str], key: str) -> dict[str, Any]:
    """One page of the listing; ``key`` is ``images`` (listImages) or ``assets`` (listAssets)."""
    predicates: list[Predicate] = []
    for name, op in (("startTime", ">="), ("endTime", "<")):
        if query.get(name):
            # listImages' time window selects by the image's start time: [startTime, endTime).
            predicates.append(comparison("startTime", op, query[name]))
    if query.get("region"):
        bbox = region_bbox(query["region"])
        predicates.append(lambda image: _overlaps(image.bbox, bbox))
    if query.get("filter"):
        predicates.append(parse_filter(query["filter"]))
    try:
        size = int(query.get("pageSize") or DEFAULT_PAGE_SIZE)
        offset = int(query.get("pageToken") or 0)
    except ValueError:
        raise ApiError(400, "Invalid pageSize or pageToken.") from None
    if size <= 0 or offset < 0:
        raise ApiError(400, "Invalid pageSize or pageToken.")
    size = min(size, MAX_PAGE_SIZE)
    chosen = [image for image in collection.images if all(p(image) for p in predicates)]
    page: dict[str, Any] = {key: [image.metadata() for image in chosen[offset:offset + size]]}
    if offset + size < len(chosen):
        page["nextPageToken"] = str(offset + size)
    return page
