"""The aiohttp application: routes, auth, quotas, getPixels, and ways to run it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from bulkpix.emulator.assets import Asset, load_assets
from bulkpix.emulator.collections import Collection, build_collection, list_page
from bulkpix.emulator.compute_api import ComputeService, compute_route
from bulkpix.emulator.config import EmulatorConfig
from bulkpix.emulator.discovery import discovery_document
from bulkpix.emulator.encode import check_format, encode
from bulkpix.emulator.faults import draw_fault, fault_error, request_rng, send_payload
from bulkpix.emulator.limits import Quota, check_request_limits, service_seconds
from bulkpix.emulator.log import RequestLog
from bulkpix.emulator.resample import OutputGrid, read_grid, resolve_grid
from bulkpix.emulator.status import ApiError, json_body, status_response

__all__ = ["Emulator", "emulator_in_thread", "run_emulator"]

_API_PATH = re.compile(r"/(v1|v1alpha|v1beta)/(.+)")
_GET_PIXELS_SUFFIX = ":getPixels"
_LIST_SUFFIXES = {
    ":listImages": ("list_images", "images"),
    ":listAssets": ("list_assets", "assets"),
}
_BODY_FIELDS = {"fileFormat", "bandIds", "grid", "region", "visualizationOptions", "workloadTag"}
_TOKEN_GRANTS = {"refresh_token", "urn:ietf:params:oauth:grant-type:jwt-bearer",
                 "client_credentials"}
_DEFAULT_ACCESS_TOKEN = "bulkpix-emulator-token"
_MAX_BODY_BYTES = 16 * 1024 * 1024

logger = logging.getLogger(__name__)


class _Call:
    """One call's log record, committed exactly once: before the client can see the end of
    the answer, so a client that got its answer always finds the call in the log."""

    def __init__(self, log: RequestLog, request: web.Request, op: str, **fields: Any) -> None:
        self.record = RequestLog.new_record(time=time.time(), method=request.method,
                                            path=request.path, op=op, **fields)
        self._log = log
        self._started = time.monotonic()
        self._committed = False

    def commit(self, status: int | None, sent: int) -> None:
        if self._committed:
            return
        self._committed = True
        self.record.update(status=status, response_bytes=sent,
                           service_s=round(time.monotonic() - self._started, 6))
        self._log.append(self.record)

    def commit_response(self, response: web.StreamResponse) -> None:
        body = response.body if isinstance(response, web.Response) else None
        self.commit(response.status, len(body) if isinstance(body, bytes) else 0)


class Emulator:
    """One emulated Earth Engine endpoint. ``url``, ``log`` and ``config`` are public."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.assets: dict[str, Asset] = load_assets(config)
        self.collections: dict[str, Collection] = {}
        for name, spec in config.collections.items():
            if name in self.assets or name in self.collections:
                raise ValueError(f"collection {name} is configured twice")
            collection = self.collections[name] = build_collection(name, spec)
            for image in collection.images:  # each image is an asset of its own too
                self.assets[image.asset.name] = image.asset
        self.url = ""
        self.quota = Quota(config)
        self._log = RequestLog(config.log_path)
        self._pixel_calls = 0  # numbers getPixels calls for the seeded fault/jitter draws
        self.compute = ComputeService(self)  # computePixels, value:compute, the algorithm list

    @property
    def log(self) -> list[dict[str, Any]]:
        return self._log.records

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=_MAX_BODY_BYTES)
        app.router.add_post("/token", self._handle_token)
        app.router.add_get("/$discovery/rest", self._handle_discovery)
        app.router.add_route("*", "/{tail:.*}", self._handle_api)
        return app

    # -- helpers -------------------------------------------------------------------------

    def _authorize(self, request: web.Request) -> None:
        token = self.config.token
        if token is not None and request.headers.get("Authorization") != f"Bearer {token}":
            raise ApiError(401, "Request had invalid authentication credentials. Expected OAuth 2 "
                                "access token, login cookie or other valid authentication "
                                "credential.")

    def _asset(self, name: str) -> Asset:
        if name in self.config.forbidden:
            raise ApiError(403, f"Permission denied on asset '{name}' (or it does not exist).")
        asset = self.assets.get(name)
        if asset is None:
            raise ApiError(404, f"Asset '{name}' not found.")
        return asset

    def _collection(self, name: str) -> Collection:
        if name in self.config.forbidden:
            raise ApiError(403, f"Permission denied on asset '{name}' (or it does not exist).")
        collection = self.collections.get(name)
        if collection is None:
            raise ApiError(404, f"ImageCollection '{name}' not found.")
        return collection

    def _metadata(self, name: str) -> dict[str, Any]:
        if name in self.collections and name not in self.config.forbidden:
            return self.collections[name].metadata()
        for collection in self.collections.values():  # an image of a collection: with its times
            if name.startswith(collection.name + "/"):
                for image in collection.images:
                    if image.asset.name == name:
                        return image.metadata()
        return self._asset(name).metadata()

    # -- routes --------------------------------------------------------------------------

    async def _handle_token(self, request: web.Request) -> web.Response:
        call = _Call(self._log, request, "token")
        form = await request.post()
        grant = form.get("grant_type")
        if grant not in _TOKEN_GRANTS:
            # OAuth2 error shape (RFC 6749), which google-auth reports; no secrets are logged.
            response = web.json_response({"error": "unsupported_grant_type",
                                          "error_description": f"grant_type {grant!r}"},
                                         status=400)
        else:
            response = web.json_response({"access_token": self.config.token or
                                          _DEFAULT_ACCESS_TOKEN,
                                          "expires_in": 3600, "token_type": "Bearer"})
        call.commit_response(response)
        return response

    async def _handle_discovery(self, request: web.Request) -> web.Response:
        call = _Call(self._log, request, "discovery")
        try:
            self._authorize(request)
            document = discovery_document(self.url)
            if document is None:
                raise ApiError(404, "No discovery document: earthengine-api is not installed.")
            response = web.json_response(document)
        except ApiError as error:
            response = status_response(error)
        call.commit_response(response)
        return response

    async def _handle_api(self, request: web.Request) -> web.StreamResponse:
        # The raw path, unquoted by hand: clients may send the name's slashes as %2F.
        path = unquote(request.raw_path.split("?", 1)[0])
        match = _API_PATH.fullmatch(path)
        name = match.group(2) if match else None
        op, expected_method = "get_asset", "GET"
        route = compute_route(name)
        if route is not None:
            op, expected_method = route
        elif name is not None and name.endswith(_GET_PIXELS_SUFFIX):
            op, name, expected_method = "get_pixels", name[: -len(_GET_PIXELS_SUFFIX)], "POST"
        list_key = ""
        for suffix, (list_op, key) in _LIST_SUFFIXES.items():
            if route is None and name is not None and name.endswith(suffix):
                op, list_key, name = list_op, key, name[: -len(suffix)]
        call = _Call(self._log, request, op, asset=name)
        try:
            if name is None or request.method != expected_method:
                raise ApiError(404, f"Method not found: {request.method} {path}.")
            self._authorize(request)
            response: web.StreamResponse
            with self.quota.slot():
                # Calls being served, this one included: a log shows the peak a client reached.
                call.record["in_flight"] = self.quota.in_flight
                if route is not None:
                    response = await self.compute.handle(request, op, call)
                elif op == "get_asset":
                    response = web.json_response(self._metadata(name))
                elif list_key:
                    response = web.json_response(
                        list_page(self._collection(name), dict(request.query), list_key))
                else:
                    response = await self._get_pixels(request, name, call)
        except ApiError as error:
            response = status_response(error)
        except ConnectionError:
            # The client went away (closed or killed) before its answer could be sent (a
            # reset, or aiohttp's "Connection lost" while a body drained):
            # logged as 499, nginx's "client closed request", not as a server error. A
            # response returned (not an exception raised) lets aiohttp drop it quietly,
            # where a raise would print its traceback for every request in flight.
            call.commit(499, 0)
            return web.Response(status=499)
        except Exception:
            # A bug in the emulator still answers in the service's error shape.
            logger.exception("emulator failed on %s %s", request.method, path)
            response = status_response(ApiError(500, "Internal error in the emulator."))
        call.commit_response(response)  # no-op when getPixels committed already
        return response

    async def _get_pixels(self, request: web.Request, name: str,
                          call: _Call) -> web.StreamResponse:
        record = call.record
        asset = self._asset(name)
        body = await json_body(request, _BODY_FIELDS)
        record["workload_tag"] = body.get("workloadTag")
        band_ids = _band_ids(body.get("bandIds"), asset)
        # _band_ids has refused ids the asset lacks: every index is found.
        band_indexes = [i for b in band_ids if (i := asset.band_index(b)) is not None]
        dtypes = [asset.bands[i].dtype for i in band_indexes]
        file_format = body.get("fileFormat") or "AUTO_JPEG_PNG"
        if not isinstance(file_format, str):
            raise ApiError(400, f"Invalid fileFormat: {file_format!r}.")
        file_format = file_format.upper()
        visualization = body.get("visualizationOptions")
        record.update(bands=band_ids, format=file_format)
        check_format(file_format, dtypes, visualization)
        grid = resolve_grid(body.get("grid"), body.get("region"), asset)
        _describe_window(record, grid)
        record["request_size"] = size = check_request_limits(
            grid.width, grid.height, dtypes, self.config.max_request_bytes)
        if file_format == "NPY" and len(set(band_ids)) != len(band_ids):
            raise ApiError(400, f"NPY needs distinct band ids, got {band_ids}.")

        config = self.config
        rng = request_rng(config.seed, self._pixel_calls)
        self._pixel_calls += 1
        record["fault"] = fault = draw_fault(config.faults, rng)
        if fault is not None and (error := fault_error(fault, config.faults, rng)) is not None:
            raise error
        service_s = service_seconds(config, size, rng)

        loop = asyncio.get_running_loop()
        started = loop.time()
        # Pixels and encoding off the loop, so many calls are served at once.
        payload, content_type = await asyncio.to_thread(
            _render, asset, band_indexes, band_ids, grid, file_format, visualization)
        remaining = service_s - (loop.time() - started)
        if remaining > 0:
            await asyncio.sleep(remaining)
        return await send_payload(request, payload, content_type, fault, config.faults,
                                  call.commit)


def _render(asset: Asset, band_indexes: list[int], band_ids: list[str], grid: OutputGrid,
            file_format: str, visualization: Any) -> tuple[bytes, str]:
    arrays, fully_inside = read_grid(asset, band_indexes, grid)
    return encode(file_format, band_ids, arrays, grid.crs, grid.transform, visualization,
                  fully_inside)


def _band_ids(requested: Any, asset: Asset) -> list[str]:
    if not requested:
        return [b.id for b in asset.bands]
    if not isinstance(requested, list) or not all(isinstance(b, str) for b in requested):
        raise ApiError(400, "Invalid bandIds: expected a list of strings.")
    for band_id in requested:
        if asset.band_index(band_id) is None:
            available = [b.id for b in asset.bands]
            raise ApiError(400, f"Image.select: Pattern '{band_id}' did not match any bands. "
                                f"Available bands: {available}.")
    return list(requested)


def _describe_window(record: dict[str, Any], grid: OutputGrid) -> None:
    epsg = grid.crs.to_epsg()
    record.update(
        crs=f"EPSG:{epsg}" if epsg is not None else grid.crs.to_wkt(),
        affine=list(grid.transform)[:6],
        width=grid.width,
        height=grid.height,
    )
    if grid.native_offset is not None:
        record["col_off"], record["row_off"] = grid.native_offset


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@contextlib.asynccontextmanager
async def run_emulator(config: EmulatorConfig) -> AsyncIterator[Emulator]:
    """Serve ``config`` on ``config.host``:``config.port`` (0: any free port) while inside."""
    emulator = Emulator(config)
    # A short shutdown: stalled or paced responses must not hold up the exit.
    runner = web.AppRunner(emulator.build_app(), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port)
        await site.start()
        port = runner.addresses[0][1]
        emulator.url = _url(config.host, port)
        yield emulator
    finally:
        await runner.cleanup()


@contextlib.contextmanager
def emulator_in_thread(config: EmulatorConfig) -> Iterator[Emulator]:
    """The emulator on its own event loop in a background thread, for blocking clients
    (GDAL, earthengine-api) used from synchronous code."""
    ready: dict[str, Any] = {}
    started = threading.Event()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def serve() -> None:
        try:
            async with run_emulator(config) as emulator:
                ready["emulator"] = emulator
                started.set()
                await stop.wait()
        except Exception as exc:  # handed to the caller's thread, raised there
            ready["error"] = exc
            started.set()

    def run_loop() -> None:
        try:
            loop.run_until_complete(serve())
        finally:
            # As asyncio.run does: handlers still running when the server stops (a client
            # that went away mid-answer) are cancelled and awaited, not destroyed pending.
            leftover = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in leftover:
                task.cancel()
            if leftover:
                loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())

    thread = threading.Thread(target=run_loop, name="bulkpix-emulator", daemon=True)
    thread.start()
    started.wait()
    try:
        if "error" in ready:
            raise ready["error"]
        yield ready["emulator"]
    finally:
        if thread.is_alive():
            loop.call_soon_threadsafe(stop.set)
        thread.join()
        loop.close()
