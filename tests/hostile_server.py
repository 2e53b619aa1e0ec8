"""A small aiohttp server (127.0.0.1, port 0) that misbehaves on demand.

It speaks just enough of the Earth Engine REST API for a bulkpix run: ``GET`` of an asset's
metadata and ``:getPixels`` answered with NPY pixels. Each attack of issue #9 is a mode:

* ``server.pixels = "huge_length"`` and the other names in :data:`PIXEL_MODES`;
* ``server.metadata = {...}`` (any JSON value) or ``server.metadata_raw = b"..."`` for what
  JSON cannot say (nesting 100,000 deep);
* ``server.metadata_retry_after = "86400"``: the metadata GET answers 503 with that header
  until ``metadata_failures`` have been sent.

Use it in a test's own loop (``async with HostileServer() as server``) or, for callers that
run their own loop (the CLI), on a thread (``with hostile_server_thread() as server``).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import threading
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import web

ASSET = "projects/hostile/assets/img"

# The gzip bomb: BOMB_EXPANDED bytes of zeros that travel as about 4 MB.
BOMB_EXPANDED = 4 * 2**30
_BOMB_BLOCK = 2**20

# Control sequences a hostile error message carries: clear screen, a title change, a bell,
# a hyperlink, cursor movement.
ESCAPES = "\x1b[2J\x1b]0;pwned\x07\x07\x1b]8;;http://evil/\x1b\\\x1b[1A\r"


def good_metadata(bands: int = 2, width: int = 64, height: int = 48) -> dict[str, Any]:
    """A well-formed IMAGE asset: uint16 bands on a 10 m UTM grid."""
    grid = {
        "crsCode": "EPSG:32633",
        "affineTransform": {
            "scaleX": 10.0,
            "shearX": 0.0,
            "translateX": 600000.0,
            "shearY": 0.0,
            "scaleY": -10.0,
            "translateY": 5200000.0,
        },
        "dimensions": {"width": width, "height": height},
    }
    return {
        "type": "IMAGE",
        "name": ASSET,
        "bands": [
            {
                "id": f"B{i + 1}",
                "dataType": {"precision": "INT", "range": {"max": 65535}},
                "grid": grid,
            }
            for i in range(bands)
        ],
    }


def npy_pixels(band_ids: list[str], height: int, width: int) -> bytes:
    """The NPY answer a correct server gives: a uint16 record array in which band ``B<n>``
    holds n everywhere (whichever request it came in), any other band 1."""
    dtype = np.dtype([(band_id, "<u2") for band_id in band_ids])
    records = np.zeros((height, width), dtype=dtype)
    for band_id in band_ids:
        records[band_id] = int(band_id[1:]) if band_id[1:].isdigit() else 1
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, records, allow_pickle=False)
    return buffer.getvalue()


def deeply_nested_json(depth: int = 100_000) -> bytes:
    return b'{"type": "IMAGE", "bands": ' + b"[" * depth + b"]" * depth + b"}"


def _gzip_bomb_blocks(expanded: int) -> Iterator[bytes]:
    """A gzip stream of ``expanded`` zero bytes, made block by block, never held whole.

    After a full flush the compressor starts afresh, so every 1 MiB block of zeros compresses
    to the same bytes: compress it once, send it ``expanded / 1 MiB`` times. No trailer: a
    client that reads to the end has already lost.
    """
    zeros = bytes(_BOMB_BLOCK)
    first = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    head = first.compress(zeros) + first.flush(zlib.Z_FULL_FLUSH)
    block = first.compress(zeros) + first.flush(zlib.Z_FULL_FLUSH)
    yield head
    for _ in range(expanded // _BOMB_BLOCK - 1):
        yield block


def _rpc_error(status: int, message: str, code: str = "INVALID_ARGUMENT") -> bytes:
    return json.dumps({"error": {"code": status, "message": message, "status": code}}).encode()


PIXEL_MODES = (
    "ok",  # correct NPY pixels
    "huge_length",  # 200 declaring Content-Length 10**12, then a trickle
    "gzip_bomb",  # 200, Content-Encoding gzip, 4 MB expanding to 4 GiB
    "endless",  # 200, chunked with no Content-Length, 1 GiB of zeros
    "huge_error",  # 500 whose body is 1 GiB (streamed)
    "huge_nested_error",  # 500 whose JSON body is "[" 60,000 deep
    "retry_after_day",  # 429, Retry-After: 86400
    "retry_after_1e300",  # 429, Retry-After: 1e300
    "retry_after_2099",  # 503, Retry-After: an HTTP date in 2099
    "escapes",  # 400 whose message carries ESC / BEL sequences
    "too_large_size",  # 400 "total request size ... must be less than or equal to" over a size
    "too_large_bands",  # 400 "number of bands ... must be less than or equal to 1"
)


@dataclass
class HostileServer:
    """The server's state: what it answers, what it was asked."""

    pixels: str = "ok"
    metadata: Any = field(default_factory=good_metadata)
    metadata_raw: bytes | None = None
    metadata_retry_after: str | None = None
    metadata_failures: int = 10**9
    # Requests whose pixels exceed this many get the size 400 ("too_large_size" mode).
    max_request_pixels: int = 32 * 32
    url: str = ""
    pixel_requests: list[dict[str, Any]] = field(default_factory=list)
    metadata_requests: int = 0
    request_headers: list[dict[str, str]] = field(default_factory=list)
    _runner: web.AppRunner | None = None

    # -- serving --------------------------------------------------------------------------
    async def __aenter__(self) -> HostileServer:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.request_headers.append(dict(request.headers))
        if request.method == "POST" and request.path.endswith(":getPixels"):
            body = await request.json()
            self.pixel_requests.append(body)
            return await self._pixels(request, body)
        return self._metadata()

    def _metadata(self) -> web.Response:
        self.metadata_requests += 1
        if self.metadata_retry_after is not None and self.metadata_requests <= (
            self.metadata_failures
        ):
            return web.Response(
                status=503,
                body=_rpc_error(503, "try later", "UNAVAILABLE"),
                headers={"Retry-After": self.metadata_retry_after},
                content_type="application/json",
            )
        raw = (
            self.metadata_raw
            if self.metadata_raw is not None
            else json.dumps(self.metadata).encode()
        )
        return web.Response(body=raw, content_type="application/json")

    async def _pixels(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        dims = body["grid"]["dimensions"]
        height, width = int(dims["height"]), int(dims["width"])
        bands = list(body["bandIds"])
        mode = self.pixels
        if mode == "huge_length":
            response = web.StreamResponse(status=200, headers={"Content-Length": str(10**12)})
            await response.prepare(request)
            with contextlib.suppress(ConnectionError):
                for _ in range(64):  # a trickle: a client that waits for 10**12 bytes hangs
                    await response.write(bytes(2**16))
            return response
        if mode == "gzip_bomb":
            response = web.StreamResponse(
                status=200,
                headers={"Content-Encoding": "gzip", "Content-Type": "application/octet-stream"},
            )
            response.enable_chunked_encoding()
            await response.prepare(request)
            with contextlib.suppress(ConnectionError):
                for block in _gzip_bomb_blocks(BOMB_EXPANDED):
                    await response.write(block)
            return response
        if mode == "endless":
            response = web.StreamResponse(status=200)
            response.enable_chunked_encoding()
            await response.prepare(request)
            chunk = bytes(2**16)
            with contextlib.suppress(ConnectionError):
                for _ in range(2**30 // len(chunk)):
                    await response.write(chunk)
            return response
        if mode == "huge_error":
            response = web.StreamResponse(status=500, headers={"Content-Length": str(2**30)})
            await response.prepare(request)
            chunk = b"x" * 2**16
            with contextlib.suppress(ConnectionError):
                for _ in range(2**30 // len(chunk)):
                    await response.write(chunk)
            return response
        if mode == "huge_nested_error":
            return web.Response(status=500, text="[" * 60_000, content_type="application/json")
        if mode.startswith("retry_after_"):
            value = {
                "retry_after_day": "86400",
                "retry_after_1e300": "1e300",
                "retry_after_2099": "Thu, 01 Jan 2099 00:00:00 GMT",
            }[mode]
            status = 503 if mode == "retry_after_2099" else 429
            return web.Response(
                status=status,
                body=_rpc_error(status, "slow down", "RESOURCE_EXHAUSTED"),
                headers={"Retry-After": value},
                content_type="application/json",
            )
        if mode == "escapes":
            return web.Response(
                status=400,
                body=_rpc_error(400, f"bad request{ESCAPES}really"),
                content_type="application/json",
            )
        if mode == "too_large_size" and height * width > self.max_request_pixels:
            size = height * width * 3 * len(bands)
            return web.Response(
                status=400,
                body=_rpc_error(
                    400,
                    f"Total request size ({size} bytes) must be less than or equal to "
                    f"{self.max_request_pixels * 3} bytes.",
                ),
                content_type="application/json",
            )
        if mode == "too_large_bands" and len(bands) > 1:
            return web.Response(
                status=400,
                body=_rpc_error(
                    400, f"Number of bands ({len(bands)}) must be less than or equal to 1."
                ),
                content_type="application/json",
            )
        return web.Response(
            body=npy_pixels(bands, height, width), content_type="application/octet-stream"
        )


class _ServerThread:
    def __init__(self, server: HostileServer) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with self.server:
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> HostileServer:
        self._thread.start()
        self._ready.wait(30)
        return self.server

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


@contextlib.contextmanager
def hostile_server_thread(**state: Any) -> Iterator[HostileServer]:
    """The server on its own thread and loop, for callers that run their own loop."""
    with _ServerThread(HostileServer(**state)) as server:
        yield server


@contextlib.asynccontextmanager
async def hostile_server(**state: Any) -> AsyncIterator[HostileServer]:
    async with HostileServer(**state) as server:
        yield server
