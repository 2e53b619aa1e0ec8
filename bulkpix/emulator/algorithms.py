"""The Earth Engine algorithms the emulator computes, and the algorithm list it serves.

Supported (numpy over the output grid, see ``compute``): Image.load, Image.select,
Image.constant, Image.add/subtract/multiply/divide, Image.gt/gte/lt/lte/eq/neq (for masks),
Image.toFloat/toDouble/toByte/toInt8/toUint8/toInt16/toUint16/toInt32/toUint32,
Image.addBands, Image.normalizedDifference,
Image.updateMask, Image.unmask, Image.rename; ImageCollection.load, Collection.filter with
Filter.dateRangeContains (filterDate), Filter.intersects (filterBounds) and Filter.and;
reduce.median, reduce.mean, ImageCollection.mosaic; and the helpers earthengine-api puts in
such graphs (Date, DateRange, Feature, GeometryConstructors.*). Anything else is the service's 400.

Types follow Earth Engine's rules, simplified where noted:
- a stored band's type is its dtype's (uint8 -> int [0, 255], float32 -> float, ...);
- add/subtract/multiply of ints give an int whose range holds every possible result (interval
  arithmetic, so no pixel overflows); divide gives the union of the input types, and an int
  divide truncates toward zero; x / 0 is 0, as the service documents;
- an int with a float gives float (double when the int is wider than 16 bits); any double gives
  double;
- normalizedDifference gives float band ``nd``, masked where either input is negative;
- reduce.mean and reduce.median give double; the median is exact (the service's is
  histogram-based); masks are all-or-nothing (the service's are fractional).
"""

from __future__ import annotations

import datetime as dt
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pyproj import Transformer

from bulkpix.emulator.compute import (
    Band,
    Collection,
    CollectionImage,
    Context,
    Image,
    PixelType,
    cast_values,
    image_of,
    union_type,
)
from bulkpix.emulator.discovery import packaged_ee_json
from bulkpix.emulator.status import ApiError

__all__ = ["SUPPORTED", "algorithm_list", "call_algorithm", "constant_image"]

_RESOURCE = "tests/algorithms.json"


def algorithm_list() -> dict[str, Any] | None:
    """The list earthengine-api reads at initialize: its own packaged copy, or None when
    earthengine-api is not installed (only its users ask for the list)."""
    return packaged_ee_json(_RESOURCE)


# -- arguments -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Algorithm:
    run: Callable[[dict[str, Any], Context], Any]
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()


def call_algorithm(name: str, arguments: dict[str, Any], context: Context) -> Any:
    algorithm = SUPPORTED.get(name)
    if algorithm is None:
        raise ApiError(400, f"Unknown algorithm: '{name}'. The bulkpix emulator computes "
                            f"only {', '.join(sorted(SUPPORTED))}.")
    for argument in arguments:
        if argument not in algorithm.required and argument not in algorithm.optional:
            raise ApiError(400, f"{name}: Unrecognized argument '{argument}'.")
    for argument in algorithm.required:
        if arguments.get(argument) is None:
            raise ApiError(400, f"{name}, argument '{argument}': Parameter '{argument}' is "
                                "required.")
    return algorithm.run(arguments, context)


def _image(arguments: dict[str, Any], name: str, context: Context, algorithm: str) -> Image:
    return image_of(arguments[name], context, f"{algorithm}, argument '{name}'")


def _string_list(value: Any, what: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ApiError(400, f"{what}: Invalid type. Expected type: List<String>.")
    return value


# -- images ----------------------------------------------------------------------------------


def _load(arguments: dict[str, Any], context: Context) -> Image:
    asset_id = arguments["id"]
    if not isinstance(asset_id, str):
        raise ApiError(400, "Image.load, argument 'id': Invalid type. Expected type: String.")
    return context.load(context.asset(_asset_name(asset_id)))


def _asset_name(asset_id: str) -> str:
    """earthengine-api sends ids as the user wrote them: "projects/p/assets/x" or a legacy
    "USER/x" (which lives in projects/earthengine-legacy)."""
    if asset_id.startswith("projects/"):
        return asset_id
    return f"projects/earthengine-legacy/assets/{asset_id}"


def constant_image(value: Any, context: Context) -> Image:
    numbers = value if isinstance(value, list) else [value]
    if not numbers or not all(isinstance(v, int | float) and not isinstance(v, bool)
                              for v in numbers):
        raise ApiError(400, "Image.constant: Invalid type. Expected a number or a list of "
                            "numbers.")
    ones = np.ones(context.shape, bool)
    bands = []
    for i, number in enumerate(numbers):
        band_id = "constant" if len(numbers) == 1 else f"constant_{i}"
        if isinstance(number, int):
            kind = PixelType("int", int(number), int(number))
            values = np.full(context.shape, int(number), np.int64)
        else:
            kind = PixelType("double")
            values = np.full(context.shape, float(number), np.float64)
        bands.append(Band(band_id, kind, values, ones))
    return Image(bands, ones)


def _constant(arguments: dict[str, Any], context: Context) -> Image:
    return constant_image(arguments["value"], context)


def _select(arguments: dict[str, Any], context: Context) -> Image:
    image = _image(arguments, "input", context, "Image.select")
    selectors = arguments["bandSelectors"]
    if not isinstance(selectors, list):
        selectors = [selectors]
    chosen: list[Band] = []
    for selector in selectors:
        if isinstance(selector, int) and not isinstance(selector, bool):
            if not 0 <= selector < len(image.bands):
                raise ApiError(400, f"Image.select: Band index {selector} out of bounds; the "
                                    f"image has {len(image.bands)} bands.")
            chosen.append(image.bands[selector])
            continue
        if not isinstance(selector, str):
            raise ApiError(400, f"Image.select: Invalid band selector {selector!r}.")
        try:
            pattern = re.compile(selector)
        except re.error:
            raise ApiError(400, f"Image.select: Invalid pattern '{selector}'.") from None
        matches = [b for b in image.bands if pattern.fullmatch(b.id)]
        if not matches:
            raise ApiError(400, f"Image.select: Pattern '{selector}' did not match any bands. "
                                f"Available bands: {image.band_ids()}.")
        chosen.extend(matches)
    new_names = arguments.get("newNames")
    if new_names is not None:
        names = _string_list(new_names, "Image.select, argument 'newNames'")
        if len(names) != len(chosen):
            raise ApiError(400, f"Image.select: Number of selected bands ({len(chosen)}) does "
                                f"not match the number of new names ({len(names)}).")
        chosen = [Band(n, b.type, b.values, b.mask) for b, n in zip(chosen, names, strict=True)]
    return Image(chosen, image.footprint)


def _rename(arguments: dict[str, Any], context: Context) -> Image:
    image = _image(arguments, "input", context, "Image.rename")
    names = _string_list(arguments["names"], "Image.rename, argument 'names'")
    if len(names) != len(image.bands):
        raise ApiError(400, f"Image.rename: Can't rename {len(image.bands)} bands to "
                            f"{len(names)} names.")
    bands = [Band(n, b.type, b.values, b.mask) for b, n in zip(image.bands, names, strict=True)]
    return Image(bands, image.footprint)


def _pairs(name: str, left: Image, right: Image) -> list[tuple[str, Band, Band]]:
    """Earth Engine's band matching: one band against all, else pairwise in order; names
    from the longer image, or the first when equally long."""
    n1, n2 = len(left.bands), len(right.bands)
    if n1 == n2:
        return [(a.id, a, b) for a, b in zip(left.bands, right.bands, strict=True)]
    if n2 == 1:
        return [(a.id, a, right.bands[0]) for a in left.bands]
    if n1 == 1:
        return [(b.id, left.bands[0], b) for b in right.bands]
    raise ApiError(400, f"{name}: Images must contain the same number of bands or only 1 "
                        f"band. Got {n1} and {n2}.")


def _arithmetic_type(op: str, a: PixelType, b: PixelType) -> PixelType:
    if a.precision != "int" or b.precision != "int" or op == "divide":
        return union_type(a, b)
    a0, a1, b0, b1 = a.min or 0, a.max or 0, b.min or 0, b.max or 0
    if op == "add":
        return PixelType("int", a0 + b0, a1 + b1)
    if op == "subtract":
        return PixelType("int", a0 - b1, a1 - b0)
    corners = [a0 * b0, a0 * b1, a1 * b0, a1 * b1]
    return PixelType("int", min(corners), max(corners))


def _arithmetic(op: str) -> Callable[[dict[str, Any], Context], Image]:
    name = f"Image.{op}"

    def run(arguments: dict[str, Any], context: Context) -> Image:
        left = _image(arguments, "image1", context, name)
        right = _image(arguments, "image2", context, name)
        bands = []
        for band_id, a, b in _pairs(name, left, right):
            kind = _arithmetic_type(op, a.type, b.type)
            integer = kind.precision == "int"
            # Ints in int64 (exact for every range an int band can have), floats in float64.
            work = np.int64 if integer else np.float64
            x, y = a.values.astype(work), b.values.astype(work)
            if op == "add":
                values = x + y
            elif op == "subtract":
                values = x - y
            elif op == "multiply":
                values = x * y
            else:
                zero = y == 0
                safe = np.where(zero, 1, y)
                values = np.where(zero, 0, np.trunc(x / safe) if integer else x / safe)
            bands.append(Band(band_id, kind, values, a.mask & b.mask))
        return Image(bands, left.footprint & right.footprint)

    return run


_CASTS: dict[str, PixelType] = {
    "toFloat": PixelType("float"),
    "toDouble": PixelType("double"),
    **{f"to{name}": PixelType("int", int(np.iinfo(dtype).min), int(np.iinfo(dtype).max))
       for name, dtype in (("Byte", np.uint8), ("Int8", np.int8), ("Uint8", np.uint8),
                           ("Int16", np.int16), ("Uint16", np.uint16), ("Int32", np.int32),
                           ("Uint32", np.uint32))},
}


def _cast_to(op: str) -> Callable[[dict[str, Any], Context], Image]:
    """Image.toFloat and its kin. An int cast saturates at the type's bounds and truncates a
    fraction toward zero."""
    kind = _CASTS[op]

    def run(arguments: dict[str, Any], context: Context) -> Image:
        image = _image(arguments, "value", context, f"Image.{op}")
        bands = [Band(b.id, kind, cast_values(b.values, kind.dtype), b.mask) for b in image.bands]
        return Image(bands, image.footprint)

    return run


def _add_bands(arguments: dict[str, Any], context: Context) -> Image:
    target = _image(arguments, "dstImg", context, "Image.addBands")
    source = _image(arguments, "srcImg", context, "Image.addBands")
    names = arguments.get("names")
    added = source.bands if names is None else [source.band(n) for n in _string_list(
        names, "Image.addBands, argument 'names'")]
    overwrite = bool(arguments.get("overwrite"))
    kept = [b for b in target.bands if not overwrite or b.id not in {a.id for a in added}]
    clashes = {b.id for b in kept} & {a.id for a in added}
    if clashes:
        raise ApiError(400, f"Image.addBands: Can't add a band named '{sorted(clashes)[0]}' to "
                            "an image that has one already (use overwrite).")
    # Overwritten bands keep their place; new ones follow, as the service orders them.
    by_id = {a.id: a for a in added}
    bands = [by_id.pop(b.id) if b.id in by_id and overwrite else b for b in target.bands]
    return Image(bands + list(by_id.values()), target.footprint)


_COMPARISONS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "gt": np.greater, "gte": np.greater_equal, "lt": np.less, "lte": np.less_equal,
    "eq": np.equal, "neq": np.not_equal,
}


def _comparison(op: str) -> Callable[[dict[str, Any], Context], Image]:
    """Image.gt and its kin: 1 where the comparison holds, else 0, as an int [0, 1] band."""
    name = f"Image.{op}"
    compare = _COMPARISONS[op]

    def run(arguments: dict[str, Any], context: Context) -> Image:
        left = _image(arguments, "image1", context, name)
        right = _image(arguments, "image2", context, name)
        bands = [Band(band_id, PixelType("int", 0, 1),
                      compare(a.values.astype(np.float64), b.values.astype(np.float64))
                      .astype(np.uint8), a.mask & b.mask)
                 for band_id, a, b in _pairs(name, left, right)]
        return Image(bands, left.footprint & right.footprint)

    return run


def _normalized_difference(arguments: dict[str, Any], context: Context) -> Image:
    image = _image(arguments, "input", context, "Image.normalizedDifference")
    names = arguments.get("bandNames")
    if names is None:
        if len(image.bands) < 2:
            raise ApiError(400, "Image.normalizedDifference: Need at least 2 bands, got "
                                f"{len(image.bands)}.")
        first, second = image.bands[0], image.bands[1]
    else:
        names = _string_list(names, "Image.normalizedDifference, argument 'bandNames'")
        if len(names) != 2:
            raise ApiError(400, "Image.normalizedDifference: Need exactly 2 band names, got "
                                f"{len(names)}.")
        first, second = image.band(names[0]), image.band(names[1])
    x, y = first.values.astype(np.float64), second.values.astype(np.float64)
    total = x + y
    zero = total == 0
    values = np.where(zero, 0.0, (x - y) / np.where(zero, 1.0, total))
    mask = first.mask & second.mask & (x >= 0) & (y >= 0)
    return Image([Band("nd", PixelType("float"), values, mask)], image.footprint)


def _update_mask(arguments: dict[str, Any], context: Context) -> Image:
    image = _image(arguments, "image", context, "Image.updateMask")
    mask = _image(arguments, "mask", context, "Image.updateMask")
    if len(mask.bands) not in (1, len(image.bands)):
        raise ApiError(400, f"Image.updateMask: Mask must have 1 band or {len(image.bands)} "
                            f"bands, got {len(mask.bands)}.")
    bands = []
    for i, band in enumerate(image.bands):
        by = mask.bands[0 if len(mask.bands) == 1 else i]
        bands.append(Band(band.id, band.type, band.values,
                          band.mask & by.mask & (by.values != 0)))
    return Image(bands, image.footprint)


def _unmask(arguments: dict[str, Any], context: Context) -> Image:
    image = _image(arguments, "input", context, "Image.unmask")
    value = arguments.get("value")
    fill = constant_image(0, context) if value is None else image_of(
        value, context, "Image.unmask, argument 'value'")
    same_footprint = arguments.get("sameFootprint")
    same_footprint = True if same_footprint is None else bool(same_footprint)
    if len(fill.bands) not in (1, len(image.bands)):
        raise ApiError(400, f"Image.unmask: Value must have 1 band or {len(image.bands)} "
                            f"bands, got {len(fill.bands)}.")
    footprint = image.footprint if same_footprint else image.footprint | fill.footprint
    bands = []
    for i, band in enumerate(image.bands):
        by = fill.bands[0 if len(fill.bands) == 1 else i]
        kind = union_type(band.type, by.type)
        work = np.int64 if kind.precision == "int" else np.float64
        take = ~band.mask & footprint
        values = np.where(take, by.values.astype(work), band.values.astype(work))
        mask = np.where(take, by.mask, band.mask)
        bands.append(Band(band.id, kind, values, mask))
    return Image(bands, footprint)


# -- collections -----------------------------------------------------------------------------


def _collection_load(arguments: dict[str, Any], context: Context) -> Collection:
    collection_id = arguments["id"]
    if not isinstance(collection_id, str):
        raise ApiError(400, "ImageCollection.load, argument 'id': Invalid type. Expected "
                            "type: String.")
    images = context.collection(_asset_name(collection_id))
    if images is None:
        raise ApiError(400, f"ImageCollection.load: ImageCollection asset '{collection_id}' "
                            "not found (does not exist or caller does not have access).")
    return Collection(list(images))


def _collection_of(value: Any, algorithm: str) -> Collection:
    if not isinstance(value, Collection):
        raise ApiError(400, f"{algorithm}, argument 'collection': Invalid type. Expected "
                            "type: ImageCollection.")
    return value


Predicate = Callable[[CollectionImage], bool]


def _filter(arguments: dict[str, Any], context: Context) -> Collection:
    collection = _collection_of(arguments["collection"], "Collection.filter")
    predicate = arguments["filter"]
    if not callable(predicate):
        raise ApiError(400, "Collection.filter, argument 'filter': Invalid type. Expected "
                            "type: Filter.")
    return Collection([image for image in collection.images if predicate(image)])


def _milliseconds(value: Any, what: str) -> int:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        text = value.replace("Z", "+00:00")
        try:
            moment = dt.datetime.fromisoformat(text)
        except ValueError:
            raise ApiError(400, f"{what}: Unable to parse date '{value}'.") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        return int(moment.timestamp() * 1000)
    raise ApiError(400, f"{what}: Invalid date {value!r}.")


@dataclass(frozen=True)
class _DateRange:
    start: int
    end: int


def _date(arguments: dict[str, Any], context: Context) -> int:
    if arguments.get("timeZone") not in (None, "UTC", "Etc/UTC"):
        raise ApiError(400, "Date: only UTC is supported by the bulkpix emulator.")
    return _milliseconds(arguments["value"], "Date")


def _date_range(arguments: dict[str, Any], context: Context) -> _DateRange:
    if arguments.get("timeZone") not in (None, "UTC", "Etc/UTC"):
        raise ApiError(400, "DateRange: only UTC is supported by the bulkpix emulator.")
    start = _milliseconds(arguments["start"], "DateRange")
    end = arguments.get("end")
    return _DateRange(start, start + 1 if end is None else _milliseconds(end, "DateRange"))


def _date_range_contains(arguments: dict[str, Any], context: Context) -> Predicate:
    date_range = arguments.get("leftValue")
    field = arguments.get("rightField")
    if not isinstance(date_range, _DateRange) or field != "system:time_start" \
            or arguments.get("leftField") is not None or arguments.get("rightValue") is not None:
        raise ApiError(400, "Filter.dateRangeContains: the bulkpix emulator supports only "
                            "leftValue=DateRange with rightField='system:time_start' "
                            "(filterDate).")

    def passes(image: CollectionImage) -> bool:
        return image.start_ms is not None and date_range.start <= image.start_ms < date_range.end

    return passes


@dataclass(frozen=True)
class _Box:
    """A geometry reduced to its lon/lat bounding box: bounds filters test boxes (a
    simplification: the service intersects the shapes themselves)."""

    west: float
    south: float
    east: float
    north: float

    def intersects(self, other: _Box) -> bool:
        return (self.west <= other.east and other.west <= self.east
                and self.south <= other.north and other.south <= self.north)


def _coordinates(value: Any) -> list[tuple[float, float]]:
    if isinstance(value, list) and len(value) >= 2 and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        return [(float(value[0]), float(value[1]))]
    if isinstance(value, list):
        return [point for item in value for point in _coordinates(item)]
    if isinstance(value, dict):
        if "coordinates" in value:
            return _coordinates(value["coordinates"])
        if "geometries" in value:
            return _coordinates(value["geometries"])
    return []


def _box(points: list[tuple[float, float]], what: str) -> _Box:
    if not points:
        raise ApiError(400, f"{what}: Invalid geometry: no coordinates.")
    lons, lats = zip(*points, strict=True)
    return _Box(min(lons), min(lats), max(lons), max(lats))


def _geometry(arguments: dict[str, Any], context: Context) -> _Box:
    if arguments.get("proj") not in (None, "EPSG:4326") or \
            arguments.get("crs") not in (None, "EPSG:4326"):
        raise ApiError(400, "Geometry: only EPSG:4326 coordinates are supported by the "
                            "bulkpix emulator.")
    if arguments.get("west") is not None:  # GeometryConstructors.BBox
        return _Box(*(float(arguments[k]) for k in ("west", "south", "east", "north")))
    return _box(_coordinates(arguments.get("coordinates")), "Geometry")


def _feature(arguments: dict[str, Any], context: Context) -> _Box:
    """A Feature stands for its geometry (filterBounds wraps the geometry in one)."""
    geometry = arguments.get("geometry")
    if not isinstance(geometry, _Box):
        raise ApiError(400, "Feature: the bulkpix emulator needs a geometry.")
    return geometry


def _asset_box(image: CollectionImage) -> _Box:
    if image.footprint is not None:
        return _box(_coordinates(image.footprint), "footprint")
    asset = image.asset
    cols = np.array([0, asset.width, asset.width, 0], float)
    rows = np.array([0, 0, asset.height, asset.height], float)
    a, b, c, d, e, f = tuple(asset.transform)[:6]
    xs, ys = a * cols + b * rows + c, d * cols + e * rows + f
    to_lonlat = Transformer.from_crs(asset.crs.to_wkt(), "EPSG:4326", always_xy=True)
    lons, lats = to_lonlat.transform(xs, ys)
    return _box(list(zip(map(float, lons), map(float, lats), strict=True)), "footprint")


def _intersects(arguments: dict[str, Any], context: Context) -> Predicate:
    geometry = arguments.get("rightValue")
    if not isinstance(geometry, _Box) or arguments.get("leftField") not in (".all", ".geo"):
        raise ApiError(400, "Filter.intersects: the bulkpix emulator supports only "
                            "leftField='.all' with a geometry rightValue (filterBounds).")
    return lambda image: _asset_box(image).intersects(geometry)


def _and(arguments: dict[str, Any], context: Context) -> Predicate:
    filters = arguments["filters"]
    if not isinstance(filters, list) or not all(callable(f) for f in filters):
        raise ApiError(400, "Filter.and, argument 'filters': Invalid type. Expected type: "
                            "List<Filter>.")
    return lambda image: all(f(image) for f in filters)


def _stack(collection: Collection, context: Context, algorithm: str) -> list[Image]:
    images = [context.load(member.asset) for member in collection.images]
    if images:
        names = images[0].band_ids()
        for image in images[1:]:
            if image.band_ids() != names:
                raise ApiError(400, f"{algorithm}: the bulkpix emulator needs every image of "
                                    f"the collection to have the bands {names}, got "
                                    f"{image.band_ids()}.")
    return images


def _reduce(statistic: str) -> Callable[[dict[str, Any], Context], Image]:
    algorithm = f"reduce.{statistic}"

    def run(arguments: dict[str, Any], context: Context) -> Image:
        images = _stack(_collection_of(arguments["collection"], algorithm), context, algorithm)
        if not images:  # the service answers an empty collection with an image of no bands
            return Image([], np.zeros(context.shape, bool))
        bands = []
        for i, band_id in enumerate(images[0].band_ids()):
            values = np.stack([im.bands[i].values.astype(np.float64) for im in images])
            masks = np.stack([im.bands[i].mask for im in images])
            valid: np.ndarray = np.asarray(masks.any(axis=0))
            stacked = np.where(masks, values, np.nan)
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-masked pixels: masked below
                reduced = (np.nanmedian(stacked, axis=0) if statistic == "median"
                           else np.nanmean(stacked, axis=0))
            bands.append(Band(band_id, PixelType("double"), np.where(valid, reduced, 0.0), valid))
        footprint = np.logical_or.reduce([im.footprint for im in images])
        return Image(bands, footprint)

    return run


def _reduce_extreme(statistic: str) -> Callable[[dict[str, Any], Context], Image]:
    """reduce.min / reduce.max: per pixel, the least / greatest unmasked value, in the
    bands' common type (as the service keeps it)."""
    algorithm = f"reduce.{statistic}"
    pick = np.fmin if statistic == "min" else np.fmax

    def run(arguments: dict[str, Any], context: Context) -> Image:
        images = _stack(_collection_of(arguments["collection"], algorithm), context, algorithm)
        if not images:
            return Image([], np.zeros(context.shape, bool))
        bands = []
        for i, band_id in enumerate(images[0].band_ids()):
            kind = images[0].bands[i].type
            for image in images[1:]:
                kind = union_type(kind, image.bands[i].type)
            values = np.full(context.shape, np.nan)
            mask = np.zeros(context.shape, bool)
            for image in images:
                band = image.bands[i]
                values = pick(values, np.where(band.mask, band.values.astype(np.float64), np.nan))
                mask |= band.mask
            work = np.int64 if kind.precision == "int" else np.float64
            bands.append(Band(band_id, kind, np.where(mask, values, 0).astype(work), mask))
        return Image(bands, np.logical_or.reduce([im.footprint for im in images]))

    return run


def _mosaic(arguments: dict[str, Any], context: Context) -> Image:
    images = _stack(_collection_of(arguments["collection"], "ImageCollection.mosaic"),
                    context, "ImageCollection.mosaic")
    if not images:
        return Image([], np.zeros(context.shape, bool))
    bands = []
    for i, band_id in enumerate(images[0].band_ids()):
        kind = images[0].bands[i].type
        for image in images[1:]:
            kind = union_type(kind, image.bands[i].type)
        work = np.int64 if kind.precision == "int" else np.float64
        values = np.zeros(context.shape, work)
        mask = np.zeros(context.shape, bool)
        for image in images:  # the last image on top, as the service composites
            band = image.bands[i]
            values = np.where(band.mask, band.values.astype(work), values)
            mask |= band.mask
        bands.append(Band(band_id, kind, values, mask))
    return Image(bands, np.logical_or.reduce([im.footprint for im in images]))


SUPPORTED: dict[str, _Algorithm] = {
    "Image.load": _Algorithm(_load, ("id",), ("version",)),
    "Image.constant": _Algorithm(_constant, ("value",)),
    "Image.select": _Algorithm(_select, ("input", "bandSelectors"), ("newNames",)),
    "Image.rename": _Algorithm(_rename, ("input", "names")),
    "Image.add": _Algorithm(_arithmetic("add"), ("image1", "image2")),
    "Image.subtract": _Algorithm(_arithmetic("subtract"), ("image1", "image2")),
    "Image.multiply": _Algorithm(_arithmetic("multiply"), ("image1", "image2")),
    "Image.divide": _Algorithm(_arithmetic("divide"), ("image1", "image2")),
    **{f"Image.{op}": _Algorithm(_comparison(op), ("image1", "image2")) for op in _COMPARISONS},
    **{f"Image.{op}": _Algorithm(_cast_to(op), ("value",)) for op in _CASTS},
    "Image.addBands": _Algorithm(_add_bands, ("dstImg", "srcImg"), ("names", "overwrite")),
    "Image.normalizedDifference": _Algorithm(_normalized_difference, ("input",),
                                             ("bandNames",)),
    "Image.updateMask": _Algorithm(_update_mask, ("image", "mask")),
    "Image.unmask": _Algorithm(_unmask, ("input",), ("value", "sameFootprint")),
    "ImageCollection.load": _Algorithm(_collection_load, ("id",), ("version",)),
    "Collection.filter": _Algorithm(_filter, ("collection", "filter")),
    "Filter.dateRangeContains": _Algorithm(_date_range_contains, (),
                                           ("leftField", "rightValue", "rightField",
                                            "leftValue")),
    "Filter.intersects": _Algorithm(_intersects, (), ("leftField", "rightValue", "rightField",
                                                      "leftValue", "maxError")),
    "Filter.and": _Algorithm(_and, ("filters",)),
    "Feature": _Algorithm(_feature, (), ("geometry", "metadata")),
    "Date": _Algorithm(_date, ("value",), ("timeZone",)),
    "DateRange": _Algorithm(_date_range, ("start",), ("end", "timeZone")),
    "reduce.median": _Algorithm(_reduce("median"), ("collection",)),
    "reduce.mean": _Algorithm(_reduce("mean"), ("collection",)),
    "reduce.min": _Algorithm(_reduce_extreme("min"), ("collection",)),
    "reduce.max": _Algorithm(_reduce_extreme("max"), ("collection",)),
    "ImageCollection.mosaic": _Algorithm(_mosaic, ("collection",)),
}
for _kind in ("Point", "MultiPoint", "LineString", "Polygon", "MultiPolygon", "Rectangle",
              "BBox"):
    SUPPORTED[f"GeometryConstructors.{_kind}"] = _Algorithm(
        _geometry, (), ("coordinates", "crs", "geodesic", "evenOdd", "maxError", "proj",
                        "west", "south", "east", "north"))
