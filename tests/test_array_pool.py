"""The band arrays kept between tiles: reused, and never more than the byte budget allows."""

from __future__ import annotations

import asyncio

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkpix.transfer.array_pool import ArrayPool
from bulkpix.transfer.budget import ByteBudget


def test_a_given_back_array_serves_the_next_take_of_its_shape_and_type() -> None:
    pool = ArrayPool(ByteBudget(10_000))
    first = pool.take((10, 20), np.dtype("uint16"))
    pool.give_back([first])
    assert pool.idle_bytes == first.nbytes
    assert pool.take((20, 10), np.dtype("uint16")) is not first  # another shape
    assert pool.take((10, 20), np.dtype("int16")) is not first  # another type
    assert pool.take((10, 20), np.dtype("uint16")) is first
    assert pool.idle_bytes == 0


def test_views_and_arrays_given_back_twice_are_not_kept() -> None:
    pool = ArrayPool(ByteBudget(10_000))
    base = pool.take((10, 10), np.dtype("uint8"))
    pool.give_back([base[:5], base.T])
    assert pool.idle_bytes == 0
    pool.give_back([base, base])
    assert pool.idle_bytes == base.nbytes
    assert pool.take((10, 10), np.dtype("uint8")) is base
    assert pool.take((10, 10), np.dtype("uint8")) is not base


def test_idle_arrays_make_room_for_the_bytes_the_budget_has_out() -> None:
    async def scenario() -> None:
        budget = ByteBudget(1_000)
        pool = ArrayPool(budget)
        pool.give_back([pool.take((400,), np.dtype("uint8")) for _ in range(3)])
        assert pool.idle_bytes == 800  # the third did not fit beside two idle
        async with budget.hold(500):
            pool.take((7,), np.dtype("uint8"))  # a miss: idle shrinks to what the budget leaves
            assert pool.idle_bytes <= 500
            pool.give_back([np.empty(400, np.uint8)])
            assert pool.idle_bytes <= 500

    asyncio.run(scenario())


def test_idle_arrays_give_way_to_a_hold_that_takes_no_array() -> None:
    """A PNG or mosaic tile holds budget without the pool: idle arrays are freed for it."""

    async def scenario() -> None:
        budget = ByteBudget(1_000)
        pool = ArrayPool(budget)
        pool.give_back([pool.take((400,), np.dtype("uint8")) for _ in range(2)])
        assert pool.idle_bytes == 800
        async with budget.hold(700):
            assert pool.idle_bytes <= 300

    asyncio.run(scenario())


def test_a_waiting_hold_frees_idle_arrays_when_it_is_granted() -> None:
    async def scenario() -> None:
        budget = ByteBudget(1_000)
        pool = ArrayPool(budget)
        first = await budget.acquire(600)
        waiting = asyncio.ensure_future(budget.acquire(900))
        await asyncio.sleep(0)
        pool.give_back([np.empty(400, np.uint8)])  # fits beside the 600 out
        assert pool.idle_bytes == 400
        budget.release(first)
        await waiting
        assert pool.idle_bytes <= 100

    asyncio.run(scenario())


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 3), st.integers(0, 600)), max_size=40))
def test_idle_plus_held_never_exceeds_the_capacity(steps) -> None:
    async def scenario() -> None:
        budget = ByteBudget(1_000)
        pool = ArrayPool(budget)
        taken: list[np.ndarray] = []
        for give, shape_choice, held in steps:
            async with budget.hold(held):  # what other tiles hold at this moment
                if give and taken:
                    pool.give_back([taken.pop()])
                else:
                    taken.append(pool.take((50 * (shape_choice + 1),), np.dtype("uint8")))
                assert pool.idle_bytes <= budget.capacity - held

    asyncio.run(scenario())
