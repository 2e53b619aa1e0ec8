from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulkpix.errors import (
    BadPayload,
    NotFound,
    PermanentError,
    QuotaExceeded,
    RequestTooLarge,
    ServerError,
    TransportError,
    Unauthenticated,
)
from bulkpix.transfer.retry import (
    RetryBudget,
    RetryPolicy,
    backoff_delay,
    is_retryable,
    retrying,
)


class FakeSleep:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.calls.append(delay)


def flaky(failures: list[BaseException], result: str = "ok"):
    """An async callable raising the given errors in turn, then returning ``result``."""
    calls = 0

    async def fn() -> str:
        nonlocal calls
        calls += 1
        if failures:
            raise failures.pop(0)
        return result

    fn.calls = lambda: calls  # type: ignore[attr-defined]
    return fn


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (QuotaExceeded("x", status=429), True),
        (ServerError("x", status=503), True),
        (TransportError("x"), True),
        (BadPayload("x"), True),
        (NotFound("x", status=404), False),
        (RequestTooLarge("x", status=400), False),
        (Unauthenticated("x", status=401), False),
        (PermanentError("x"), False),
        (ValueError("bug"), False),
        (ConnectionResetError("raw, not translated"), False),
        (asyncio.CancelledError(), False),
    ],
)
def test_is_retryable(exc: BaseException, expected: bool) -> None:
    assert is_retryable(exc) is expected


def test_policy_is_frozen_with_documented_defaults() -> None:
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.backoff_base, policy.backoff_cap) == (8, 0.5, 30.0)
    with pytest.raises(AttributeError):
        policy.max_attempts = 3  # type: ignore[misc]
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


@given(
    attempt=st.integers(min_value=0, max_value=5000),
    seed=st.integers(min_value=0, max_value=2**32),
    base=st.floats(min_value=0.0, max_value=10.0),
    cap=st.floats(min_value=0.0, max_value=100.0),
)
def test_backoff_is_full_jitter_under_the_capped_exponential(
    attempt: int, seed: int, base: float, cap: float
) -> None:
    policy = RetryPolicy(backoff_base=base, backoff_cap=cap)
    delay = backoff_delay(attempt, policy, random.Random(seed))
    assert 0.0 <= delay <= min(cap, base * 2.0 ** min(attempt, 64))


def test_backoff_grows_exponentially_then_caps() -> None:
    policy = RetryPolicy(backoff_base=0.5, backoff_cap=30.0)
    # Jitter's upper edge, reached with an rng that always answers the top of the range.
    top = type("Top", (), {"uniform": staticmethod(lambda lo, hi: hi)})()
    assert [backoff_delay(a, policy, top) for a in range(8)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        8.0,
        16.0,
        30.0,
        30.0,
    ]


def test_backoff_is_jittered_and_pure() -> None:
    policy = RetryPolicy(backoff_base=1.0, backoff_cap=100.0)
    delays = [backoff_delay(5, policy, random.Random(seed)) for seed in range(200)]
    assert len(set(delays)) == 200  # spread, not one value
    assert min(delays) < 8 < max(delays)  # covers the range 0..32
    # Same rng state, same answer: no hidden state.
    assert backoff_delay(5, policy, random.Random(1)) == backoff_delay(5, policy, random.Random(1))


def test_backoff_honours_retry_after_as_a_floor() -> None:
    policy = RetryPolicy(backoff_base=0.5, backoff_cap=30.0)
    for seed in range(50):
        assert backoff_delay(0, policy, random.Random(seed), retry_after=7.0) == 7.0
    # Beyond the cap too: the server's word wins.
    assert backoff_delay(3, policy, random.Random(0), retry_after=120.0) == 120.0
    with pytest.raises(ValueError):
        backoff_delay(-1, policy, random.Random(0))


def test_budget_counts_down() -> None:
    budget = RetryBudget(2)
    assert [budget.try_spend() for _ in range(3)] == [True, True, False]
    assert (budget.spent, budget.remaining) == (2, 0)


async def test_retrying_retries_retryable_errors_until_success() -> None:
    sleep = FakeSleep()
    seen: list[tuple[str, int, float]] = []
    fn = flaky([ServerError("503", status=503), TransportError("reset")])
    result = await retrying(
        fn,
        policy=RetryPolicy(),
        budget=RetryBudget(10),
        rng=random.Random(0),
        sleep=sleep,
        on_retry=lambda exc, attempt, delay: seen.append((type(exc).__name__, attempt, delay)),
    )
    assert result == "ok"
    assert fn.calls() == 3
    assert [(name, attempt) for name, attempt, _ in seen] == [
        ("ServerError", 0),
        ("TransportError", 1),
    ]
    assert sleep.calls == [delay for _, _, delay in seen]
    assert sleep.calls[0] <= 0.5 and sleep.calls[1] <= 1.0


async def test_retrying_does_not_retry_permanent_errors_or_bugs() -> None:
    for error in (NotFound("404", status=404), KeyError("bug")):
        sleep = FakeSleep()
        fn = flaky([error])
        with pytest.raises(type(error)):
            await retrying(
                fn, policy=RetryPolicy(), budget=RetryBudget(10), rng=random.Random(0), sleep=sleep
            )
        assert fn.calls() == 1 and sleep.calls == []


async def test_retrying_gives_up_after_max_attempts_with_the_last_error() -> None:
    sleep = FakeSleep()
    errors = [ServerError(f"503 #{i}", status=503) for i in range(10)]
    fn = flaky(list(errors))
    with pytest.raises(ServerError) as info:
        await retrying(
            fn, policy=RetryPolicy(max_attempts=3), budget=None, rng=random.Random(0), sleep=sleep
        )
    assert info.value is errors[2]
    assert fn.calls() == 3 and len(sleep.calls) == 2
    assert any("after 3 attempts" in note for note in info.value.__notes__)


async def test_retrying_stops_when_the_shared_budget_is_spent() -> None:
    budget = RetryBudget(3)
    sleep = FakeSleep()
    # Two "tiles" share the budget: the first uses 2 retries, the second only 1 more.
    first = flaky([ServerError("a", status=500), ServerError("b", status=500)])
    assert (
        await retrying(
            first, policy=RetryPolicy(), budget=budget, rng=random.Random(0), sleep=sleep
        )
        == "ok"
    )
    second = flaky([QuotaExceeded(str(i), status=429) for i in range(5)])
    with pytest.raises(QuotaExceeded) as info:
        await retrying(
            second, policy=RetryPolicy(), budget=budget, rng=random.Random(0), sleep=sleep
        )
    assert str(info.value) == "1"  # raised as is, after one retry
    assert second.calls() == 2 and budget.remaining == 0
    assert len(sleep.calls) == 3


async def test_retrying_waits_at_least_retry_after() -> None:
    sleep = FakeSleep()
    fn = flaky([QuotaExceeded("429", status=429, retry_after=12.0)])
    await retrying(fn, policy=RetryPolicy(), budget=None, rng=random.Random(0), sleep=sleep)
    assert sleep.calls == [12.0]


async def test_cancellation_is_not_retried() -> None:
    sleep = FakeSleep()
    fn = flaky([asyncio.CancelledError()])
    with pytest.raises(asyncio.CancelledError):
        await retrying(fn, policy=RetryPolicy(), budget=None, rng=random.Random(0), sleep=sleep)
    assert fn.calls() == 1 and sleep.calls == []


def test_no_wait_exceeds_max_wait() -> None:
    policy = RetryPolicy(backoff_base=0.5, backoff_cap=30.0, max_wait=60.0)
    for retry_after in (86_400.0, 1e300, float("inf")):
        assert backoff_delay(3, policy, random.Random(0), retry_after=retry_after) == 60.0
    with pytest.raises(ValueError):
        RetryPolicy(max_wait=-1)
