"""EEClient: the one place where aiohttp exceptions and HTTP statuses become bulkpix errors.

Every call runs inside ``governor.slot()`` (so 429s steer the concurrency limit). Nothing a
server sends can take more memory or time than a correct answer could: bodies are read up to
the most a correct answer can be (``BadPayload`` past it, decided from Content-Length before
reading when possible), identity encoding is asked for (and a compressed body is decompressed
only up to the same bound), error bodies are read up to 64 KiB, Retry-After is capped at
``max_wait_s``, and server text is stripped of control characters (``errors.printable``).

Messages name the operation, the asset, the status and the server's own message, and never
carry request headers: aiohttp's ``request_info`` holds the
``Authorization`` header, so no aiohttp exception is chained or quoted beyond its class
name and text, and any echo of the token is scrubbed.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import json
import math
import urllib.parse
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from bulkpix import __version__
from bulkpix.ee.auth import TokenProvider, is_loopback_host
from bulkpix.errors import (
    BadMetadata,
    BadPayload,
    ComputationLimited,
    JobError,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    RemoteError,
    RequestInvalid,
    RequestTooLarge,
    ServerError,
    TooManyBands,
    TransportError,
    Unauthenticated,
    printable,
)
from bulkpix.limits import MAX_REQUEST_BYTES
from bulkpix.transfer.limits import GovernorLike

__all__ = [
    "MAX_ERROR_BYTES",
    "MAX_METADATA_BYTES",
    "MAX_PIXELS_BYTES",
    "EEClient",
    "RequestTimeouts",
    "ResponseBody",
    "is_loopback_host",
    "parse_retry_after",
]

_USER_AGENT = f"bulkpix/{__version__}"
_MAX_MESSAGE = 300
# The service's 400s for its limits (EE_API.md, "Limits"). Only these split a tile, and each
# along the axis that helps: smaller windows for size and dimensions, fewer bands for the
# band count. Any other "must be less than or equal to" is a plain invalid request.
_SIZE_LIMIT_HINTS = ("total request size", "grid dimensions", "pixels on each side")
_BAND_LIMIT_HINTS = ("number of bands",)
# A computation that cost too much: not a transport fault, so never retried unchanged; the
# tile is split instead (EE_API.md, "Computed images").
_COMPUTATION_LIMIT_HINTS = ("user memory limit exceeded", "computation timed out",
                            "too many concurrent aggregations")
_COMPUTATIONS = ("computePixels", "value:compute")
QUOTA_STATUS_HEADER = "x-earth-engine-quota-status"
# The most any getPixels answer can be: the service's request-size limit (which counts more
# bytes per pixel than the payload holds) plus room for a GeoTIFF's tags. Callers that know
# the request pass a tighter bound.
MAX_PIXELS_BYTES = MAX_REQUEST_BYTES + (4 << 20)
# Asset metadata is a few KB; a million bands' worth of properties would still fit.
MAX_METADATA_BYTES = 32 << 20
# An error's text: enough for any google.rpc.Status, never a body-sized buffer.
MAX_ERROR_BYTES = 64 << 10
# The longest wait a server's Retry-After may impose unless the caller says otherwise.
DEFAULT_MAX_WAIT_S = 300.0
_DECOMPRESSORS = {
    "gzip": 16 + zlib.MAX_WBITS,
    "x-gzip": 16 + zlib.MAX_WBITS,
    "deflate": 32 + zlib.MAX_WBITS,  # zlib or gzip header, whichever arrives
}
_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientError,  # connection, payload, disconnect, malformed response, ...
    asyncio.TimeoutError,
    OSError,  # ConnectionResetError and friends
)


@dataclass(frozen=True, slots=True)
class RequestTimeouts:
    """The job's ``timeouts:`` section, field for field, in seconds
    (``RequestTimeouts(**job.timeouts.model_dump())``).

    ``read`` bounds the silence between two reads, so a stalled body fails in seconds even
    though a whole response may take minutes (``total``)."""

    connect: float = 10.0
    read: float = 60.0
    total: float = 300.0

    def to_aiohttp(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=self.total, sock_connect=self.connect, sock_read=self.read
        )


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP-date; None if absent/bad."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


class _TokenRejected(Exception):
    """Internal: a 401 that deserves one token refresh and one more try."""


class EEClient:
    """Async context manager owning one aiohttp session for a run."""

    def __init__(
        self,
        base_url: str,
        *,
        auth: TokenProvider,
        governor: GovernorLike,
        project: str | None = None,
        api_version: str = "v1",
        timeouts: RequestTimeouts = RequestTimeouts(),
        pool_size: int = 40,
        max_wait_s: float = DEFAULT_MAX_WAIT_S,
    ) -> None:
        url = URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise JobError(f"endpoint must be an http(s) URL, got {base_url!r}")
        if url.scheme == "http" and auth.has_credentials and not is_loopback_host(url.host):
            raise JobError(
                f"refusing to send credentials over plain HTTP to {url.host}; "
                "use https (plain HTTP is only allowed to localhost)"
            )
        if pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {pool_size}")
        self.base_url = str(url).rstrip("/")
        self.auth = auth
        self.governor = governor
        self.project = project
        self.api_version = api_version.strip("/")
        self.timeouts = timeouts
        self.pool_size = pool_size
        self.max_wait_s = max_wait_s
        self._session: aiohttp.ClientSession | None = None
        # Called with the x-earth-engine-quota-status header of any answer that has one.
        self.on_quota_status: Callable[[str], None] | None = None

    async def __aenter__(self) -> EEClient:
        connector = aiohttp.TCPConnector(limit=self.pool_size, limit_per_host=self.pool_size)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self.timeouts.to_aiohttp(),
            raise_for_status=False,
            # Bodies are decompressed here, with a bound, if a server ignores our identity.
            auto_decompress=False,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- API -----------------------------------------------------------------------------
    async def get_asset(self, name: str) -> dict[str, Any]:
        """Asset metadata: ``GET {base}/{version}/{name}``.

        JSON the decoder cannot take in (nested past Python's recursion limit, say) is
        ``BadMetadata``: the service's answer, not the network, is at fault.
        """
        async with self._stream("GET", "get asset", name, f"/{name}", None, MAX_METADATA_BYTES) as (
            response
        ):
            payload = await response.read()
        where = f"get asset {name}"
        try:
            asset = json.loads(payload)
        except RecursionError:
            raise BadMetadata(f"{where}: the service's answer nests too deep", status=200) from None
        except ValueError:
            raise BadPayload(f"{where}: response is not JSON", status=200) from None
        if not isinstance(asset, dict):
            raise BadMetadata(f"{where}: the service's answer is not a JSON object", status=200)
        return asset

    async def list_images_page(
        self, parent: str, query: dict[str, str], *, method: str = "listImages"
    ) -> dict[str, Any]:
        """One page of ``GET {base}/v1alpha/{parent}:listImages?...`` (or ``listAssets`` on the
        client's version): the JSON answer, checked to be an object with a list of images."""
        version = "v1alpha" if method == "listImages" else None
        key = "images" if method == "listImages" else "assets"
        path = f"/{parent}:{method}?{urllib.parse.urlencode(query, quote_via=urllib.parse.quote)}"
        async with self._stream(
            "GET", method, parent, path, None, MAX_METADATA_BYTES, version=version
        ) as response:
            payload = await response.read()
        where = f"{method} {parent}"
        try:
            page = json.loads(payload)
        except (ValueError, RecursionError):
            raise BadPayload(f"{where}: response is not JSON", status=200) from None
        if not isinstance(page, dict) or not isinstance(page.get(key, []), list):
            raise BadMetadata(f"{where}: the answer holds no list of {key}", status=200)
        token = page.get("nextPageToken")
        if token is not None and not isinstance(token, str):
            raise BadMetadata(f"{where}: the nextPageToken is not a string", status=200)
        return {"images": page.get(key, []), "nextPageToken": token or None}

    async def list_images(
        self,
        parent: str,
        *,
        start: str | None = None,
        end: str | None = None,
        region: dict[str, Any] | None = None,
        filter: str | None = None,
        page_size: int = 1000,
        call: Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]] | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Every image of a collection that ``listImages`` selects, page after page.

        ``call`` wraps each page's request (the run's retry loop); every request goes through
        the governor like any other. ``start`` is inclusive and ``end`` exclusive (RFC 3339);
        ``region`` is a GeoJSON geometry in lon/lat.
        """
        query: dict[str, str] = {"pageSize": str(page_size), "view": "FULL"}
        if start:
            query["startTime"] = start
        if end:
            query["endTime"] = end
        if region is not None:
            query["region"] = json.dumps(region, separators=(",", ":"))
        if filter:
            query["filter"] = filter
        seen: set[str] = set()
        while True:
            fetch = functools.partial(self.list_images_page, parent, dict(query))
            page = await (call(fetch) if call is not None else fetch())
            for image in page["images"]:
                if isinstance(image, dict):
                    yield image
            token = page["nextPageToken"]
            if token is None:
                return
            if token in seen:  # a server that hands out the same page again: stop, not loop
                raise BadMetadata(f"listImages {parent}: the listing repeats a page", status=200)
            seen.add(token)
            query["pageToken"] = token

    async def get_pixels(
        self, name: str, body: dict[str, Any], *, max_bytes: int | None = None
    ) -> bytes | bytearray:
        """``POST {base}/{version}/{name}:getPixels``; the raw response bytes.

        The body is read only up to ``max_bytes`` (default: the most any getPixels answer can
        be); a larger one is ``BadPayload``.
        """
        async with self.stream_pixels(name, body, max_bytes=max_bytes) as response:
            return await response.read()

    def stream_pixels(
        self, name: str, body: dict[str, Any], *, max_bytes: int | None = None
    ) -> contextlib.AbstractAsyncContextManager[ResponseBody]:
        """``getPixels`` as a stream, like httpx's ``stream()``: the block is entered once a
        successful response's headers are in, and its body is read only when the block asks
        (``await response.read()``). The caller can wait for memory first, while the body
        waits in the socket and on the server. Errors are raised before the block runs.
        """
        return self._stream(
            "POST",
            "getPixels",
            name,
            f"/{name}:getPixels",
            body,
            MAX_PIXELS_BYTES if max_bytes is None else max_bytes,
        )

    async def compute_value(self, expression: dict[str, Any]) -> Any:
        """``POST {base}/{version}/projects/{project}/value:compute``: the ``result``."""
        name = self._project_name("value:compute")
        async with self._stream("POST", "value:compute", name, f"/{name}/value:compute",
                                {"expression": expression}, MAX_METADATA_BYTES) as response:
            payload = await response.read()
        try:
            answer = json.loads(payload)
        except (ValueError, RecursionError):
            raise BadPayload(f"value:compute {name}: response is not JSON", status=200) from None
        if not isinstance(answer, dict) or "result" not in answer:
            raise BadMetadata(f"value:compute {name}: the answer holds no result", status=200)
        return answer["result"]

    def stream_computed(
        self, body: dict[str, Any], *, max_bytes: int | None = None
    ) -> contextlib.AbstractAsyncContextManager[ResponseBody]:
        """``image:computePixels`` as a stream, as ``stream_pixels`` (the body carries the
        expression)."""
        name = self._project_name("computePixels")
        return self._stream(
            "POST", "computePixels", name, f"/{name}/image:computePixels", body,
            MAX_PIXELS_BYTES if max_bytes is None else max_bytes,
        )

    def _project_name(self, operation: str) -> str:
        if not self.project:
            raise JobError(f"{operation} needs a project (key 'project')")
        return f"projects/{self.project}"

    # -- internals -----------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _stream(
        self,
        method: str,
        operation: str,
        name: str,
        path: str,
        body: Any,
        max_bytes: int,
        *,
        version: str | None = None,
    ) -> AsyncIterator[ResponseBody]:
        url = f"{self.base_url}/{version or self.api_version}{path}"
        for may_refresh in (True, False):
            try:
                async with self._open(
                    method, operation, name, url, body, max_bytes=max_bytes, may_refresh=may_refresh
                ) as response:
                    yield response
                return
            except _TokenRejected:
                await self.auth.refresh()

    @contextlib.asynccontextmanager
    async def _open(
        self,
        method: str,
        operation: str,
        name: str,
        url: str,
        body: Any,
        *,
        max_bytes: int,
        may_refresh: bool,
    ) -> AsyncIterator[ResponseBody]:
        if self._session is None:
            raise RuntimeError("EEClient must be used as 'async with EEClient(...) as client'")
        # Headers first: a token refresh must not hold a quota slot.
        auth_headers = await self.auth.headers()
        secrets = [v for k, v in auth_headers.items() if k.lower() == "authorization"]
        secrets += [v.split(" ", 1)[-1] for v in secrets]  # the bare token too
        # Identity: a compressed body could expand past any bound before we saw its size.
        headers = {**auth_headers, "User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
        if self.project:
            headers["X-Goog-User-Project"] = self.project
        where = f"{operation} {name}"

        async with self.governor.slot():
            # Errors are raised after the except blocks, not inside them: `from None` would
            # still keep aiohttp's exception as __context__, and its request_info holds the
            # Authorization header.
            problem: RemoteError | None = None
            try:
                response = await self._session.request(
                    method, url, json=body, headers=headers, allow_redirects=False
                )
            except aiohttp.InvalidURL:
                problem = RequestInvalid(f"{where}: invalid URL")
            except _TRANSPORT_ERRORS as exc:
                problem = TransportError(_scrub(f"{where}: {_describe(exc)}", secrets))
            if problem is not None:
                raise problem
            stream = ResponseBody(response, where, secrets, max_bytes, self.max_wait_s)
            quota_status = response.headers.get(QUOTA_STATUS_HEADER)
            if quota_status is not None and self.on_quota_status is not None:
                self.on_quota_status(printable(quota_status, limit=200))
            try:
                if not 200 <= response.status < 300:
                    payload = await stream.read_capped(MAX_ERROR_BYTES)
                    if response.status == 401 and may_refresh and self.auth.has_credentials:
                        raise _TokenRejected
                    raise _status_error(
                        response.status, payload, response.headers, where, secrets,
                        self.max_wait_s, computing=operation in _COMPUTATIONS,
                    )
                yield stream
            finally:
                stream.close()


def _uninitialised(size: int) -> memoryview:
    # numpy leaves a fresh buffer as the allocator hands it over: bytearray(n) zero-fills
    # all n bytes just before the body overwrites them (about 0.7 ms of CPU for 9 MB).
    import numpy as np

    return np.empty(size, dtype=np.uint8).data


class ResponseBody:
    """A successful response whose body is read on demand, at most ``max_bytes`` of it."""

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        where: str,
        secrets: list[str],
        max_bytes: int,
        max_wait_s: float,
    ) -> None:
        self._response = response
        self._where = where
        self._secrets = secrets
        self.max_bytes = max_bytes
        self._complete = False
        self._max_wait_s = max_wait_s

    @property
    def status(self) -> int:
        return self._response.status

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        return self._response.headers

    async def read(self) -> bytearray:
        """The whole body; ``BadPayload`` as soon as it is known to exceed ``max_bytes``
        (from Content-Length, before anything is read, or while reading)."""
        return await self._read(bytearray)

    async def read_pixels(self) -> bytearray | memoryview:
        """``read()`` for a pixel body, into a buffer that is not zero-filled first (numpy's
        allocator: no memset, huge pages): a writable byte view, or a bytearray when the
        length is not declared or the body arrives compressed."""
        return await self._read(_uninitialised)

    async def read_into(self, sink: Callable[[bytes | bytearray], object]) -> int:
        """Pass the body to ``sink`` as its pieces arrive (a decoder that needs no buffer
        for the whole body); the number of bytes. Bounded and checked as ``read()``."""
        coding = self._coding()
        if coding == "identity":
            filled = await self._feed_identity(sink)
        else:
            body = await self._read_decompressed(coding)
            sink(body)
            filled = len(body)
        self._complete = True
        return filled

    async def _read(self, allocate: Callable[[int], bytearray | memoryview]) -> Any:
        coding = self._coding()
        if coding == "identity":
            body = await self._read_identity(allocate)
        else:
            body = await self._read_decompressed(coding)
        self._complete = True
        return body

    def _coding(self) -> str:
        """The body's Content-Encoding, once checked: a declared length over the bound, or
        a coding this client cannot undo, is refused before anything is read."""
        headers = self._response.headers
        coding = headers.get("Content-Encoding", "identity").strip().lower() or "identity"
        declared = _declared_length(headers)
        if coding == "identity" and declared is not None and declared > self.max_bytes:
            raise BadPayload(
                f"{self._where}: the response declares {declared:,} bytes, more than the "
                f"{self.max_bytes:,} a correct answer can be",
                status=self.status,
            )
        if coding != "identity" and coding not in _DECOMPRESSORS:
            raise BadPayload(
                f"{self._where}: unsupported Content-Encoding {printable(coding, limit=40)!r}",
                status=self.status,
            )
        return coding

    async def read_capped(self, limit: int) -> bytes:
        """At most ``limit`` bytes of the body (an error's text): the rest is never read."""
        collected = bytearray()
        problem: RemoteError | None = None
        try:
            while len(collected) < limit:
                piece = await self._response.content.read(limit - len(collected))
                if not piece:
                    self._complete = True
                    break
                collected += piece
        except _TRANSPORT_ERRORS as exc:  # an error whose text did not arrive: keep what did
            problem = TransportError(_scrub(f"{self._where}: {_describe(exc)}", self._secrets))
        if problem is not None and not collected:
            raise problem
        return bytes(collected)

    def close(self) -> None:
        # An unread or partly read body: drop the connection rather than drain it (it may
        # be 10**12 bytes long).
        if self._complete:
            self._response.release()
        else:
            self._response.close()

    async def _pieces(self) -> AsyncIterator[bytes]:
        problem: RemoteError | None = None
        iterator = self._response.content.iter_any().__aiter__()
        while True:
            try:
                piece = await iterator.__anext__()
            except StopAsyncIteration:
                return
            except _TRANSPORT_ERRORS as exc:
                problem = TransportError(
                    _scrub(f"{self._where}: {_describe(exc)}", self._secrets), status=200
                )
            if problem is not None:
                raise problem
            yield piece

    async def _feed_identity(self, sink: Callable[[bytes | bytearray], object]) -> int:
        """Each piece of an identity body to ``sink``, never past the declared length or
        ``max_bytes``; the number of bytes, which is the declared length if one was."""
        declared = _declared_length(self._response.headers)
        filled = 0
        async for piece in self._pieces():
            end = filled + len(piece)
            if end > self.max_bytes or (declared is not None and end > declared):
                raise BadPayload(
                    f"{self._where}: the response runs past "
                    f"{min(self.max_bytes, declared or self.max_bytes):,} bytes",
                    status=self.status,
                )
            sink(piece)
            filled = end
        if declared is not None and filled < declared:
            raise TransportError(
                f"{self._where}: body cut short ({filled} of {declared} bytes)", status=200
            )
        return filled

    async def _read_identity(
        self, allocate: Callable[[int], bytearray | memoryview]
    ) -> bytearray | memoryview:
        # One buffer of the declared length (already bounded): response.read() would gather
        # pieces and join them, briefly taking twice the body's size.
        declared = _declared_length(self._response.headers)
        if declared is None:
            grown = bytearray()
            await self._feed_identity(grown.extend)
            return grown
        buffer = allocate(declared)
        # Pieces are copied in through a memoryview: assigning bytes to a bytearray slice
        # first copies them into a temporary bytearray (a second copy of every body).
        with memoryview(buffer) as view:
            filled = 0

            def copy_in(piece: bytes | bytearray) -> None:
                nonlocal filled
                view[filled : filled + len(piece)] = piece
                filled += len(piece)

            await self._feed_identity(copy_in)
        return buffer

    async def _read_decompressed(self, coding: str) -> bytearray:
        # Asked for identity and got a coding anyway: decompress, never past the bound
        # (max_length caps each step's output; the rest stays in unconsumed_tail).
        decompressor = zlib.decompressobj(_DECOMPRESSORS[coding])
        out = bytearray()
        room = self.max_bytes
        async for piece in self._pieces():
            data = piece
            while data:
                try:
                    chunk = decompressor.decompress(data, room + 1)
                except zlib.error as exc:
                    raise BadPayload(
                        f"{self._where}: corrupt {coding} body: {exc}", status=self.status
                    ) from None
                if len(chunk) > room:
                    raise BadPayload(
                        f"{self._where}: the {coding} body expands past the "
                        f"{self.max_bytes:,} bytes a correct answer can be",
                        status=self.status,
                    )
                out += chunk
                room -= len(chunk)
                data = decompressor.unconsumed_tail
                if decompressor.eof:
                    break
        if not decompressor.eof:
            raise TransportError(f"{self._where}: {coding} body cut short", status=200)
        return out


def _declared_length(headers: CIMultiDictProxy[str]) -> int | None:
    declared = headers.get("Content-Length")
    if declared is None or not declared.strip().isdigit():
        return None
    return int(declared)


def _status_error(
    status: int,
    payload: bytes | bytearray,
    headers: CIMultiDictProxy[str],
    where: str,
    secrets: list[str],
    max_wait_s: float = DEFAULT_MAX_WAIT_S,
    *,
    computing: bool = False,
) -> RemoteError:
    """The error for a status. ``computing``: the call computes (computePixels,
    value:compute), so the service's computation limits are ``ComputationLimited``."""
    rpc_status, server_message = _parse_rpc_status(payload)
    label = f"HTTP {status} {rpc_status}" if rpc_status else f"HTTP {status}"
    message = _scrub(
        f"{where}: {label}: {server_message}" if server_message else f"{where}: {label}", secrets
    )
    asked = parse_retry_after(headers.get("Retry-After"))
    retry_after = asked if asked is None else min(asked, max_wait_s)
    asked_wait = asked if asked is not None and asked > max_wait_s else None
    cls: type[RemoteError]
    if status == 400 and computing and _is_computation_limit(server_message):
        cls = ComputationLimited
    elif status == 400:
        cls = _classify_400(server_message)
    elif status == 401:
        cls = Unauthenticated
    elif status == 403:
        cls = PermissionDenied
    elif status == 404:
        cls = NotFound
    elif status == 429 and computing and _is_computation_limit(server_message):
        cls = ComputationLimited
    elif status == 429:
        cls = QuotaExceeded
    elif status >= 500:
        cls = ServerError
    else:  # other 4xx, and 1xx/3xx we never asked for (redirects are not followed)
        cls = RequestInvalid
    return cls(message, status=status, retry_after=retry_after, asked_wait=asked_wait)


def _is_computation_limit(server_message: str) -> bool:
    lowered = server_message.lower()
    return any(hint in lowered for hint in _COMPUTATION_LIMIT_HINTS)


def _classify_400(server_message: str) -> type[RequestInvalid]:
    lowered = server_message.lower()
    if any(hint in lowered for hint in _BAND_LIMIT_HINTS):
        return TooManyBands
    if any(hint in lowered for hint in _SIZE_LIMIT_HINTS):
        return RequestTooLarge
    return RequestInvalid


def _parse_rpc_status(payload: bytes | bytearray) -> tuple[str, str]:
    """(status, message) of a google.rpc.Status body; tolerate anything else."""
    text = payload.decode("utf-8", errors="replace")
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested too deep to be an rpc status
        document = None
    if isinstance(document, dict) and isinstance(document.get("error"), dict):
        error = document["error"]
        return str(error.get("status") or ""), _one_line(str(error.get("message") or ""))
    return "", _one_line(text)


def _one_line(text: str) -> str:
    # Server text: no terminal escapes, one line, bounded.
    return printable(" ".join(printable(text).split()), limit=_MAX_MESSAGE)


def _describe(exc: BaseException) -> str:
    # Class name and text only: repr() of aiohttp's response errors includes request_info,
    # whose headers carry the Authorization token.
    if isinstance(exc, aiohttp.ClientResponseError):
        text = f"status {exc.status}, {exc.message}"
    elif isinstance(exc, asyncio.TimeoutError) and not str(exc):
        text = "timed out"
    else:
        text = str(exc)
    return _one_line(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<redacted>")
    return text
