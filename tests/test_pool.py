from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator

import pytest

from bulkpix.transfer.pool import run_workers


def other_tasks() -> set[asyncio.Task[object]]:
    return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]


async def test_handles_every_item_with_at_most_workers_at_a_time() -> None:
    active = peak = 0
    handled: list[int] = []

    async def handle(item: int) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        for _ in range(item % 4):  # uneven work
            await asyncio.sleep(0)
        active -= 1
        handled.append(item)

    await run_workers(range(200), handle, workers=7)
    assert sorted(handled) == list(range(200))
    assert peak == 7
    assert other_tasks() == set()


@pytest.mark.parametrize(("workers", "queue_size"), [(4, None), (4, 1), (2, 10)])
async def test_items_are_pulled_lazily(workers: int, queue_size: int | None) -> None:
    pulled = started = 0
    max_ahead = 0
    stop = asyncio.Event()

    def endless() -> Iterator[int]:  # cannot be materialised: laziness or a hang
        nonlocal pulled, max_ahead
        for i in itertools.count():
            pulled += 1
            if not stop.is_set():  # after stop, workers drop what they take
                max_ahead = max(max_ahead, pulled - started)
            yield i

    async def handle(item: int) -> None:
        nonlocal started
        started += 1
        await asyncio.sleep(0)
        if started == 500:
            stop.set()

    await run_workers(endless(), handle, workers=workers, queue_size=queue_size, stop=stop)
    bound = (queue_size or workers) + 1  # queued + the one waiting for room
    assert max_ahead <= bound
    assert max_ahead == bound  # the queue is kept full, too
    assert pulled <= 500 + bound + workers


async def test_async_iterables_are_accepted() -> None:
    async def items() -> AsyncIterator[int]:
        for i in range(20):
            await asyncio.sleep(0)
            yield i

    seen: list[int] = []

    async def handle(item: int) -> None:
        seen.append(item)

    await run_workers(items(), handle, workers=3)
    assert sorted(seen) == list(range(20))


async def test_a_failing_handle_cancels_the_rest_and_is_reraised() -> None:
    never = asyncio.Event()
    cancelled: list[int] = []
    boom = RuntimeError("item 5 failed")

    async def handle(item: int) -> None:
        if item == 5:
            raise boom
        try:
            await never.wait()
        except asyncio.CancelledError:
            cancelled.append(item)
            raise

    with pytest.raises(RuntimeError) as info:
        await run_workers(range(1000), handle, workers=6)
    assert info.value is boom  # the exception itself, not an ExceptionGroup
    assert sorted(cancelled) == [0, 1, 2, 3, 4]
    assert other_tasks() == set()


async def test_a_failing_iterator_is_reraised() -> None:
    def items() -> Iterator[int]:
        yield 1
        raise ValueError("bad plan")

    async def handle(item: int) -> None:
        await asyncio.sleep(0)

    with pytest.raises(ValueError, match="bad plan"):
        await run_workers(items(), handle, workers=2)
    assert other_tasks() == set()


async def test_cancelling_the_caller_cancels_everything_cleanly() -> None:
    in_handle = 0
    cleaned_up = 0
    all_busy = asyncio.Event()

    async def handle(item: int) -> None:
        nonlocal in_handle, cleaned_up
        in_handle += 1
        if in_handle == 4:
            all_busy.set()
        try:
            await asyncio.Event().wait()
        finally:
            cleaned_up += 1

    runner = asyncio.create_task(run_workers(itertools.count(), handle, workers=4))
    await all_busy.wait()
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert cleaned_up == 4
    assert other_tasks() == set()


async def test_stop_lets_current_items_finish_and_starts_no_new_ones() -> None:
    stop = asyncio.Event()
    release = asyncio.Event()
    started: list[int] = []
    finished: list[int] = []

    async def handle(item: int) -> None:
        started.append(item)
        if len(started) == 3:
            stop.set()  # e.g. the first Ctrl-C
        await release.wait()
        finished.append(item)

    runner = asyncio.create_task(run_workers(range(100), handle, workers=3, stop=stop))
    while not stop.is_set():
        await asyncio.sleep(0)
    for _ in range(20):  # give the pool every chance to (wrongly) start more items
        await asyncio.sleep(0)
    assert not runner.done()
    release.set()
    await runner  # returns normally
    assert sorted(started) == [0, 1, 2]
    assert sorted(finished) == [0, 1, 2]
    assert other_tasks() == set()


async def test_stop_wakes_idle_workers_waiting_for_a_slow_producer() -> None:
    stop = asyncio.Event()
    never = asyncio.Event()

    async def items() -> AsyncIterator[int]:
        yield 0
        await never.wait()  # e.g. a plan that is still being computed
        yield 1

    handled: list[int] = []

    async def handle(item: int) -> None:
        handled.append(item)
        stop.set()

    await asyncio.wait_for(run_workers(items(), handle, workers=4, stop=stop), timeout=5)
    assert handled == [0]
    assert other_tasks() == set()


async def test_arguments_are_checked() -> None:
    async def handle(item: int) -> None:
        return None

    with pytest.raises(ValueError):
        await run_workers([1], handle, workers=0)
    with pytest.raises(ValueError):
        await run_workers([1], handle, workers=1, queue_size=0)


async def test_follow_up_items_are_handled_before_the_call_returns() -> None:
    handled: list[str] = []
    in_flight = peak = 0

    async def handle(item: str) -> list[str] | None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0)
        in_flight -= 1
        handled.append(item)
        # The last item splits late, after the producer has told every worker to end.
        if item in ("a", "z") or (len(item) == 2 and item[1] == "0"):
            return [f"{item}{n}" for n in range(4)]
        return None

    await run_workers(["a", "b", "c", "z"], handle, workers=3)
    expected = {"a", "b", "c", "z"} | {f"{p}{n}" for p in "az" for n in range(4)}
    expected |= {f"{p}0{n}" for p in "az" for n in range(4)}
    assert sorted(handled) == sorted(expected)
    assert len(handled) == len(expected)  # each once
    assert peak <= 3
    assert other_tasks() == set()


async def test_follow_ups_go_to_idle_workers_too() -> None:
    started: list[str] = []
    gate = asyncio.Event()

    async def handle(item: str) -> list[str] | None:
        started.append(item)
        if item == "split":
            for _ in range(10):  # long enough for the other workers to be told to end
                await asyncio.sleep(0)
            return ["p1", "p2", "p3"]
        await gate.wait()  # the parts hold their workers: all three run at once
        return None

    runner = asyncio.create_task(run_workers(["split"], handle, workers=3))
    for _ in range(40):
        await asyncio.sleep(0)
    assert sorted(started) == ["p1", "p2", "p3", "split"]
    gate.set()
    await runner
    assert other_tasks() == set()
