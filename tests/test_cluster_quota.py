"""The cluster's quota on the scheduler, and the cut into batches: no cluster, virtual time."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulkpix.cluster.batches import (
    MAX_BATCH_TILES,
    WAVES_PER_BATCH,
    batch_size,
    cut_batches,
    iter_batches,
)
from bulkpix.cluster.quota import ORPHAN_HOLD_S, QuotaBroker, _JobQuota
from tests.conftest import loop_now, run_virtual


def _everyone_alive(holder: str) -> bool:
    return True


def test_a_429_one_worker_sees_slows_every_worker() -> None:
    async def main() -> tuple[int, int]:
        quota = _JobQuota(concurrency=8, qps=1000.0, max_pause_s=60.0)
        grants = [await quota.acquire(f"w{i % 2}", _everyone_alive) for i in range(8)]
        before = quota.governor.limit
        # Worker w0's request comes back throttled: the one limit is cut, for w1 as well.
        quota.release(grants[0]["grant"], "throttled", None)
        return before, quota.governor.limit

    before, after = run_virtual(main)
    assert before == 8 and after < 8


def test_a_retry_after_pauses_the_whole_cluster() -> None:
    async def main() -> float:
        quota = _JobQuota(concurrency=4, qps=1000.0, max_pause_s=60.0)
        grant = await quota.acquire("w0", _everyone_alive)
        start = loop_now()
        quota.release(grant["grant"], "retryable", 5.0)
        await quota.acquire("w1", _everyone_alive)  # another worker waits out the pause
        return loop_now() - start

    assert run_virtual(main) >= 5.0


def test_a_dead_workers_slots_come_back() -> None:
    async def main() -> dict[str, object]:
        quota = _JobQuota(concurrency=2, qps=1000.0, max_pause_s=60.0)
        await quota.acquire("dead", _everyone_alive)
        await quota.acquire("dead", _everyone_alive)
        waiting = asyncio.create_task(quota.acquire("alive", _everyone_alive))
        await asyncio.sleep(1.0)
        assert not waiting.done()  # the cap is held by the worker about to die
        quota.release_holder("dead")
        return await asyncio.wait_for(waiting, 1.0)

    assert "grant" in run_virtual(main)


def test_the_broker_gives_a_removed_workers_slots_back_after_a_grace() -> None:
    """The service may still be serving a killed worker's requests: its slots return only
    after ``ORPHAN_HOLD_S``, so the cluster does not overbook the server meanwhile."""

    class Scheduler:
        def __init__(self) -> None:
            self.workers = {"alive": object(), "dead": object()}
            self.handlers: dict[str, object] = {}
            self.stream_handlers: dict[str, object] = {}

    async def main() -> tuple[float, str]:
        scheduler = Scheduler()
        broker = QuotaBroker()
        await broker.start(scheduler)
        broker._open("run", concurrency=1, qps=1000.0, max_pause_s=60.0)
        assert "grant" in await broker._acquire("run", "dead")
        waiting = asyncio.create_task(broker._acquire("run", "alive"))
        start = loop_now()
        del scheduler.workers["dead"]
        broker.remove_worker(scheduler, "dead")
        reply = await asyncio.wait_for(waiting, 10 * ORPHAN_HOLD_S)
        return loop_now() - start, str(reply)

    waited, reply = run_virtual(main)
    assert waited >= ORPHAN_HOLD_S and "grant" in reply


def test_a_stop_ends_waiting_and_later_acquisitions() -> None:
    async def main() -> tuple[dict[str, object], dict[str, object], int]:
        quota = _JobQuota(concurrency=1, qps=1000.0, max_pause_s=60.0)
        await quota.acquire("w0", _everyone_alive)
        waiting = asyncio.create_task(quota.acquire("w1", _everyone_alive))
        await asyncio.sleep(0.5)
        quota.stopped.set()
        first = await asyncio.wait_for(waiting, 1.0)
        later = await quota.acquire("w1", _everyone_alive)
        return first, later, quota.governor.in_flight

    first, later, in_flight = run_virtual(main)
    assert first == {"stopped": True} and later == {"stopped": True}
    assert in_flight == 1  # the stopped waiter took no slot


def test_a_slot_granted_to_a_worker_that_died_meanwhile_is_given_back() -> None:
    async def main() -> tuple[dict[str, object], int]:
        quota = _JobQuota(concurrency=2, qps=1000.0, max_pause_s=60.0)
        reply = await quota.acquire("gone", lambda holder: False)
        return reply, quota.governor.in_flight

    reply, in_flight = run_virtual(main)
    assert reply == {"stopped": True} and in_flight == 0


def test_a_release_after_the_worker_was_removed_is_ignored() -> None:
    async def main() -> int:
        quota = _JobQuota(concurrency=2, qps=1000.0, max_pause_s=60.0)
        grant = await quota.acquire("w0", _everyone_alive)
        quota.release_holder("w0")
        quota.release(grant["grant"], "success", None)  # late, on the stream: no double count
        return quota.governor.in_flight

    assert run_virtual(main) == 0


@given(
    n=st.integers(0, 5000),
    slots=st.integers(1, 64),
    concurrency=st.integers(1, 200),
)
def test_batches_keep_every_tile_once_in_order(n: int, slots: int, concurrency: int) -> None:
    pending = list(range(n))
    batches = cut_batches(pending, slots, concurrency)
    assert [tile for batch in batches for tile in batch] == pending
    size = batch_size(n, slots, concurrency)
    assert all(1 <= len(batch) <= size for batch in batches)
    if n:
        # Enough tiles per task for the tasks running at once to fill the quota for several
        # waves of requests...
        waves = WAVES_PER_BATCH * -(-concurrency // slots)
        assert size >= min(n, waves)
        # ...and no larger than needed for that or for the cap on a task's size.
        assert size <= max(MAX_BATCH_TILES, waves)


def test_a_batch_size_given_is_used() -> None:
    assert [len(b) for b in cut_batches(list(range(10)), 2, 40, 4)] == [4, 4, 2]
    with pytest.raises(ValueError):
        cut_batches([1], 1, 1, 0)


def test_batches_are_taken_from_the_plan_only_as_they_are_submitted() -> None:
    taken: list[int] = []

    def tiles() -> Iterator[int]:
        for tile in range(100):
            taken.append(tile)
            yield tile

    batches = iter_batches(tiles(), 8)
    assert next(batches) == list(range(8)) and len(taken) == 8
    assert next(batches) == list(range(8, 16)) and len(taken) == 16
    assert sum(len(batch) for batch in batches) == 84 and len(taken) == 100
