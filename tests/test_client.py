"""EEClient against small aiohttp.web servers on 127.0.0.1 (port 0), plus raw asyncio
servers for responses no well-behaved HTTP server would send."""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bulkpix.ee.auth import NoAuth, StaticToken
from bulkpix.ee.client import EEClient, RequestTimeouts, is_loopback_host, parse_retry_after
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
from tests.conftest import exception_texts

TOKEN = "ya29.SECRET-access-token-0123456789"
ASSET = "projects/p/assets/img"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeService:
    url: str = ""
    handler: Handler | None = None
    requests: list[Seen] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)  # frees stalled handlers


@pytest.fixture
async def service() -> AsyncIterator[FakeService]:
    fake = FakeService()

    async def dispatch(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        fake.requests.append(Seen(request.method, request.path, dict(request.headers), body))
        assert fake.handler is not None
        return await fake.handler(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", dispatch)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    fake.url = str(server.make_url("")).rstrip("/")
    try:
        yield fake
    finally:
        fake.release.set()
        await server.close()


def rpc_error(status: int, message: str, rpc: str, **headers: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        body = {"error": {"code": status, "message": message, "status": rpc}}
        return web.json_response(body, status=status, headers=headers)

    return handler


def make_client(url: str, **kwargs: Any) -> EEClient:
    kwargs.setdefault("auth", StaticToken(TOKEN))
    kwargs.setdefault("governor", Governor(40, qps=1000))
    return EEClient(url, **kwargs)


def assert_no_token(exc: BaseException) -> None:
    for text in exception_texts(exc):
        assert TOKEN not in text and "SECRET" not in text, f"token leaked into {text!r}"


# -- happy path and headers ---------------------------------------------------------------
async def test_get_asset_and_headers(service: FakeService) -> None:
    asset = {"type": "IMAGE", "name": ASSET, "bands": [{"id": "B1"}]}

    async def ok(request: web.Request) -> web.Response:
        return web.json_response(asset)

    service.handler = ok
    async with make_client(service.url, project="my-project") as client:
        assert await client.get_asset(ASSET) == asset
    seen = service.requests[0]
    assert (seen.method, seen.path) == ("GET", f"/v1/{ASSET}")
    assert seen.headers["Authorization"] == f"Bearer {TOKEN}"
    assert seen.headers["X-Goog-User-Project"] == "my-project"
    assert seen.headers["User-Agent"].startswith("bulkpix/")


async def test_get_pixels_posts_json_and_returns_the_raw_bytes(service: FakeService) -> None:
    payload = bytes(range(256)) * 8192  # 2 MiB

    async def pixels(request: web.Request) -> web.Response:
        return web.Response(body=payload, content_type="application/octet-stream")

    service.handler = pixels
    body = {"fileFormat": "NPY", "bandIds": ["B1"], "grid": {"dimensions": {"width": 2}}}
    async with make_client(service.url, api_version="v1alpha") as client:
        assert await client.get_pixels(ASSET, body) == payload
    seen = service.requests[0]
    assert (seen.method, seen.path) == ("POST", f"/v1alpha/{ASSET}:getPixels")
    assert json.loads(seen.body) == body
    assert seen.headers["Content-Type"].startswith("application/json")


async def test_read_pixels_fills_an_unzeroed_buffer_exactly(service: FakeService) -> None:
    payload = bytes(range(251)) * 40_000  # ~10 MB, many socket reads, no zero bytes at the end

    chunked_answers: list[bool] = [False, True]

    async def pieces(request: web.Request) -> web.StreamResponse:
        chunked = chunked_answers.pop(0)
        headers = {} if chunked else {"Content-Length": str(len(payload))}
        response = web.StreamResponse(headers=headers)
        if chunked:
            response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(payload), 1 << 20):
            await response.write(payload[start : start + (1 << 20)])
        await response.write_eof()
        return response

    service.handler = pieces
    async with make_client(service.url) as client:
        async with client.stream_pixels(ASSET, {}) as response:
            body = await response.read_pixels()
        assert isinstance(body, memoryview) and not body.readonly
        assert body.nbytes == len(payload) and body.tobytes() == payload
        # No declared length: the pieces are gathered as read() gathers them.
        async with client.stream_pixels(ASSET, {}) as response:
            gathered = await response.read_pixels()
        assert isinstance(gathered, bytearray) and gathered == payload


async def test_no_project_and_no_auth_send_no_such_headers(service: FakeService) -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({})

    service.handler = ok
    async with make_client(service.url, auth=NoAuth()) as client:
        await client.get_asset(ASSET)
    headers = service.requests[0].headers
    assert "Authorization" not in headers and "X-Goog-User-Project" not in headers


async def test_asset_that_is_not_json_is_a_bad_payload(service: FakeService) -> None:
    async def html(request: web.Request) -> web.Response:
        return web.Response(text="<html>hello</html>", content_type="text/html")

    service.handler = html
    async with make_client(service.url) as client:
        with pytest.raises(BadPayload):
            await client.get_asset(ASSET)


async def test_use_without_async_with_is_a_clear_error() -> None:
    client = make_client("http://127.0.0.1:9")
    with pytest.raises(RuntimeError, match="async with"):
        await client.get_asset(ASSET)


# -- status translation -------------------------------------------------------------------
TOO_LARGE = "Total request size (56623104 bytes) must be less than or equal to 50331648 bytes."


@pytest.mark.parametrize(
    ("status", "rpc", "message", "expected"),
    [
        (400, "INVALID_ARGUMENT", "Band 'B99' not found.", RequestInvalid),
        (400, "INVALID_ARGUMENT", TOO_LARGE, RequestTooLarge),
        (403, "PERMISSION_DENIED", "Caller does not have permission.", PermissionDenied),
        (404, "NOT_FOUND", "Asset not found.", NotFound),
        (429, "RESOURCE_EXHAUSTED", "Too many concurrent aggregations.", QuotaExceeded),
        (500, "INTERNAL", "An internal error has occurred.", ServerError),
        (502, "", "Bad gateway", ServerError),
        (503, "UNAVAILABLE", "The service is currently unavailable.", ServerError),
        (504, "DEADLINE_EXCEEDED", "Deadline exceeded.", ServerError),
        (501, "UNIMPLEMENTED", "Not implemented.", ServerError),
        (409, "ABORTED", "Conflict.", RequestInvalid),
        (418, "", "I'm a teapot", RequestInvalid),
    ],
)
async def test_status_maps_to_its_error_class(
    service: FakeService, status: int, rpc: str, message: str, expected: type[RemoteError]
) -> None:
    service.handler = rpc_error(status, message, rpc)
    async with make_client(service.url) as client:
        with pytest.raises(RemoteError) as info:
            await client.get_pixels(ASSET, {})
    exc = info.value
    assert type(exc) is expected
    assert exc.status == status
    text = str(exc)
    assert str(status) in text and message in text and ASSET in text
    if rpc:
        assert rpc in text
    assert "\n" not in text
    assert_no_token(exc)


async def test_non_json_error_bodies_are_tolerated(service: FakeService) -> None:
    async def gateway(request: web.Request) -> web.Response:
        return web.Response(status=502, text="<html><body>\n<h1>502 Bad Gateway</h1></body></html>")

    service.handler = gateway
    async with make_client(service.url) as client:
        with pytest.raises(ServerError, match="502 Bad Gateway") as info:
            await client.get_pixels(ASSET, {})
    assert info.value.status == 502


async def test_redirects_are_not_followed(service: FakeService) -> None:
    async def redirect(request: web.Request) -> web.Response:
        if request.path.startswith("/elsewhere"):
            return web.json_response({"followed": True})
        raise web.HTTPFound("/elsewhere")

    service.handler = redirect
    async with make_client(service.url) as client:
        with pytest.raises(RequestInvalid, match="302"):
            await client.get_asset(ASSET)
    assert [r.path for r in service.requests] == [f"/v1/{ASSET}"]


# -- Retry-After ---------------------------------------------------------------------------
def test_parse_retry_after() -> None:
    now = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
    later = email.utils.format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after(later, now=now) == 90.0
    assert parse_retry_after("Mon, 01 Jan 2024 11:00:00 GMT", now=now) == 0.0  # in the past
    assert parse_retry_after("-3") == 0.0
    for bad in (None, "", "soon", "nan", "inf"):
        assert parse_retry_after(bad) is None


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_seconds_and_http_date(service: FakeService, status: int) -> None:
    date = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    found: list[float | None] = []
    for headers in ({"Retry-After": "12"}, {"Retry-After": date}, {}):
        service.handler = rpc_error(status, "slow down", "X", **headers)
        # A fresh client (and Governor) each time: the governor honours the pause itself.
        async with make_client(service.url) as client:
            with pytest.raises(RemoteError) as info:
                await client.get_pixels(ASSET, {})
        found.append(info.value.retry_after)
    assert found[0] == 12.0
    assert found[1] is not None and 27 <= found[1] <= 31
    assert found[2] is None


async def test_429_reaches_the_governor(service: FakeService) -> None:
    governor = Governor(40, qps=1000)
    service.handler = rpc_error(429, "Too many", "RESOURCE_EXHAUSTED")
    async with make_client(service.url, governor=governor) as client:
        with pytest.raises(QuotaExceeded):
            await client.get_pixels(ASSET, {})
    # Refused with only itself in flight: halved, no further in one step.
    assert (governor.limit, governor.cuts, governor.throttles, governor.in_flight) == (20, 1, 1, 0)


# -- 401: refresh once, retry once ----------------------------------------------------------
class RotatingToken:
    """Hands out ``old`` until refreshed, then ``new``."""

    has_credentials = True

    def __init__(self) -> None:
        self.token = "old-" + TOKEN
        self.refreshes = 0

    async def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def refresh(self) -> None:
        self.refreshes += 1
        self.token = "new-" + TOKEN


async def test_401_refreshes_once_and_retries(service: FakeService) -> None:
    rejected = rpc_error(401, "Request had invalid credentials.", "UNAUTHENTICATED")

    async def needs_new_token(request: web.Request) -> web.StreamResponse:
        if request.headers["Authorization"] != f"Bearer new-{TOKEN}":
            return await rejected(request)
        return web.json_response({"ok": True})

    service.handler = needs_new_token
    auth = RotatingToken()
    async with make_client(service.url, auth=auth) as client:
        assert await client.get_asset(ASSET) == {"ok": True}
    assert auth.refreshes == 1
    assert [r.headers["Authorization"] for r in service.requests] == [
        f"Bearer old-{TOKEN}",
        f"Bearer new-{TOKEN}",
    ]


async def test_401_twice_is_unauthenticated(service: FakeService) -> None:
    service.handler = rpc_error(401, "Request had invalid credentials.", "UNAUTHENTICATED")
    auth = RotatingToken()
    async with make_client(service.url, auth=auth) as client:
        with pytest.raises(Unauthenticated) as info:
            await client.get_pixels(ASSET, {})
    assert auth.refreshes == 1 and len(service.requests) == 2
    assert info.value.status == 401
    assert_no_token(info.value)


async def test_401_without_credentials_is_not_retried(service: FakeService) -> None:
    service.handler = rpc_error(401, "Login required.", "UNAUTHENTICATED")
    async with make_client(service.url, auth=NoAuth()) as client:
        with pytest.raises(Unauthenticated):
            await client.get_asset(ASSET)
    assert len(service.requests) == 1


# -- transport failures ---------------------------------------------------------------------
async def test_connection_reset_before_the_response(service: FakeService) -> None:
    async def reset(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.abort()
        await service.release.wait()
        return web.Response()

    service.handler = reset
    async with make_client(service.url) as client:
        with pytest.raises(TransportError) as info:
            await client.get_pixels(ASSET, {})
    assert info.value.status == 0
    assert ASSET in str(info.value)
    assert_no_token(info.value)


async def test_short_body_is_a_transport_error(service: FakeService) -> None:
    async def short(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b"x" * 400)
        assert request.transport is not None
        request.transport.close()
        await service.release.wait()
        return response

    service.handler = short
    async with make_client(service.url) as client:
        with pytest.raises(TransportError) as info:
            await client.get_pixels(ASSET, {})
    assert_no_token(info.value)


async def test_stalled_body_times_out_quickly(service: FakeService) -> None:
    async def stall(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b"x" * 100)
        await service.release.wait()  # never sends the rest
        return response

    service.handler = stall
    timeouts = RequestTimeouts(connect=5, read=0.2, total=60)
    async with make_client(service.url, timeouts=timeouts) as client:
        started = time.monotonic()
        with pytest.raises(TransportError) as info:
            await client.get_pixels(ASSET, {})
        elapsed = time.monotonic() - started
    assert 0.2 <= elapsed < 5  # the read timeout, not the total one
    assert "Timeout" in str(info.value) or "timed out" in str(info.value)
    assert_no_token(info.value)


async def test_refused_connection_is_a_transport_error() -> None:
    # A port nobody listens on: bind one, note it, close it.
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    async with make_client(f"http://127.0.0.1:{port}") as client:
        with pytest.raises(TransportError) as info:
            await client.get_asset(ASSET)
    assert_no_token(info.value)


async def raw_server(response: bytes) -> tuple[asyncio.Server, str]:
    """A server that answers any request with these exact bytes, then closes."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(response)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10,  # cut short
        b"NOT HTTP AT ALL " + TOKEN.encode() + b"\r\n\r\n",  # malformed, echoes the token
        b"HTTP/1.1 200 OK\r\nContent-Length: banana\r\n\r\n",
    ],
    ids=["cut-short", "garbage", "bad-length"],
)
async def test_broken_responses_are_transport_errors_without_the_token(response: bytes) -> None:
    server, url = await raw_server(response)
    try:
        async with make_client(url) as client:
            with pytest.raises(TransportError) as info:
                await client.get_pixels(ASSET, {})
    finally:
        server.close()
        await server.wait_closed()
    assert_no_token(info.value)


async def test_token_echoed_by_the_server_is_scrubbed(service: FakeService) -> None:
    async def echo(request: web.Request) -> web.Response:
        message = f"bad header {request.headers['Authorization']}"
        return web.json_response(
            {"error": {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}}, status=400
        )

    service.handler = echo
    async with make_client(service.url) as client:
        with pytest.raises(RequestInvalid) as info:
            await client.get_pixels(ASSET, {})
    assert "<redacted>" in str(info.value)
    assert_no_token(info.value)


# -- connection pool -------------------------------------------------------------------------
async def test_connection_pool_limit_is_honoured(service: FakeService) -> None:
    active = peak = 0
    three_in = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        if active == 3:
            three_in.set()
        await service.release.wait()
        active -= 1
        return web.Response(body=b"ok")

    service.handler = slow
    async with make_client(service.url, governor=Governor(10, qps=1e6), pool_size=3) as client:
        connector = client._session.connector  # type: ignore[union-attr]
        assert (connector.limit, connector.limit_per_host) == (3, 3)  # type: ignore[union-attr]
        calls = [asyncio.create_task(client.get_pixels(ASSET, {})) for _ in range(10)]
        await asyncio.wait_for(three_in.wait(), timeout=10)
        # A fourth connection would arrive now if the pool let it; it must not.
        await asyncio.sleep(0.1)
        assert active == 3
        service.release.set()
        assert await asyncio.gather(*calls) == [b"ok"] * 10
    assert peak == 3 and len(service.requests) == 10


# -- plain http safety -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    ["http://example.com", "http://10.0.0.5:8080", "http://earthengine.googleapis.com/"],
)
def test_credentials_are_never_sent_over_plain_http_to_remote_hosts(url: str) -> None:
    # Synchronous test, no event loop: the refusal happens before anything could connect.
    with pytest.raises(JobError, match="plain HTTP") as info:
        EEClient(url, auth=StaticToken(TOKEN), governor=Governor(4, qps=10))
    assert_no_token(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080",
        "http://127.3.2.1",
        "http://localhost:1234/",
        "http://[::1]:8080",
        "https://earthengine-highvolume.googleapis.com",
    ],
)
def test_credentials_allowed_over_https_or_to_loopback(url: str) -> None:
    client = EEClient(url, auth=StaticToken(TOKEN), governor=Governor(4, qps=10))
    assert client.base_url == url.rstrip("/")


def test_plain_http_without_credentials_is_allowed_anywhere() -> None:
    EEClient("http://example.com", auth=NoAuth(), governor=Governor(4, qps=10))


def test_other_schemes_are_refused() -> None:
    with pytest.raises(JobError):
        EEClient("ftp://127.0.0.1", auth=NoAuth(), governor=Governor(4, qps=10))


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("127.255.0.9", True),
        ("::1", True),
        ("[::1]", True),
        ("LOCALHOST", True),
        ("128.0.0.1", False),
        ("localhost.example.com", False),
        ("0.0.0.0", False),
    ],
)
def test_is_loopback_host(host: str, expected: bool) -> None:
    assert is_loopback_host(host) is expected


def test_timeouts_map_to_aiohttp() -> None:
    timeout = RequestTimeouts(connect=1, read=2, total=3).to_aiohttp()
    assert isinstance(timeout, aiohttp.ClientTimeout)
    assert (timeout.sock_connect, timeout.sock_read, timeout.total) == (1, 2, 3)
    with pytest.raises(AttributeError):
        RequestTimeouts().read = 5  # type: ignore[misc]
