"""Seeded fault injection for getPixels, and the ways a response body can be sent.

Each getPixels call gets its own ``random.Random`` seeded by (seed, call number), so the
sequence of faults is the same on every run whatever the timing between calls.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from aiohttp import web

from bulkpix.emulator.config import FaultConfig
from bulkpix.emulator.status import ApiError

__all__ = ["FAULTS", "draw_fault", "fault_error", "request_rng", "send_payload"]

FAULTS = ("500", "503", "429", "reset", "truncate", "stall", "400", "403", "404")
_CHUNKS_PER_SECOND = 20  # granularity of bandwidth pacing
_STALL_POLL_S = 0.05


def request_rng(seed: int, call_number: int) -> random.Random:
    return random.Random(f"bulkpix-emulator:{seed}:{call_number}")


def draw_fault(faults: FaultConfig, rng: random.Random) -> str | None:
    """One fault name or None, drawn from the configured probabilities."""
    draw = rng.random()
    probabilities = (faults.p500, faults.p503, faults.p429, faults.p_reset, faults.p_truncate,
                     faults.p_stall, faults.p400, faults.p403, faults.p404)
    for name, probability in zip(FAULTS, probabilities, strict=True):
        if draw < probability:
            return name
        draw -= probability
    return None


def fault_error(name: str, faults: FaultConfig, rng: random.Random) -> ApiError | None:
    """The error answer of an injected 500/503/429, None for faults of another kind."""
    if name == "500":
        return ApiError(500, "An internal error has occurred (injected).")
    if name == "503":
        return ApiError(503, "The service is currently unavailable (injected).")
    if name == "400":
        return ApiError(400, "Invalid request (injected).")
    if name == "403":
        return ApiError(403, "Permission denied (injected).")
    if name == "404":
        return ApiError(404, "Not found (injected).")
    if name == "429":
        headers = {}
        if rng.random() < faults.retry_after_share:
            headers["Retry-After"] = f"{faults.retry_after_s:g}"
        return ApiError(429, "Too many concurrent aggregations.", headers)
    return None


def _closed(request: web.Request) -> bool:
    return request.transport is None or request.transport.is_closing()


async def send_payload(request: web.Request, payload: bytes, content_type: str,
                       fault: str | None, faults: FaultConfig,
                       commit: Callable[[int | None, int], None],
                       headers: dict[str, str] | None = None) -> web.StreamResponse:
    """Send ``payload`` with an honest Content-Length, applying a reset/truncate/stall fault
    and the bandwidth cap. ``commit(status, bytes)`` is called once, before the last byte
    leaves, so whoever reads the log after receiving the answer finds the call in it."""
    if fault == "reset":
        commit(None, 0)
        if request.transport is not None:
            request.transport.abort()  # no status line, no headers: the connection just drops
        return web.Response(status=200)
    response = web.StreamResponse(status=200, headers={"Content-Type": content_type,
                                                       **(headers or {})})
    response.content_length = len(payload)
    await response.prepare(request)
    if fault == "stall":
        loop = asyncio.get_running_loop()
        deadline = loop.time() + faults.stall_s
        # Sleep in short steps so a client that gave up frees its quota slot at once.
        while loop.time() < deadline and not _closed(request):
            await asyncio.sleep(min(_STALL_POLL_S, deadline - loop.time()))
        if _closed(request):
            commit(response.status, 0)
            return response
    body = memoryview(payload)
    if fault == "truncate":
        body = body[: len(payload) // 2]
    try:
        await _write_paced(response, body, faults.bandwidth_bps,
                           before_last=lambda: commit(response.status, len(body)))
    except ConnectionError:  # the client went away mid-body (reset, or "Connection lost")
        commit(response.status, 0)
        return response
    if fault == "truncate" and request.transport is not None:
        request.transport.close()  # close() flushes what was written, then drops the connection
        return response
    await response.write_eof()
    return response


async def _write_paced(response: web.StreamResponse, body: memoryview,
                       bandwidth_bps: float | None, before_last: Callable[[], None]) -> None:
    if not bandwidth_bps:
        before_last()
        await response.write(body)
        return
    loop = asyncio.get_running_loop()
    start = loop.time()
    chunk = max(1, int(bandwidth_bps / _CHUNKS_PER_SECOND))
    sent = 0
    while True:
        piece = body[sent: sent + chunk]
        # Never ahead of the cap: a piece leaves when the capped stream would have finished it.
        delay = start + (sent + len(piece)) / bandwidth_bps - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if sent + len(piece) >= len(body):
            before_last()
            await response.write(piece)
            return
        await response.write(piece)
        sent += len(piece)
