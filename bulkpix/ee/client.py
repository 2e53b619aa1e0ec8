"""EEClient: the one place where aiohttp exceptions and HTTP statuses become bulkpix errors.

Every call runs inside ``governor.slot()`` (so 429s steer the concurrency limit) and reads
the whole body. Messages name the operation, the asset, the status and the server's own
message, and never carry request headers: aiohttp's ``request_info`` holds the
``Authorization`` header, so no aiohttp exception is chained or quoted beyond its class
name and text, and any echo of the token is scrubbed.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
from collections.abc import Awaitable, Callable
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
    BadPayload,
    JobError,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    RemoteError,
    RequestInvalid,
    RequestTooLarge,
    ServerError,
    TransportError,
    Unauthenticated,
)
from bulkpix.transfer.limits import Governor

__all__ = ["EEClient", "Timeouts", "is_loopback_host", "parse_retry_after"]

_USER_AGENT = f"bulkpix/{__version__}"
_MAX_MESSAGE = 300
# Phrases of the service's 400 for an oversized request: the tile must be split.
_TOO_LARGE_HINTS = ("total request size", "must be less than or equal to")
_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientError,  # connection, payload, disconnect, malformed response, ...
    asyncio.TimeoutError,
    OSError,  # ConnectionResetError and friends
)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """``read_s`` bounds the silence between two reads, so a stalled body fails in seconds
    even though a whole response may take minutes (``total_s``)."""

    connect_s: float = 10.0
    read_s: float = 60.0
    total_s: float = 300.0

    def to_aiohttp(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=self.total_s, sock_connect=self.connect_s, sock_read=self.read_s
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
        governor: Governor,
        project: str | None = None,
        api_version: str = "v1",
        timeouts: Timeouts = Timeouts(),
        pool_size: int = 40,
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
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> EEClient:
        connector = aiohttp.TCPConnector(limit=self.pool_size, limit_per_host=self.pool_size)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self.timeouts.to_aiohttp(), raise_for_status=False
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
        """Asset metadata: ``GET {base}/{version}/{name}``."""
        payload = await self._call("GET", "get asset", name, f"/{name}")
        try:
            asset = json.loads(payload)
        except ValueError:
            raise BadPayload(f"get asset {name}: response is not JSON", status=200) from None
        if not isinstance(asset, dict):
            raise BadPayload(f"get asset {name}: response is not a JSON object", status=200)
        return asset

    async def get_pixels(
        self,
        name: str,
        body: dict[str, Any],
        *,
        before_body: Callable[[], Awaitable[None]] | None = None,
    ) -> bytes | bytearray:
        """``POST {base}/{version}/{name}:getPixels``; the raw response bytes.

        ``before_body`` is awaited once a successful response's headers are in and before its
        body is read: the caller's memory budget can hold the body back (in the socket and on
        the server) until there is room for it.
        """
        return await self._call(
            "POST", "getPixels", name, f"/{name}:getPixels", body, before_body=before_body
        )

    # -- internals -----------------------------------------------------------------------
    async def _call(
        self,
        method: str,
        operation: str,
        name: str,
        path: str,
        body: Any = None,
        *,
        before_body: Callable[[], Awaitable[None]] | None = None,
    ) -> bytes | bytearray:
        url = f"{self.base_url}/{self.api_version}{path}"
        try:
            return await self._send(
                method, operation, name, url, body, may_refresh=True, before_body=before_body
            )
        except _TokenRejected:
            pass
        await self.auth.refresh()
        return await self._send(
            method, operation, name, url, body, may_refresh=False, before_body=before_body
        )

    async def _send(
        self,
        method: str,
        operation: str,
        name: str,
        url: str,
        body: Any,
        *,
        may_refresh: bool,
        before_body: Callable[[], Awaitable[None]] | None = None,
    ) -> bytes | bytearray:
        if self._session is None:
            raise RuntimeError("EEClient must be used as 'async with EEClient(...) as client'")
        # Headers first: a token refresh must not hold a quota slot.
        auth_headers = await self.auth.headers()
        secrets = [v for k, v in auth_headers.items() if k.lower() == "authorization"]
        secrets += [v.split(" ", 1)[-1] for v in secrets]  # the bare token too
        headers = {**auth_headers, "User-Agent": _USER_AGENT}
        if self.project:
            headers["X-Goog-User-Project"] = self.project
        where = f"{operation} {name}"

        async with self.governor.slot():
            # Errors are raised after the except blocks, not inside them: `from None` would
            # still keep aiohttp's exception as __context__, and its request_info holds the
            # Authorization header.
            problem: RemoteError | None = None
            try:
                async with self._session.request(
                    method, url, json=body, headers=headers, allow_redirects=False
                ) as response:
                    if 200 <= response.status < 300:
                        if before_body is not None:
                            await before_body()
                        payload = await _read_body(response)
                    else:
                        payload = await response.read()
                    status = response.status
                    response_headers = response.headers
            except aiohttp.InvalidURL:
                problem = RequestInvalid(f"{where}: invalid URL")
            except _TRANSPORT_ERRORS as exc:
                problem = TransportError(_scrub(f"{where}: {_describe(exc)}", secrets))
            if problem is not None:
                raise problem

            if 200 <= status < 300:
                _check_length(payload, response_headers, where)
                return payload
            if status == 401 and may_refresh and self.auth.has_credentials:
                raise _TokenRejected
            raise _status_error(status, payload, response_headers, where, secrets)


async def _read_body(response: aiohttp.ClientResponse) -> bytes | bytearray:
    """The body, read straight into one buffer of its declared length.

    ``response.read()`` gathers the pieces and joins them, so a large body briefly takes
    twice its size; bodies are tens of MB, and many may arrive at once.
    """
    declared = response.content_length
    if declared is None or response.headers.get("Content-Encoding", "identity") != "identity":
        return await response.read()
    buffer = bytearray(declared)
    view = memoryview(buffer)
    filled = 0
    async for piece in response.content.iter_any():
        end = min(filled + len(piece), declared)
        view[filled:end] = piece[: end - filled]
        filled = end
    view.release()
    if filled < declared:
        del buffer[filled:]  # cut short: _check_length names it
    return buffer


def _check_length(payload: bytes | bytearray, headers: CIMultiDictProxy[str], where: str) -> None:
    # With a content coding, Content-Length counts the encoded bytes, not what read() gave.
    if headers.get("Content-Encoding", "identity").lower() != "identity":
        return
    declared = headers.get("Content-Length")
    if declared is None or not declared.isdigit():
        return
    if len(payload) != int(declared):
        raise TransportError(
            f"{where}: body cut short ({len(payload)} of {declared} bytes)", status=200
        )


def _status_error(
    status: int,
    payload: bytes | bytearray,
    headers: CIMultiDictProxy[str],
    where: str,
    secrets: list[str],
) -> RemoteError:
    rpc_status, server_message = _parse_rpc_status(payload)
    label = f"HTTP {status} {rpc_status}" if rpc_status else f"HTTP {status}"
    message = _scrub(
        f"{where}: {label}: {server_message}" if server_message else f"{where}: {label}", secrets
    )
    retry_after = parse_retry_after(headers.get("Retry-After"))
    cls: type[RemoteError]
    if status == 400:
        lowered = server_message.lower()
        cls = RequestTooLarge if any(h in lowered for h in _TOO_LARGE_HINTS) else RequestInvalid
    elif status == 401:
        cls = Unauthenticated
    elif status == 403:
        cls = PermissionDenied
    elif status == 404:
        cls = NotFound
    elif status == 429:
        cls = QuotaExceeded
    elif status >= 500:
        cls = ServerError
    else:  # other 4xx, and 1xx/3xx we never asked for (redirects are not followed)
        cls = RequestInvalid
    return cls(message, status=status, retry_after=retry_after)


def _parse_rpc_status(payload: bytes | bytearray) -> tuple[str, str]:
    """(status, message) of a google.rpc.Status body; tolerate anything else."""
    text = payload.decode("utf-8", errors="replace")
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("error"), dict):
        error = document["error"]
        return str(error.get("status") or ""), _one_line(str(error.get("message") or ""))
    return "", _one_line(text)


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


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
