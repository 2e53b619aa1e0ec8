"""A sliding-window rate limit: at most N starts in any window of T seconds.

This is how the service counts its per-second quota (and how the emulator does), so it is
what the client keeps to. A leaky bucket (aiolimiter's AsyncLimiter) cannot express it: with
capacity b and drain rate r it lets b + r starts into some 1 s window, so it must either
spread the starts out (b small, and 40 requests of a fresh run trickle out over 0.4 s) or
overshoot the quota. The window lets a run start its first wave at once and then holds the
long-run rate exactly at N per T.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque

__all__ = ["SlidingWindowLimiter", "limiter_for_qps"]

# Requests reach the server with some jitter, and its window is not aligned with ours.
HEADROOM = 0.98


class SlidingWindowLimiter:
    """``await limiter.acquire()`` returns once a start fits in the window; it never sleeps
    longer than until the oldest start in the window leaves it. Times are the loop's."""

    def __init__(self, max_starts: int, period: float = 1.0) -> None:
        if max_starts < 1 or not period > 0:
            raise ValueError("max_starts must be >= 1 and period > 0")
        self.max_starts = max_starts
        self.period = period
        self._starts: deque[float] = deque()

    async def acquire(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            while self._starts and self._starts[0] <= now - self.period:
                self._starts.popleft()
            if len(self._starts) < self.max_starts:
                self._starts.append(now)
                return
            await asyncio.sleep(self._starts[0] + self.period - now)


def limiter_for_qps(qps: float) -> SlidingWindowLimiter:
    """At most ``qps`` (less the headroom) starts in any second; below 1/s, one per 1/qps."""
    usable = qps * HEADROOM
    if usable >= 1:
        return SlidingWindowLimiter(math.floor(usable), 1.0)
    return SlidingWindowLimiter(1, 1.0 / usable)
