"""The byte budget: bounded, first come first served, cancel-safe."""

from __future__ import annotations

import asyncio

import pytest

from bulkpix.transfer.budget import ByteBudget


async def test_holds_at_most_capacity_and_serves_in_order() -> None:
    budget = ByteBudget(100)
    order: list[str] = []
    assert await budget.acquire(60) == 60

    async def take(name: str, nbytes: int) -> None:
        await budget.acquire(nbytes)
        order.append(name)

    big = asyncio.create_task(take("big", 80))
    await asyncio.sleep(0)
    small = asyncio.create_task(take("small", 10))  # would fit now, but must not overtake
    await asyncio.sleep(0)
    assert order == [] and budget.held == 60
    budget.release(60)
    await asyncio.gather(big, small)
    assert order == ["big", "small"] and budget.held == 90


async def test_a_body_larger_than_the_budget_takes_all_of_it() -> None:
    budget = ByteBudget(100)
    assert await budget.acquire(10**9) == 100
    waiter = asyncio.create_task(budget.acquire(1))
    await asyncio.sleep(0)
    assert not waiter.done()
    budget.release(100)
    assert await waiter == 1


async def test_cancelled_waiter_leaves_nothing_behind() -> None:
    budget = ByteBudget(10)
    await budget.acquire(10)
    first = asyncio.create_task(budget.acquire(5))
    second = asyncio.create_task(budget.acquire(5))
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    budget.release(10)
    assert await second == 5
    assert budget.held == 5


async def test_over_release_is_an_error() -> None:
    budget = ByteBudget(10)
    with pytest.raises(RuntimeError):
        budget.release(1)


async def test_hold_gives_back_exactly_once_however_the_block_ends() -> None:
    budget = ByteBudget(100)
    async with budget.hold(70) as taken:
        assert taken == 70 and budget.held == 70
    assert budget.held == 0
    with pytest.raises(KeyError):
        async with budget.hold(10**9) as taken:  # clamped to the capacity
            assert taken == 100
            raise KeyError("boom")
    assert budget.held == 0
