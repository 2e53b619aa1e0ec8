"""N workers pulling from a bounded queue fed lazily by one producer.

Memory stays bounded whatever the number of items: the producer pulls the next item from
the iterator only when the queue has room, so at most ``queue_size + workers + 1`` items
exist at once (queued, being handled, and the one waiting to be queued).

A handled item may give back follow-up items (the parts of a tile the server found too
large): they go to the front of the line, ahead of the iterator's, and are handled by the
same pool before it returns.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from typing import TypeVar

__all__ = ["run_workers"]

T = TypeVar("T")

_END = object()  # one per worker, after the last item
_WAKE = object()  # tells an idle worker that follow-up items are waiting


async def _iterate(items: Iterable[T] | AsyncIterable[T]) -> AsyncIterator[T]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


async def run_workers(
    items: Iterable[T] | AsyncIterable[T],
    handle: Callable[[T], Awaitable[Iterable[T] | None]],
    workers: int,
    queue_size: int | None = None,
    *,
    stop: asyncio.Event | None = None,
) -> None:
    """Run ``handle(item)`` for every item with at most ``workers`` at a time.

    If ``handle`` (or the iterator) raises, the other tasks are cancelled and the exception
    is re-raised as is. Cancelling the caller cancels and awaits every task it started.
    Setting ``stop`` stops gracefully: no new item is started, items being handled finish,
    then the call returns normally. Items ``handle`` returns are handled too, before the
    iterator's next ones.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if queue_size is None:
        queue_size = workers
    if queue_size < 1:
        raise ValueError(f"queue_size must be >= 1, got {queue_size}")

    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=queue_size)
    idle: set[asyncio.Task[None]] = set()  # workers waiting for an item: safe to cancel on stop

    def stopping() -> bool:
        return stop is not None and stop.is_set()

    async def produce() -> None:
        async for item in _iterate(items):
            await queue.put(item)
        for _ in range(workers):
            await queue.put(_END)

    follow_ups: deque[T] = deque()
    busy = 0  # workers inside handle(): each may still give back follow-ups
    changed = asyncio.Event()

    def poke() -> None:
        nonlocal changed
        changed.set()
        changed = asyncio.Event()

    async def work() -> None:
        nonlocal busy
        me = asyncio.current_task()
        assert me is not None
        ended = False
        while not stopping():
            if follow_ups:
                item = follow_ups.popleft()
            elif ended:
                if busy == 0:
                    return
                # The iterator is done, but a busy worker may still hand back parts.
                idle.add(me)
                try:
                    await changed.wait()
                finally:
                    idle.discard(me)
                continue
            else:
                idle.add(me)
                try:
                    got = await queue.get()
                finally:
                    idle.discard(me)
                if got is _WAKE:
                    continue
                if got is _END:
                    ended = True
                    continue
                if stopping():
                    return
                item = got  # type: ignore[assignment]
            busy += 1
            try:
                more = await handle(item)
            finally:
                busy -= 1
            if more:
                follow_ups.extend(more)
                # Workers waiting on an empty queue: a token there wakes them for the rest.
                for _ in range(min(len(idle), len(follow_ups) - 1)):
                    try:
                        queue.put_nowait(_WAKE)
                    except asyncio.QueueFull:
                        break
            poke()

    producer = asyncio.create_task(produce(), name="run_workers:producer")
    worker_tasks = {
        asyncio.create_task(work(), name=f"run_workers:worker-{i}") for i in range(workers)
    }
    stop_watch = asyncio.create_task(stop.wait(), name="run_workers:stop") if stop else None
    tasks: set[asyncio.Task[object]] = {producer, *worker_tasks}
    if stop_watch is not None:
        tasks.add(stop_watch)

    stopped_by_us: set[asyncio.Task[object]] = set()
    try:
        waiting = set(tasks)
        running_workers = set(worker_tasks)
        while running_workers:
            done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is stop_watch:
                    for victim in (producer, *idle):
                        victim.cancel()
                        stopped_by_us.add(victim)
                    continue
                if task.cancelled():
                    if task in stopped_by_us:
                        continue
                    # Cancelled by someone else: do not pretend all items were handled.
                    raise asyncio.CancelledError(f"{task.get_name()} was cancelled")
                exc = task.exception()
                if exc is not None:
                    raise exc
            running_workers -= done
    finally:
        for task in tasks:
            task.cancel()
        # Await them all so no task outlives the call (nothing stray after Ctrl-C).
        await asyncio.wait(tasks)
        for task in tasks:
            if not task.cancelled():
                task.exception()  # retrieved: no "exception was never retrieved" noise
