"""The Governor: one per run, every request to the service (metadata too) goes through it.

Two limits, as the service has two quotas (per project: ~40 requests in flight, 100 per
second counted as 6,000 a minute):

* concurrency, adaptive: start at the cap. A 429 on a request that was granted with ``k``
  requests of ours in flight says the server holds fewer than ``k``: the limit drops to
  ``k - 1``, by at least one and at most a half, once per *generation* (the requests
  granted since the last cut), so one burst of 429s counts as one signal. ``k - 1`` is also
  remembered as the server's ceiling. Successes raise the limit by one per ``limit``
  successes, eight times more slowly at and just past that ceiling, so a client that has
  found the quota probes past it rarely (a few percent of 429s at most), a quota that grows
  is still found, and a stray 429 costs little;
* rate, fixed: aiolimiter's leaky bucket (``bulkpix.transfer.rate``), the first wave of up to
  the concurrency cap at once, then just under ``qps``, never over a minute's count.

A Retry-After from the server pauses new grants until it has passed.

Time: all waiting happens on event-loop timers and reads ``loop.time()`` (aiolimiter does too),
so tests drive everything with a virtual-time loop (``tests/conftest.py``).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from bulkpix.errors import QuotaExceeded, RetryableError
from bulkpix.transfer.rate import limiter_for_quota

__all__ = ["Governor", "GovernorLike", "GovernorStats", "GovernorView", "Ticket"]


@dataclass(frozen=True, slots=True)
class GovernorStats:
    """A snapshot for progress displays and the run summary."""

    limit: int
    in_flight: int
    granted: int  # slots handed out so far
    throttles: int  # 429s seen
    cuts: int  # times the limit was cut
    paused_s: float  # seconds left of a Retry-After pause (0 when not paused)


@dataclass(frozen=True, slots=True)
class Ticket:
    """A granted slot: the generation it was granted in, and how many were in flight then."""

    generation: int
    in_flight_at_grant: int


class GovernorView(Protocol):
    """What the progress display and the summary read of a governor."""

    @property
    def limit(self) -> int: ...

    @property
    def throttles(self) -> int: ...


class GovernorLike(GovernorView, Protocol):
    """What the client needs of a governor: this module's, or a cluster's
    (``bulkpix.cluster.quota.ClusterGovernor``, the same limits held on the scheduler)."""

    def slot(self) -> AbstractAsyncContextManager[None]: ...


class Governor:
    """Adaptive concurrency limit plus a fixed request rate, for all traffic of one run."""

    def __init__(
        self,
        max_concurrency: int,
        qps: float,
        *,
        min_concurrency: int = 1,
        max_pause_s: float = 300.0,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if not 1 <= min_concurrency <= max_concurrency:
            raise ValueError(
                f"min_concurrency must be in 1..{max_concurrency}, got {min_concurrency}"
            )
        if not (qps > 0 and math.isfinite(qps)):
            raise ValueError(f"qps must be a positive number, got {qps}")
        self.max_concurrency = max_concurrency
        self.min_concurrency = min_concurrency
        self.qps = qps
        self.max_pause_s = max_pause_s
        self._rate = limiter_for_quota(qps, max_burst=max_concurrency)
        self._limit = max_concurrency
        self._in_flight = 0
        self._reserved = 0  # slots waiting for the rate limiter, counted against the limit
        self._generation = 0  # bumped by every cut
        self._successes = 0  # of the current generation, since the last increase
        self._ceiling = max_concurrency  # the most the server was seen to hold
        self._paused_until = -math.inf
        # Replaced on every notify, so waking never needs a lock and waiting is cancel-safe.
        self._changed = asyncio.Event()
        self.granted = 0
        self.throttles = 0
        self.cuts = 0

    # -- state for progress and stats ---------------------------------------------------
    @property
    def limit(self) -> int:
        """How many requests may be in flight now (between ``min_concurrency`` and the cap)."""
        return self._limit

    @property
    def in_flight(self) -> int:
        """Slots granted and not yet released."""
        return self._in_flight

    @property
    def paused(self) -> bool:
        return self._now() < self._paused_until

    def stats(self) -> GovernorStats:
        return GovernorStats(
            limit=self._limit,
            in_flight=self._in_flight,
            granted=self.granted,
            throttles=self.throttles,
            cuts=self.cuts,
            paused_s=max(0.0, self._paused_until - self._now()),
        )

    # -- the public operations ---------------------------------------------------------
    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Wait for a free slot and the rate limiter, then run the body as one request.

        The body's outcome feeds the limit: normal exit is a success, ``QuotaExceeded`` a
        throttle; any other exception is neutral. A ``retry_after`` on a retryable error
        pauses new grants.
        """
        ticket = await self.acquire()
        try:
            yield
        except BaseException as exc:
            self.release(ticket, exc)
            raise
        self.release(ticket)

    async def acquire(self) -> Ticket:
        """Take a slot (``slot()`` is the usual way); give it back with ``release``.

        The split form serves a cluster: the scheduler holds the run's one Governor, and a
        worker's request takes and gives back its slot in two messages."""
        generation, in_flight_at_grant = await self._acquire()
        return Ticket(generation, in_flight_at_grant)

    def release(self, ticket: Ticket, error: BaseException | None = None) -> None:
        """Give a slot back. ``error`` is how the request ended: None a success,
        ``QuotaExceeded`` a throttle, another ``RetryableError`` pauses for its
        ``retry_after``, anything else is neutral."""
        try:
            if error is None:
                self._on_success(ticket.generation)
            elif isinstance(error, QuotaExceeded):
                self._on_throttle(error, ticket.generation, ticket.in_flight_at_grant)
            elif isinstance(error, RetryableError):
                # e.g. 503 with Retry-After: honour the server's word, without cutting the limit.
                self._pause_for(error.retry_after)
        finally:
            self._in_flight -= 1
            self._notify()

    # -- internals -----------------------------------------------------------------------
    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _acquire(self) -> tuple[int, int]:
        while True:
            while (remaining := self._paused_until - self._now()) > 0:
                await asyncio.sleep(remaining)
            while self._in_flight + self._reserved >= self._limit:
                await self._changed.wait()
            # Reserve before waiting for the rate limiter: taking the rate token first and
            # then queueing for concurrency would bunch the starts into a burst.
            self._reserved += 1
            try:
                await self._rate.acquire()
            except BaseException:
                self._reserved -= 1
                self._notify()
                raise
            self._reserved -= 1
            # A 429 may have paused us or cut the limit while we waited for the rate token.
            if self.paused or self._in_flight >= self._limit:
                self._notify()
                continue
            self._in_flight += 1
            self.granted += 1
            return self._generation, self._in_flight

    def _pause_for(self, retry_after: float | None) -> None:
        if retry_after is None or not retry_after > 0:
            return
        until = self._now() + min(retry_after, self.max_pause_s)
        self._paused_until = max(self._paused_until, until)

    def _on_throttle(self, exc: QuotaExceeded, generation: int, in_flight_at_grant: int) -> None:
        self.throttles += 1
        self._pause_for(exc.retry_after)
        if generation != self._generation:
            return  # granted before the last cut: part of a burst already answered
        held = max(self.min_concurrency, in_flight_at_grant - 1)
        self._ceiling = held
        # Down to what the server held, by at most a half (a stray 429, say from another
        # client on the same quota, then costs no more than classic AIMD) and at least one.
        target = min(self._limit - 1, max(held, self._limit // 2))
        self._limit = max(self.min_concurrency, target)
        self._generation += 1
        self._successes = 0
        self.cuts += 1

    def _on_success(self, generation: int) -> None:
        # Recovery is measured only on requests sent at the current limit, and never
        # while the server has asked us to wait.
        if generation != self._generation or self.paused or self._limit >= self.max_concurrency:
            return
        self._successes += 1
        # At and just past the level the server last held, probe slowly: each probe costs a
        # 429. Far from it (the 429 was a stray one), recover at the normal pace.
        near = self._ceiling <= self._limit <= self._ceiling + max(1, self._ceiling // 4)
        needed = 8 * self._limit if near else self._limit
        if self._successes >= needed:
            self._limit += 1
            self._successes = 0
            self._notify()
