"""Earth Engine expression graphs, evaluated with numpy on one output grid.

An expression is ``{"result": KEY, "values": {KEY: node}}`` as earthengine-api's
``ee.serializer.encode(obj, for_cloud_api=True)`` writes it. Every image is evaluated on the
requested output grid: each output pixel reads its source pixel under its own centre (the
getPixels rule in ``resample``), so a result never depends on how a region is tiled.

An image here is a list of bands, each with values, a mask and an Earth Engine pixel type,
plus its footprint (where it has data at all). Masked pixels are sent as 0, as getPixels does.
The algorithms themselves are in ``algorithms``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
from rasterio.crs import CRS

from bulkpix.dtypes import numpy_dtype
from bulkpix.emulator.assets import Asset
from bulkpix.emulator.resample import OutputGrid, _native_offset, read_grid, source_indices
from bulkpix.emulator.status import ApiError

__all__ = [
    "Band",
    "Collection",
    "CollectionImage",
    "Context",
    "Image",
    "PixelType",
    "cast_values",
    "evaluate",
    "image_of",
    "pixel_type_of",
]

Precision = Literal["int", "float", "double"]


@dataclass(frozen=True)
class PixelType:
    """Earth Engine's ``PixelType``: precision, and for ints the value range."""

    precision: Precision
    min: int | None = None
    max: int | None = None

    @property
    def dtype(self) -> np.dtype:
        if self.precision == "float":
            return np.dtype("float32")
        if self.precision == "double":
            return np.dtype("float64")
        lo, hi = self.min or 0, self.max or 0
        # The storage type a client picks for this range (the EEDAI rule bulkpix.dtypes
        # applies to asset metadata), so an answer's dtype is the one its client expects.
        dtype = numpy_dtype({"precision": "INT", "range": {"min": lo, "max": hi}})
        info = np.iinfo(dtype)
        # A range wider than 32 bits (a product of two int32 bands, say) has no such type:
        # int64, a simplification.
        return dtype if info.min <= lo and hi <= info.max else np.dtype("int64")

    def describe(self) -> dict[str, Any]:
        """As ``value:compute`` answers a band's ``data_type``."""
        out: dict[str, Any] = {"type": "PixelType", "precision": self.precision}
        if self.precision == "int":
            out.update(min=self.min, max=self.max)
        return out


def pixel_type_of(dtype: np.dtype) -> PixelType:
    """The type Earth Engine gives a stored band of this dtype."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return PixelType("int", int(info.min), int(info.max))
    return PixelType("double" if dtype.itemsize > 4 else "float")


def union_type(a: PixelType, b: PixelType) -> PixelType:
    """The smallest type holding both (Earth Engine's "union of the input types")."""
    if a.precision == "int" and b.precision == "int":
        return PixelType("int", min(a.min or 0, b.min or 0), max(a.max or 0, b.max or 0))
    if "double" in (a.precision, b.precision):
        return PixelType("double")
    # A float with an int: float holds ints up to 16 bits exactly; wider ones need a double.
    other = b if a.precision == "float" else a
    if other.precision == "int" and other.dtype.itemsize > 2:
        return PixelType("double")
    return PixelType("float")


@dataclass
class Band:
    id: str
    type: PixelType
    values: np.ndarray  # any numeric dtype; cast to ``type.dtype`` on output
    mask: np.ndarray  # bool, True where the pixel is valid


@dataclass
class Image:
    bands: list[Band]
    footprint: np.ndarray  # bool, where the image has data at all

    def band_ids(self) -> list[str]:
        return [b.id for b in self.bands]

    def output(self, band_ids: Sequence[str] | None = None) -> tuple[list[str], list[np.ndarray],
                                                                     list[np.dtype], bool]:
        """Band ids, arrays with masked pixels as 0, dtypes, and whether nothing is masked."""
        bands = self.bands if band_ids is None else [self.band(b) for b in band_ids]
        arrays, all_valid = [], True
        for band in bands:
            dtype = band.type.dtype
            values = cast_values(band.values, dtype)
            arrays.append(np.where(band.mask, values, np.zeros((), dtype)).astype(dtype,
                                                                                 copy=False))
            all_valid = all_valid and bool(band.mask.all())
        return [b.id for b in bands], arrays, [b.type.dtype for b in bands], all_valid

    def band(self, band_id: str) -> Band:
        for band in self.bands:
            if band.id == band_id:
                return band
        raise ApiError(400, f"Image.select: Pattern '{band_id}' did not match any bands. "
                            f"Available bands: {self.band_ids()}.")

    def describe(self) -> dict[str, Any]:
        """As ``value:compute`` answers an image."""
        return {"type": "Image",
                "bands": [{"id": b.id, "data_type": b.type.describe()} for b in self.bands]}


def cast_values(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Values as ``dtype``: a cast to an int saturates at its bounds and truncates toward zero
    (never wraps around)."""
    if values.dtype == dtype:
        return values
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        if np.issubdtype(values.dtype, np.integer):
            values = np.clip(values.astype(np.int64), info.min, info.max)
        else:
            values = np.trunc(np.clip(np.nan_to_num(values), info.min, info.max))
    return values.astype(dtype)


@dataclass(frozen=True)
class CollectionImage:
    """One image of a collection: its asset, its start/end (ms since the epoch, or None) and
    its footprint as a GeoJSON geometry in lon/lat (None: the asset's whole extent)."""

    asset: Asset
    start_ms: int | None = None
    end_ms: int | None = None
    footprint: dict[str, Any] | None = None


@dataclass
class Collection:
    images: list[CollectionImage]


# How the server hands collections to the evaluator: the images of a collection asset, in
# the collection's order, or None when there is no such collection.
CollectionSource = Callable[[str], "list[CollectionImage] | None"]


@dataclass
class Context:
    """What an evaluation reads: assets, collections and the output grid."""

    grid: OutputGrid
    asset: Callable[[str], Asset]  # raises ApiError for a missing or forbidden asset
    collection: CollectionSource = field(default=lambda _name: None)

    @property
    def shape(self) -> tuple[int, int]:
        return self.grid.height, self.grid.width

    def load(self, asset: Asset) -> Image:
        """An asset's bands on the output grid; outside the asset is masked."""
        grid = replace(self.grid, native_offset=_native_offset(asset, self.grid.crs,
                                                               self.grid.transform))
        arrays, inside = read_grid(asset, range(len(asset.bands)), grid)
        if inside:
            footprint = np.ones(self.shape, bool)
        else:
            rows, cols = source_indices(grid, asset)
            footprint = (rows >= 0) & (rows < asset.height) & (cols >= 0) & (cols < asset.width)
        bands = [Band(b.id, pixel_type_of(b.dtype), array, footprint)
                 for b, array in zip(asset.bands, arrays, strict=True)]
        return Image(bands, footprint)


def image_of(value: Any, context: Context, what: str) -> Image:
    """An argument that must be an image; a plain number is promoted to a constant image,
    as earthengine-api promotes it on the client."""
    if isinstance(value, Image):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float | list):
        raise ApiError(400, f"{what}: Invalid type. Expected type: Image<unknown bands>. "
                            f"Actual type: {type(value).__name__}.")
    from bulkpix.emulator.algorithms import constant_image
    return constant_image(value, context)


# -- graph evaluation ------------------------------------------------------------------------


def evaluate(expression: Any, context: Context) -> Any:
    """The value of an expression graph (an Image, Collection, number, string, ...)."""
    if not isinstance(expression, dict) or not isinstance(expression.get("values"), dict) \
            or "result" not in expression:
        raise ApiError(400, "Invalid expression: expected an object with 'result' and "
                            "'values'.")
    values: dict[str, Any] = expression["values"]
    cache: dict[str, Any] = {}
    in_progress: set[str] = set()

    def reference(key: Any) -> Any:
        if not isinstance(key, str) or key not in values:
            raise ApiError(400, f"Invalid expression: no value named {key!r}.")
        if key in cache:  # a repeated subgraph is evaluated once
            return cache[key]
        if key in in_progress:
            raise ApiError(400, f"Invalid expression: value {key!r} refers to itself.")
        in_progress.add(key)
        cache[key] = node(values[key])
        in_progress.discard(key)
        return cache[key]

    def node(spec: Any) -> Any:
        if not isinstance(spec, dict) or len(spec) != 1:
            raise ApiError(400, f"Invalid expression node: {_short(spec)}.")
        kind, body = next(iter(spec.items()))
        if kind == "constantValue":
            return body
        if kind == "integerValue":
            try:
                return int(body)
            except (TypeError, ValueError):
                raise ApiError(400, f"Invalid integerValue: {_short(body)}.") from None
        if kind == "arrayValue":
            items = body.get("values", []) if isinstance(body, dict) else None
            if not isinstance(items, list):
                raise ApiError(400, f"Invalid arrayValue: {_short(body)}.")
            return [node(item) for item in items]
        if kind == "dictionaryValue":
            entries = body.get("values", {}) if isinstance(body, dict) else None
            if not isinstance(entries, dict):
                raise ApiError(400, f"Invalid dictionaryValue: {_short(body)}.")
            return {k: node(v) for k, v in entries.items()}
        if kind == "valueReference":
            return reference(body)
        if kind == "functionInvocationValue":
            return invoke(body)
        if kind in ("functionDefinitionValue", "argumentReference"):
            raise ApiError(400, f"{kind} (a user-defined function, e.g. of map()) is not "
                                "supported by the bulkpix emulator.")
        raise ApiError(400, f"Invalid expression node kind: {kind!r}.")

    def invoke(body: Any) -> Any:
        from bulkpix.emulator.algorithms import call_algorithm
        if not isinstance(body, dict) or not isinstance(body.get("functionName"), str):
            if isinstance(body, dict) and "functionReference" in body:
                raise ApiError(400, "functionReference is not supported by the bulkpix "
                                    "emulator.")
            raise ApiError(400, f"Invalid functionInvocationValue: {_short(body)}.")
        arguments = body.get("arguments") or {}
        if not isinstance(arguments, dict):
            raise ApiError(400, f"Invalid arguments of {body['functionName']}.")
        evaluated = {name: node(value) for name, value in arguments.items()}
        return call_algorithm(body["functionName"], evaluated, context)

    return reference(expression["result"])


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def lonlat_grid() -> OutputGrid:
    """A one-pixel grid, for evaluations whose pixel values do not matter (value:compute)."""
    from affine import Affine
    return OutputGrid(CRS.from_epsg(4326), Affine(1e-6, 0, 0, 0, -1e-6, 0), 1, 1, None)
