"""A dedicated event loop, on its own thread, for writing chunks.

zarr-python copies each chunk out of the tile and checks it on the loop that awaits the
write, and that holds a loop for 30-150 ms per tile. Writing on a second loop keeps the
download loop free to read sockets and keep its rate timers on time: the two threads share
the CPU a few milliseconds at a time instead of the fetch side stalling for whole tiles.
Writes still go through zarr's async API; compression runs on that loop's executor threads.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

__all__ = ["WriteLoop"]

T = TypeVar("T")


class WriteLoop:
    """``async with WriteLoop() as loop: await loop.run(coro)`` runs ``coro`` on the thread."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    async def __aenter__(self) -> WriteLoop:
        ready = threading.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

        self._thread = threading.Thread(target=main, name="bulkpix-writer", daemon=True)
        self._thread.start()
        await asyncio.to_thread(ready.wait)
        return self

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            coro.close()
            raise RuntimeError("WriteLoop is not running")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._loop is not None and self._thread is not None:
            # Writes still running (the run failed or was cancelled) end here, on their own
            # loop, before it stops: nothing is left pending to call back into a dead loop.
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_cancel_all(), self._loop))
            self._loop.call_soon_threadsafe(self._loop.stop)
            await asyncio.to_thread(self._thread.join)
        self._loop = None


async def _cancel_all() -> None:
    me = asyncio.current_task()
    others = [task for task in asyncio.all_tasks() if task is not me]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)
