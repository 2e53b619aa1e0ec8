"""The request rate: aiolimiter's leaky bucket, sized for the service's per-minute quota.

The service documents its rate quota as 100/s, that is 6,000 a minute, and its 429 for it names
a per-minute limit. A bucket of capacity ``burst`` that drains at ``rate`` per second lets at
most ``burst + rate * T`` starts into any T seconds. So with

* ``rate`` just under ``qps`` (98%), the long-run rate keeps under the quota, and
* ``burst`` up to the concurrency cap, a run's first wave starts at once,

and ``burst + 60 * rate`` within the minute's count (the burst takes at most 1% of it, and 1%
is left for jitter between our clock and the server's), no minute, rolling or fixed, ever
counts more than ``60 * qps`` starts. After the first wave, starts come evenly, one every
``1 / rate`` seconds, not in per-second waves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from aiolimiter import AsyncLimiter

__all__ = ["QUOTA_PERIOD_S", "RateShape", "limiter_for_quota", "rate_shape"]

QUOTA_PERIOD_S = 60.0  # the service counts its rate quota per minute
RATE_SHARE = 0.98  # the long-run rate, as a share of qps
JITTER_SHARE = 0.01  # of a minute's count, left free for latency jitter; the burst gets the rest


@dataclass(frozen=True, slots=True)
class RateShape:
    """A leaky bucket: ``burst`` starts at once from idle, then ``rate`` per second."""

    burst: int
    rate: float

    def max_starts(self, seconds: float) -> float:
        """The most starts the bucket lets into any window of this many seconds."""
        return self.burst + self.rate * seconds


def rate_shape(qps: float, max_burst: int) -> RateShape:
    """The bucket for a quota of ``qps`` (counted per minute) and at most ``max_burst`` at once."""
    if not (qps > 0 and math.isfinite(qps)) or max_burst < 1:
        raise ValueError("qps must be a positive number and max_burst >= 1")
    allowance = qps * QUOTA_PERIOD_S  # starts the service counts in one minute
    rate = qps * RATE_SHARE
    spare = allowance * (1.0 - RATE_SHARE - JITTER_SHARE)
    burst = max(1, min(max_burst, math.floor(spare + 1e-9)))
    # Below about 0.8/s even a burst of one does not fit: slow the rate to pay for it. (A quota
    # under one start a minute cannot be kept per minute; the long-run rate still is.)
    if burst + rate * QUOTA_PERIOD_S > allowance > burst:
        rate = (allowance - burst) / QUOTA_PERIOD_S
    return RateShape(burst, rate)


def limiter_for_quota(qps: float, max_burst: int) -> AsyncLimiter:
    """aiolimiter's ``AsyncLimiter`` shaped by :func:`rate_shape`. Times are the loop's."""
    shape = rate_shape(qps, max_burst)
    # AsyncLimiter(max_rate, time_period): capacity max_rate, drained at max_rate / time_period.
    return AsyncLimiter(shape.burst, shape.burst / shape.rate)
