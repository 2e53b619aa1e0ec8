"""A dedicated event loop, on its own thread, for writing chunks.

zarr-python copies each chunk out of the tile and checks it on the loop that awaits the
write, and that holds a loop for 30-150 ms per tile. Writing on a second loop keeps the
download loop free to read sockets and keep its rate timers on time: the two threads share
the CPU a few milliseconds at a time instead of the fetch side stalling for whole tiles.
Writes still go through zarr's async API; compression runs on that loop's executor threads.

The loop rule: a store is used from a second loop only when it is not bound to one.
``LocalStore``, ``MemoryStore`` and ``ObjectStore`` (obstore runs its I/O on its own Rust
runtime) are not. An ``FsspecStore`` over an async filesystem (s3fs, gcsfs, adlfs, http) keeps
an aiohttp session tied to the loop that made it, and markers and the lease use it from the
run's loop: its writes run on the caller's loop instead (``WriteLoop(store)`` decides).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from zarr.abc.store import Store

__all__ = ["WriteLoop", "second_loop_safe"]

T = TypeVar("T")


def second_loop_safe(store: Store) -> bool:
    """Whether ``store`` (seen through wrappers such as ``ChecksumStore``) may be used from a
    loop other than the one that made it. Unknown stores: no (the caller's loop is always
    safe, a second one only faster)."""
    # zarr loads on a thread while the run starts (the pipeline imports this module early).
    from zarr.storage import LocalStore, MemoryStore, ObjectStore

    from bulkpix.store.cloud import inner_store

    store = inner_store(store)
    if isinstance(store, LocalStore | MemoryStore | ObjectStore):
        return True
    try:
        from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper
        from zarr.storage import FsspecStore
    except ImportError:
        return False
    if isinstance(store, FsspecStore):
        # A synchronous filesystem zarr wrapped runs on threads (asyncio.to_thread): not
        # loop-bound. A natively async one holds its session on the loop that made it.
        return isinstance(store.fs, AsyncFileSystemWrapper) or not store.fs.async_impl
    return False


class WriteLoop:
    """``async with WriteLoop(store) as loop: await loop.run(coro)`` runs ``coro`` on the
    thread, or on the caller's loop when ``store`` is bound to its loop (no store: the
    thread)."""

    def __init__(self, store: Store | None = None) -> None:
        self.second_loop = store is None or second_loop_safe(store)
        self._entered = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    async def __aenter__(self) -> WriteLoop:
        self._entered = True
        if not self.second_loop:
            return self
        ready = threading.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            # Encoding is CPU work: a thread a core. More only hold more chunks' buffers at
            # once (each keeps a scratch copy and compresses into a chunk-sized output).
            loop.set_default_executor(
                concurrent.futures.ThreadPoolExecutor(
                    max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="bulkpix-encode"
                )
            )
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
        if self._entered and not self.second_loop:
            return await coro
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
        self._entered = False


async def _cancel_all() -> None:
    me = asyncio.current_task()
    others = [task for task in asyncio.all_tasks() if task is not me]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)
