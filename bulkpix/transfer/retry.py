"""Retries, the stamina way: a predicate, a pure backoff function, and one loop.

* :func:`is_retryable` decides *whether* (only ``RetryableError`` subclasses);
* :func:`backoff_delay` decides *how long* (capped exponential, full jitter, at least the
  server's Retry-After) and is pure, so it is tested without a clock;
* :class:`RetryBudget` caps the retries of a whole run, so a dying service costs a bounded
  number of extra calls instead of ``max_attempts`` per tile;
* :func:`retrying` is the only retry loop in the project.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from bulkpix.errors import RetryableError

__all__ = ["RetryBudget", "RetryPolicy", "backoff_delay", "is_retryable", "retrying"]

T = TypeVar("T")

# 2**64 * base is far beyond any sane cap; clamping keeps 2**attempt from overflowing a float.
_MAX_EXPONENT = 64


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """The job's ``retries:`` section, field for field
    (``RetryPolicy(**job.retries.model_dump())``).

    ``max_attempts`` counts every call, the first one included. ``backoff_cap`` caps the
    backoff bulkpix chooses; ``max_wait`` caps any wait, a server's Retry-After included (a
    Retry-After of a day, or of 1e300 s, must not hang a run), but never below
    ``backoff_cap`` (see ``longest_wait``). ``budget`` is the run's retries in all (the
    total of its ``RetryBudget``).
    """

    max_attempts: int = 8
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    budget: int = 10_000
    max_wait: float = 300.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.backoff_base < 0 or self.backoff_cap < 0 or self.max_wait < 0:
            raise ValueError("backoff_base, backoff_cap and max_wait must be >= 0")
        if self.budget < 0:
            raise ValueError(f"budget must be >= 0, got {self.budget}")

    @property
    def longest_wait(self) -> float:
        """The longest any wait may be: ``max_wait``, never below the backoff cap."""
        return max(self.max_wait, self.backoff_cap)


def is_retryable(exc: BaseException) -> bool:
    """Only errors that say so are retried; bugs and permanent errors are not."""
    return isinstance(exc, RetryableError)


def backoff_delay(
    attempt: int,
    policy: RetryPolicy,
    rng: random.Random,
    retry_after: float | None = None,
) -> float:
    """Seconds to wait after the failed attempt number ``attempt`` (0 for the first call).

    Full jitter, ``uniform(0, min(cap, base * 2**attempt))``, spreads the retries of many
    tiles that failed together; a server's Retry-After is a floor, up to ``longest_wait``.
    """
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    ceiling = min(policy.backoff_cap, policy.backoff_base * 2.0 ** min(attempt, _MAX_EXPONENT))
    delay = rng.uniform(0.0, ceiling)
    if retry_after is not None and retry_after > delay:
        delay = float(retry_after)
    return min(delay, policy.longest_wait)


class RetryBudget:
    """Retries left for the whole run, shared by all tiles."""

    def __init__(self, total: int) -> None:
        if total < 0:
            raise ValueError(f"total must be >= 0, got {total}")
        self.total = total
        self.spent = 0

    @property
    def remaining(self) -> int:
        return self.total - self.spent

    def try_spend(self) -> bool:
        """Take one retry; False when the budget is used up."""
        if self.spent >= self.total:
            return False
        self.spent += 1
        return True

    def __repr__(self) -> str:
        return f"RetryBudget(total={self.total}, spent={self.spent})"


async def retrying(
    fn: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    budget: RetryBudget | None,
    rng: random.Random,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    on_retry: Callable[[BaseException, int, float], object] | None = None,
) -> T:
    """Call ``fn()`` until it succeeds, fails permanently, or attempts/budget run out.

    The last error is raised as is (with a note saying why retrying stopped).
    ``on_retry(exc, attempt, delay)`` is called before each wait; ``attempt`` is the 0-based
    number of the call that failed. ``budget=None`` means no run-wide limit.
    """
    attempt = 0
    while True:
        try:
            return await fn()
        except Exception as exc:
            if not is_retryable(exc):
                raise
            if attempt + 1 >= policy.max_attempts:
                exc.add_note(f"bulkpix: gave up after {attempt + 1} attempts")
                raise
            if budget is not None and not budget.try_spend():
                exc.add_note(f"bulkpix: run retry budget of {budget.total} used up")
                raise
            delay = backoff_delay(attempt, policy, rng, getattr(exc, "retry_after", None))
            if on_retry is not None:
                on_retry(exc, attempt, delay)
            await sleep(delay)
            attempt += 1
