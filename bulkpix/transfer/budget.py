"""A byte budget: how many bytes of pixels the client may hold at once.

Requests in service cost the client nothing; a body costs memory from the moment it is read
until its tile is written. Taking budget before reading a body (and giving it back after
the write) bounds memory by the budget, whatever the tile size, the concurrency or the
region, while the server keeps working on the other requests in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable

__all__ = ["ByteBudget"]


class ByteBudget:
    """An async, first-come-first-served counting semaphore over bytes."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._held = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._make_room: Callable[[int], None] | None = None

    def keep_within(self, make_room: Callable[[int], None]) -> None:
        """Memory kept aside beside the budget (a pool of idle arrays) gives way to it:
        ``make_room(room)`` is called whenever bytes are handed out, to leave at most
        ``room`` bytes (the capacity less the bytes out) kept aside."""
        self._make_room = make_room

    @property
    def held(self) -> int:
        return self._held

    def clamp(self, nbytes: int) -> int:
        """What ``acquire(nbytes)`` takes: a body larger than the budget takes all of it."""
        return max(0, min(nbytes, self.capacity))

    async def acquire(self, nbytes: int) -> int:
        """Wait for ``nbytes`` (clamped) and take them; returns what was taken."""
        nbytes = self.clamp(nbytes)
        # FIFO: nobody overtakes an earlier waiter, so a large body is never starved.
        if not self._waiters and self._held + nbytes <= self.capacity:
            self._grant(nbytes)
            return nbytes
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (nbytes, future)
        self._waiters.append(entry)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(nbytes)  # granted just as we were cancelled: give it back
            else:
                self._waiters.remove(entry)
                self._wake()
            raise
        return nbytes

    @contextlib.asynccontextmanager
    async def hold(self, nbytes: int) -> AsyncIterator[int]:
        """Hold ``nbytes`` (clamped) for the block; yields what was taken. The one way the
        pipeline takes budget: it is given back exactly once, however the block ends."""
        taken = await self.acquire(nbytes)
        try:
            yield taken
        finally:
            self.release(taken)

    def release(self, nbytes: int) -> None:
        self._held -= nbytes
        if self._held < 0:
            raise RuntimeError("released more bytes than were acquired")
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            nbytes, future = self._waiters[0]
            if self._held + nbytes > self.capacity:
                return
            self._waiters.popleft()
            if not future.done():
                self._grant(nbytes)
                future.set_result(None)

    def _grant(self, nbytes: int) -> None:
        self._held += nbytes
        if self._make_room is not None:
            self._make_room(self.capacity - self._held)
