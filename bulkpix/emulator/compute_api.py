"""The computation routes: ``image:computePixels``, ``value:compute`` and the algorithm list.

``ComputeService`` holds what these routes share across calls (computations in flight, pixels
computed so far); the server hands it requests whose path ``compute_route`` recognises.
Computation faults (config.compute): a request over ``memory_limit_pixels`` or
``timeout_pixels`` output pixels gets the service's 400; more than ``max_concurrent``
computations at once get a 429; once ``budget_pixels`` have been computed every answer carries
``x-earth-engine-quota-status: parallelism_restricted=true``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from affine import Affine
from aiohttp import web
from rasterio.crs import CRS

from bulkpix.emulator.algorithms import algorithm_list
from bulkpix.emulator.assets import Asset
from bulkpix.emulator.compute import (
    CollectionImage,
    CollectionSource,
    Context,
    Image,
    evaluate,
    lonlat_grid,
)
from bulkpix.emulator.encode import check_format, encode
from bulkpix.emulator.faults import draw_fault, fault_error, request_rng, send_payload
from bulkpix.emulator.limits import check_request_limits, service_seconds
from bulkpix.emulator.resample import OutputGrid, _parse_affine, _parse_crs, _parse_dimensions
from bulkpix.emulator.status import ApiError, json_body

if TYPE_CHECKING:
    from bulkpix.emulator.server import Emulator, _Call

__all__ = ["MEMORY_LIMIT_MESSAGE", "QUOTA_STATUS_HEADER", "TIMEOUT_MESSAGE", "ComputeService",
           "compute_route"]

MEMORY_LIMIT_MESSAGE = "User memory limit exceeded."
TIMEOUT_MESSAGE = "Computation timed out."
CONCURRENCY_MESSAGE = "Too many concurrent aggregations."
QUOTA_STATUS_HEADER = "x-earth-engine-quota-status"

_ROUTE = re.compile(r"projects/[^/]+/(image:computePixels|value:compute|algorithms)")
# path suffix -> (log op, HTTP method)
_OPS = {"image:computePixels": ("compute_pixels", "POST"),
        "value:compute": ("compute_value", "POST"),
        "algorithms": ("list_algorithms", "GET")}
_PIXELS_FIELDS = {"expression", "fileFormat", "grid", "bandIds", "visualizationOptions",
                  "workloadTag"}
_VALUE_FIELDS = {"expression", "workloadTag"}
_DEFAULT_CRS = CRS.from_epsg(4326)


def compute_route(name: str | None) -> tuple[str, str] | None:
    """(log op, HTTP method) when an API path's name is a computation route."""
    match = _ROUTE.fullmatch(name) if name is not None else None
    return _OPS[match.group(1)] if match else None


class ComputeService:
    def __init__(self, emulator: Emulator,
                 collections: CollectionSource | None = None) -> None:
        self._emulator = emulator
        # The images of a collection asset, by its name; by default the emulator's own
        # collections (see ``_served_collection``).
        self.collections: CollectionSource = collections or self._served_collection
        self._in_flight = 0
        self.pixels_computed = 0

    def _served_collection(self, name: str) -> list[CollectionImage] | None:
        """The images of a collection the emulator serves (``emulator.collections``: name ->
        an object whose ``images`` have ``asset``, ``start``/``end`` datetimes and a
        ``footprint`` GeoJSON), in its listing order; None if there is none such."""
        served = getattr(self._emulator, "collections", None)
        if not isinstance(served, dict) or name not in served \
                or name in self._emulator.config.forbidden:
            return None
        return [CollectionImage(image.asset, _milliseconds(image.start),
                                _milliseconds(image.end), image.footprint)
                for image in served[name].images]

    # -- shared pieces -------------------------------------------------------------------

    def _context(self, grid: OutputGrid) -> Context:
        return Context(grid, self._asset, self._collection)

    def _asset(self, name: str) -> Asset:
        """An asset an expression loads. Inside a computation the service answers a missing
        or forbidden asset alike, with a 400 naming the algorithm."""
        try:
            return self._emulator._asset(name)
        except ApiError:
            raise ApiError(400, f"Image.load: Image asset '{name}' not found (does not exist "
                                "or caller does not have access).") from None

    def _collection(self, name: str) -> list[CollectionImage] | None:
        return self.collections(name)

    def _restricted(self) -> bool:
        budget = self._emulator.config.compute.budget_pixels
        return budget is not None and self.pixels_computed >= budget

    def _quota_headers(self) -> dict[str, str]:
        return {QUOTA_STATUS_HEADER: "parallelism_restricted=true"} if self._restricted() else {}

    @contextlib.contextmanager
    def _computation(self) -> Iterator[None]:
        limit = self._emulator.config.compute.max_concurrent
        if limit is not None and self._in_flight >= limit:
            raise ApiError(429, CONCURRENCY_MESSAGE)
        self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1

    async def handle(self, request: web.Request, op: str, call: _Call) -> web.StreamResponse:
        try:
            if op == "list_algorithms":
                algorithms = algorithm_list()
                if algorithms is None:
                    raise ApiError(404, "No algorithm list: earthengine-api is not installed.")
                return web.json_response(algorithms)
            if op == "compute_value":
                return await self._compute_value(request, call)
            return await self._compute_pixels(request, call)
        except ApiError as error:
            error.headers = {**error.headers, **self._quota_headers()}
            raise

    # -- value:compute -------------------------------------------------------------------

    async def _compute_value(self, request: web.Request, call: _Call) -> web.Response:
        body = await json_body(request, _VALUE_FIELDS)
        call.record["workload_tag"] = body.get("workloadTag")
        expression = _expression(body)
        with self._computation():
            value = await asyncio.to_thread(evaluate, expression, self._context(lonlat_grid()))
        return web.json_response({"result": _describe(value)}, headers=self._quota_headers())

    # -- image:computePixels -------------------------------------------------------------

    async def _compute_pixels(self, request: web.Request, call: _Call) -> web.StreamResponse:
        emulator, record = self._emulator, call.record
        config = emulator.config
        body = await json_body(request, _PIXELS_FIELDS)
        record["workload_tag"] = body.get("workloadTag")
        expression = _expression(body)
        grid = _output_grid(body.get("grid"))
        record.update(crs=_crs_name(grid.crs), affine=list(grid.transform)[:6],
                      width=grid.width, height=grid.height)
        file_format = body.get("fileFormat") or "AUTO_JPEG_PNG"
        if not isinstance(file_format, str):
            raise ApiError(400, f"Invalid fileFormat: {file_format!r}.")
        file_format = file_format.upper()
        visualization = body.get("visualizationOptions")
        record["format"] = file_format

        with self._computation():
            # The bands and their types first, on one pixel: limits and formats are checked
            # before anything costly is computed.
            described = await asyncio.to_thread(evaluate, expression,
                                                self._context(lonlat_grid()))
            image = _image_result(described)
            band_ids = _band_ids(body.get("bandIds"), image)
            dtypes = [image.band(b).type.dtype for b in band_ids]
            record["bands"] = band_ids
            check_format(file_format, dtypes, visualization)
            record["request_size"] = size = check_request_limits(
                grid.width, grid.height, dtypes, config.max_request_bytes)
            if file_format == "NPY" and len(set(band_ids)) != len(band_ids):
                raise ApiError(400, f"NPY needs distinct band ids, got {band_ids}.")
            pixels = grid.width * grid.height
            limits = config.compute
            if limits.memory_limit_pixels is not None and pixels > limits.memory_limit_pixels:
                record["fault"] = "memory"
                raise ApiError(400, MEMORY_LIMIT_MESSAGE)
            if limits.timeout_pixels is not None and pixels > limits.timeout_pixels:
                record["fault"] = "timeout"
                raise ApiError(400, TIMEOUT_MESSAGE)

            # The transport faults and service time of getPixels, drawn from the same
            # per-call sequence.
            rng = request_rng(config.seed, emulator._pixel_calls)
            emulator._pixel_calls += 1
            record["fault"] = fault = draw_fault(config.faults, rng)
            if fault is not None and (error := fault_error(fault, config.faults, rng)) \
                    is not None:
                raise error
            service_s = service_seconds(config, size, rng)
            loop = asyncio.get_running_loop()
            started = loop.time()
            payload, content_type = await asyncio.to_thread(
                self._render, expression, grid, band_ids, file_format, visualization)
            self.pixels_computed += pixels
            remaining = service_s - (loop.time() - started)
            if remaining > 0:
                await asyncio.sleep(remaining)
        return await send_payload(request, payload, content_type, fault, config.faults,
                                  call.commit, headers=self._quota_headers())

    def _render(self, expression: Any, grid: OutputGrid, band_ids: list[str], file_format: str,
                visualization: Any) -> tuple[bytes, str]:
        image = _image_result(evaluate(expression, self._context(grid)))
        ids, arrays, _dtypes, all_valid = image.output(band_ids)
        return encode(file_format, ids, arrays, grid.crs, grid.transform, visualization,
                      all_valid)


def _milliseconds(moment: dt.datetime | None) -> int | None:
    return None if moment is None else round(moment.timestamp() * 1000)


def _expression(body: dict[str, Any]) -> Any:
    expression = body.get("expression")
    if expression is None:
        raise ApiError(400, "Missing required field: expression.")
    return expression


def _output_grid(spec: Any) -> OutputGrid:
    """A computed image has no native grid: dimensions and an affine transform are needed;
    the CRS defaults to EPSG:4326, as the service's does."""
    if not isinstance(spec, dict):
        raise ApiError(400, "grid is required (with dimensions and affineTransform): a "
                            "computed image has no native grid.")
    unknown = set(spec) - {"crsCode", "crsWkt", "affineTransform", "dimensions"}
    if unknown:
        raise ApiError(400, f"Invalid grid: unknown fields {sorted(unknown)}.")
    if "dimensions" not in spec:
        raise ApiError(400, "grid.dimensions is required for computePixels.")
    if "affineTransform" not in spec:
        raise ApiError(400, "grid.affineTransform is required for computePixels.")
    crs = _parse_crs(spec, _DEFAULT_CRS)
    transform: Affine = _parse_affine(spec["affineTransform"])
    width, height = _parse_dimensions(spec["dimensions"])
    return OutputGrid(crs, transform, width, height, None)


def _crs_name(crs: CRS) -> str:
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg is not None else crs.to_wkt()


def _image_result(value: Any) -> Image:
    if not isinstance(value, Image):
        raise ApiError(400, "computePixels: the expression must evaluate to an Image, got "
                            f"{_type_name(value)}.")
    if not value.bands:
        raise ApiError(400, "computePixels: the image has no bands.")
    return value


def _band_ids(requested: Any, image: Image) -> list[str]:
    if not requested:
        return image.band_ids()
    if not isinstance(requested, list) or not all(isinstance(b, str) for b in requested):
        raise ApiError(400, "Invalid bandIds: expected a list of strings.")
    for band_id in requested:
        image.band(band_id)  # raises the service's error for a band the image lacks
    return list(requested)


def _type_name(value: Any) -> str:
    if isinstance(value, Image):
        return "Image"
    return type(value).__name__


def _describe(value: Any) -> Any:
    if isinstance(value, Image):
        return value.describe()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list):
        return [_describe(v) for v in value]
    if isinstance(value, dict):
        return {k: _describe(v) for k, v in value.items()}
    raise ApiError(400, f"value:compute of a {_type_name(value)} is not supported by the "
                        "bulkpix emulator.")
