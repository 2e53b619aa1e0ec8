"""Computed images: an Earth Engine expression graph instead of an asset.

A job's ``expression`` is a serialized graph (``{"result": KEY, "values": {KEY: node}}``, what
``ee.serializer.encode(image, for_cloud_api=True)`` writes): a JSON file relative to the job
file, the graph inline, or, in Python, an ``ee.Image`` (earthengine-api is imported only
then). A computed image has no native grid, so ``crs``, ``scale`` (or ``dimensions``) and a
``region`` make the output grid. Its band ids and types come from one ``value:compute`` call
(``describe``), before anything is written; its pixels from ``image:computePixels``.

No aiohttp, zarr or asyncio here: the job model imports this module.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bulkpix.errors import BadMetadata, JobError, printable
from bulkpix.files import read_job_named_file

if TYPE_CHECKING:
    from bulkpix.geometry.grid import PixelGrid
    from bulkpix.job import ResolvedItem
    from bulkpix.planning import AssetInfo

__all__ = [
    "EXPRESSION_FILE_MAX_BYTES",
    "check_computed_item",
    "check_expression",
    "check_reduced_item",
    "check_rescale",
    "computed_asset",
    "computed_grid",
    "item_graph",
    "load_expression",
    "reduce_graph",
]

# A graph of thousands of nodes is a few hundred KB; past this it is not a graph.
EXPRESSION_FILE_MAX_BYTES = 16 * 2**20
_COLLECTION_KEYS = ("dates", "filter", "layout", "mosaic", "group_by")


def check_expression(value: Any) -> str | dict[str, Any] | None:
    """The job's ``expression`` as a path or a graph; an ``ee`` object is serialized here.
    ValueError (one line) for anything else."""
    if value is None or isinstance(value, str):
        if isinstance(value, str) and (len(value) > 4096 or any(ord(c) < 32 for c in value)):
            raise ValueError("an expression path is one line of at most 4096 characters")
        return value
    if isinstance(value, dict):
        return check_graph(value)
    if type(value).__module__.split(".")[0] == "ee":
        try:
            import ee  # earthengine-api: only for a job given an ee object
        except ImportError:
            raise ValueError(
                "an ee object needs earthengine-api: pip install 'bulkpix[ee]'"
            ) from None
        return check_graph(ee.serializer.encode(value, for_cloud_api=True))
    raise ValueError(
        f"must be a graph file path, a serialized graph or an ee.Image, got {type(value).__name__}"
    )


def check_graph(graph: Any) -> dict[str, Any]:
    """A serialized graph's outline: a ``result`` key naming one of its ``values``."""
    if not isinstance(graph, dict) or set(graph) != {"result", "values"}:
        raise ValueError("a serialized graph is {result: KEY, values: {KEY: node, ...}}")
    values = graph["values"]
    if not isinstance(values, dict) or graph["result"] not in values:
        raise ValueError("the graph's result names none of its values")
    return graph


def load_expression(expression: str | Mapping[str, Any], base_dir: Path) -> dict[str, Any]:
    """The graph: inline as it is, or read from its file (relative to the job file)."""
    if not isinstance(expression, str):
        return dict(expression)
    path = Path(expression).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    where = f"expression file {path}"
    raw = read_job_named_file(path, EXPRESSION_FILE_MAX_BYTES, "expression file")
    try:
        graph = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise JobError(f"{where}: not JSON") from None
    except RecursionError:
        raise JobError(f"{where}: nested too deeply") from None
    try:
        return check_graph(graph)
    except ValueError as exc:
        raise JobError(f"{where}: {exc}") from None


def check_computed_item(where: str, fields: Mapping[str, Any]) -> None:
    """What a computed item needs and must not have (ValueError, one line)."""
    others = [k for k in ("asset", "collection") if fields.get(k) is not None]
    if others:
        raise ValueError(f"{where}: give one of asset, collection or expression, not "
                         f"{' and '.join(['expression', *others])}")
    given = [k for k in (*_COLLECTION_KEYS, "reduce") if fields.get(k) is not None]
    if given:
        raise ValueError(f"{where}: {', '.join(given)} goes with collection, not expression")
    check_rescale(where, fields)
    _check_grid_keys(where, fields, "a computed image (expression)")


def check_reduced_item(where: str, fields: Mapping[str, Any]) -> None:
    """A collection the service reduces: no listing keys it cannot express, a grid."""
    if fields.get("collection") is None:
        raise ValueError(f"{where}: reduce goes with collection")
    if fields.get("asset") is not None:
        raise ValueError(f"{where}: give asset or collection, not both")
    given = [k for k in ("filter", "layout", "mosaic", "group_by") if fields.get(k) is not None]
    if given:
        raise ValueError(f"{where}: {', '.join(given)} does not go with reduce (the composite "
                         "is computed by the service from the images in dates and region)")
    _check_grid_keys(where, fields, "a reduced collection")


def check_rescale(where: str, fields: Mapping[str, Any]) -> None:
    given = [k for k in ("scale_factor", "offset") if fields.get(k) is not None]
    if given:
        raise ValueError(f"{where}: {' and '.join(given)} goes with reduce (in an expression, "
                         "multiply and add in the graph)")


def _check_grid_keys(where: str, fields: Mapping[str, Any], what: str) -> None:
    missing = [k for k in ("crs", "region") if fields.get(k) is None]
    if fields.get("scale") is None and fields.get("dimensions") is None:
        missing.insert(1, "scale (or dimensions)")
    if missing:
        raise ValueError(f"{where}: {what} has no native grid: give {', '.join(missing)}")


def item_graph(spec: ResolvedItem, base_dir: Path) -> dict[str, Any]:
    """A computed item's graph: its expression, or its collection's composite."""
    if spec.reduce is not None:
        return reduce_graph(spec, base_dir)
    assert spec.expression is not None
    return load_expression(spec.expression, base_dir)


def _call(name: str, **arguments: dict[str, Any]) -> dict[str, Any]:
    return {"functionInvocationValue": {"functionName": name, "arguments": arguments}}


def _constant(value: Any) -> dict[str, Any]:
    return {"constantValue": value}


def reduce_graph(spec: ResolvedItem, base_dir: Path) -> dict[str, Any]:
    """The composite as earthengine-api writes ``ee.ImageCollection(C).filterDate(a, b)
    .filterBounds(region).median().select(bands)``: ImageCollection.load, Collection.filter by
    dates and by the region's lon/lat bounding box, reduce.X (or ImageCollection.mosaic)."""
    from bulkpix.geometry.grid import region_bounds

    assert spec.collection is not None and spec.reduce is not None
    node = _call("ImageCollection.load", id=_constant(spec.collection))
    times = spec.time_range()
    if times is not None:
        dates = _call("DateRange", start=_constant(times[0]), end=_constant(times[1]))
        node = _call("Collection.filter", collection=node, filter=_call(
            "Filter.dateRangeContains", leftValue=dates,
            rightField=_constant("system:time_start")))
    if spec.region is not None:
        region = spec.region.load_geometry(base_dir)
        try:
            west, south, east, north = region_bounds(region, spec.region.region_crs,
                                                     "EPSG:4326")
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise JobError(f"cannot read the region: {exc}") from None
        ring = [[west, north], [west, south], [east, south], [east, north]]
        polygon = _call("GeometryConstructors.Polygon", coordinates=_constant([ring]),
                        evenOdd=_constant(True))
        node = _call("Collection.filter", collection=node, filter=_call(
            "Filter.intersects", leftField=_constant(".all"),
            rightValue=_call("Feature", geometry=polygon)))
    name = "ImageCollection.mosaic" if spec.reduce == "mosaic" else f"reduce.{spec.reduce}"
    node = _call(name, collection=node)
    if spec.bands is not None:
        node = _call("Image.select", input=node, bandSelectors=_constant(list(spec.bands)))
    # As earthengine-api writes image.multiply(x).add(y).
    if spec.scale_factor is not None:
        node = _call("Image.multiply", image1=node, image2=_call(
            "Image.constant", value=_constant(spec.scale_factor)))
    if spec.offset is not None:
        node = _call("Image.add", image1=node, image2=_call(
            "Image.constant", value=_constant(spec.offset)))
    return {"result": "0", "values": {"0": node}}


def computed_grid(spec: ResolvedItem, base_dir: Path) -> PixelGrid:
    """The output grid of a computed item: its region's bounding box in ``crs``, at ``scale``
    (edges on multiples of it) or at exactly ``dimensions``."""
    from bulkpix.geometry.crs import CRS
    from bulkpix.geometry.grid import aligned_grid, region_bounds, sized_grid

    assert spec.crs is not None and spec.region is not None
    crs = CRS.of(spec.crs)
    region = spec.region.load_geometry(base_dir)
    try:
        bounds = region_bounds(region, spec.region.region_crs, crs)
        if spec.dimensions is not None:
            return sized_grid(crs, spec.dimensions, bounds)
        assert spec.scale is not None
        return aligned_grid(crs, spec.scale, bounds)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise JobError(f"cannot make the output grid: {exc}") from None


def computed_asset(result: Any, grid: PixelGrid) -> AssetInfo:
    """The band ids and storage types of a ``value:compute`` image description
    (``{"type": "Image", "bands": [{"id", "data_type": {"precision", "min", "max"}}]}``), as
    the asset metadata planning works from, on the item's own grid."""
    from bulkpix.dtypes import BandSpec, numpy_dtype
    from bulkpix.planning import AssetInfo

    def bad(what: str) -> BadMetadata:
        return BadMetadata(f"expression: the service's description is unusable: {what}")

    if not isinstance(result, dict) or result.get("type") != "Image":
        kind = result.get("type") if isinstance(result, dict) else type(result).__name__
        raise JobError(f"the expression is not an image (it evaluates to "
                       f"{printable(str(kind), limit=60)})")
    raw_bands = result.get("bands")
    if not isinstance(raw_bands, list):
        raise bad("no list of bands")
    if not raw_bands:
        raise JobError("the expression's image has no bands")
    bands = []
    for position, band in enumerate(raw_bands, start=1):
        if not isinstance(band, dict) or not isinstance(band.get("id"), str) or not band["id"]:
            raise bad(f"band {position} has no id")
        data_type = band.get("data_type")
        if not isinstance(data_type, dict):
            raise bad(f"band {printable(band['id'], limit=60)} has no data_type")
        precision = str(data_type.get("precision", "")).upper()
        value_range = {k: data_type[k] for k in ("min", "max") if k in data_type}
        try:
            dtype = numpy_dtype({"precision": precision, "range": value_range})
        except (ValueError, TypeError):
            raise bad(f"band {printable(band['id'], limit=60)}: data_type "
                      f"{printable(str(data_type), limit=80)}") from None
        bands.append(BandSpec(band["id"], dtype))
    ids = [b.id for b in bands]
    if len(set(ids)) != len(ids):
        raise JobError(f"the expression's image repeats band ids ({', '.join(ids)}); rename them")
    return AssetInfo(name="expression", bands=tuple(bands), grids={b: grid for b in ids},
                     update_time=None)
