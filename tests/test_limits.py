"""Governor and rate-limit tests on a virtual-time event loop (``tests/conftest.py``): no real
sleeping, exact timings. The Governor and aiolimiter both wait on loop timers and read
``loop.time()``, so the loop's clock is a fake clock for everything at once.
"""

from __future__ import annotations

import asyncio
import bisect
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulkpix.errors import NotFound, QuotaExceeded, ServerError
from bulkpix.transfer.limits import Governor
from bulkpix.transfer.rate import QUOTA_PERIOD_S, rate_shape
from tests.conftest import loop_now as now
from tests.conftest import run_virtual


def test_virtual_clock_does_not_really_sleep() -> None:
    async def main() -> float:
        await asyncio.sleep(3600)
        return now()

    assert run_virtual(main) == pytest.approx(3600)


def test_in_flight_never_exceeds_limit_even_while_it_changes() -> None:
    rng = random.Random(7)
    over_limit: list[tuple[int, int]] = []
    peak = 0

    async def main() -> Governor:
        nonlocal peak
        governor = Governor(8, qps=1000)

        async def request() -> None:
            nonlocal peak
            try:
                async with governor.slot():
                    if governor.in_flight > governor.limit:
                        over_limit.append((governor.in_flight, governor.limit))
                    peak = max(peak, governor.in_flight)
                    await asyncio.sleep(rng.uniform(0.01, 0.5))
                    if rng.random() < 0.05:
                        raise QuotaExceeded("429", status=429)
            except QuotaExceeded:
                pass

        await asyncio.gather(*(request() for _ in range(600)))
        return governor

    governor = run_virtual(main)
    assert over_limit == []
    assert peak == 8  # the cap is actually used
    assert governor.cuts >= 1 and governor.in_flight == 0


def test_burst_of_429s_cuts_once_per_generation_to_what_the_server_held() -> None:
    async def main() -> None:
        governor = Governor(40, qps=1e6)
        release = asyncio.Event()
        all_in = asyncio.Event()

        async def request() -> None:
            # A server with room for 8: the 9th and later of ours are refused.
            async with governor.slot():
                k = governor.in_flight
                if k == 40:
                    all_in.set()
                await release.wait()
                if k > 8:
                    raise QuotaExceeded("429", status=429)

        burst = [asyncio.create_task(request()) for _ in range(40)]
        await all_in.wait()
        release.set()
        results = await asyncio.gather(*burst, return_exceptions=True)
        assert sum(isinstance(r, QuotaExceeded) for r in results) == 32
        # One cut for the whole burst: halved (at most), toward the 8 the server held.
        assert (governor.limit, governor.cuts, governor.throttles) == (20, 1, 32)

        # A 429 from a request granted after the cut is new information: cut again, by at
        # most half.
        release2 = asyncio.Event()
        holders = [asyncio.create_task(_hold(governor, release2)) for _ in range(7)]
        await asyncio.sleep(0)
        with pytest.raises(QuotaExceeded):
            async with governor.slot():
                raise QuotaExceeded("429", status=429)
        assert (governor.limit, governor.cuts) == (10, 2)
        with pytest.raises(QuotaExceeded):  # refused with 8 in flight: down to 7 held, ...
            async with governor.slot():
                raise QuotaExceeded("429", status=429)
        assert (governor.limit, governor.cuts) == (7, 3)
        release2.set()
        await asyncio.gather(*holders)

    run_virtual(main)


async def _hold(governor: Governor, release: asyncio.Event) -> None:
    async with governor.slot():
        await release.wait()


def test_cuts_stop_at_min_concurrency() -> None:
    async def main() -> None:
        governor = Governor(40, qps=1e6, min_concurrency=3)
        for _ in range(10):
            with pytest.raises(QuotaExceeded):
                async with governor.slot():
                    raise QuotaExceeded("429", status=429)
        assert governor.limit == 3

    run_virtual(main)


def test_recovers_slowly_near_the_ceiling_never_above_the_cap() -> None:
    async def main() -> None:
        governor = Governor(8, qps=1e6)
        release = asyncio.Event()
        holders = [asyncio.create_task(_hold(governor, release)) for _ in range(7)]
        await asyncio.sleep(0)
        with pytest.raises(QuotaExceeded):  # refused with 8 in flight: the server holds 7
            async with governor.slot():
                raise QuotaExceeded("429", status=429)
        assert governor.limit == 7
        release.set()
        await asyncio.gather(*holders)  # granted before the cut: they do not count

        limits = []
        for _ in range(100):
            async with governor.slot():
                pass
            limits.append(governor.limit)
        # At the ceiling the server showed, one probe per 8 x limit successes.
        assert limits.index(8) == 8 * 7 - 1
        assert max(limits) == 8 and limits[-1] == 8

    run_virtual(main)


def test_recovers_at_the_normal_pace_after_a_stray_429() -> None:
    async def main() -> None:
        governor = Governor(40, qps=1e6)
        with pytest.raises(QuotaExceeded):  # refused with only itself in flight
            async with governor.slot():
                raise QuotaExceeded("429", status=429)
        assert governor.limit == 20  # halved at most

        limits = []
        for _ in range(600):
            async with governor.slot():
                pass
            limits.append(governor.limit)
        # +1 per `limit` successes: 20 at 20, 21 at 21, ... back at the cap of 40.
        assert limits.index(21) == 19
        assert limits.index(22) == 19 + 21
        assert max(limits) == 40 and limits.index(40) == sum(range(20, 40)) - 1

    run_virtual(main)


def test_requests_granted_before_a_cut_do_not_count_toward_recovery() -> None:
    async def main() -> None:
        governor = Governor(40, qps=1e6)
        release = asyncio.Event()
        old = [asyncio.create_task(_hold(governor, release)) for _ in range(30)]
        await asyncio.sleep(0.1)
        with pytest.raises(QuotaExceeded):
            async with governor.slot():
                raise QuotaExceeded("429", status=429)
        assert governor.limit == 30  # the server held the 30 others
        release.set()
        await asyncio.gather(*old)
        assert governor.limit == 30  # thirty old successes would otherwise have raised it

    run_virtual(main)


def _max_in_window(times: list[float], width: float) -> int:
    """The most starts in any half-open window [t, t + width)."""
    times = sorted(times)
    return max(bisect.bisect_left(times, t + width) - i for i, t in enumerate(times))


async def _instant_requests(governor: Governor, count: int) -> list[float]:
    starts: list[float] = []

    async def request() -> None:
        async with governor.slot():
            starts.append(now())

    await asyncio.gather(*(request() for _ in range(count)))
    return starts


@pytest.mark.parametrize(("concurrency", "qps", "first_wave"),
                         [(40, 100.0, 40), (8, 100.0, 8), (40, 50.0, 30), (40, 1.0, 1)])
def test_first_wave_starts_at_once_then_evenly_just_under_qps(
        concurrency: int, qps: float, first_wave: int) -> None:
    # Requests that take no time: only the rate limit holds them back.
    starts = run_virtual(lambda: _instant_requests(Governor(concurrency, qps=qps), 200))
    # Up to the concurrency cap at once (the burst takes at most 1% of a minute's count)...
    assert starts.count(0.0) == first_wave
    # ...then one start every 1 / (0.98 qps): evenly, not in per-second waves.
    gaps = [b - a for a, b in zip(starts[first_wave - 1:], starts[first_wave:], strict=False)]
    assert max(gaps) == pytest.approx(1 / (0.98 * qps))
    assert min(gaps) == pytest.approx(1 / (0.98 * qps))


@pytest.mark.parametrize("qps", [100.0, 10.0, 2.5, 0.5])
def test_no_minute_counts_more_than_the_quota_and_the_long_run_stays_under_qps(
        qps: float) -> None:
    """Bursts of work after idle spells refill the bucket again and again: still, no window of
    a minute (rolling, so any fixed one too) holds more than 60 x qps starts."""
    rng = random.Random(5)
    minutes = 3

    async def main() -> list[float]:
        governor = Governor(40, qps=qps)
        starts: list[float] = []

        async def request() -> None:
            async with governor.slot():
                starts.append(now())
                await asyncio.sleep(rng.uniform(0.0, 0.5))

        async def arrivals() -> None:
            while now() < minutes * QUOTA_PERIOD_S:
                # A spell of work (more than the quota can serve), then an idle spell.
                await asyncio.gather(*(request() for _ in range(int(qps * 3) + 40)))
                await asyncio.sleep(rng.uniform(0.5, 20.0))
        await arrivals()
        return starts

    starts = run_virtual(main)
    shape = rate_shape(qps, max_burst=40)
    assert _max_in_window(starts, QUOTA_PERIOD_S) <= qps * QUOTA_PERIOD_S
    assert _max_in_window(starts, QUOTA_PERIOD_S) <= shape.max_starts(QUOTA_PERIOD_S) + 1e-9
    # Over the whole run, less the first burst: at or under qps.
    assert (len(starts) - shape.burst) / (max(starts) - min(starts)) <= qps
    # Any one second holds at most the burst plus a second's rate (never a bucket's worth more).
    assert _max_in_window(starts, 1.0) <= shape.max_starts(1.0) + 1e-9


@given(qps=st.floats(min_value=1 / 60, max_value=1e5), max_burst=st.integers(1, 1000))
def test_the_bucket_always_fits_the_minute(qps: float, max_burst: int) -> None:
    shape = rate_shape(qps, max_burst)
    assert 1 <= shape.burst <= max_burst
    assert 0 < shape.rate <= qps
    assert shape.max_starts(QUOTA_PERIOD_S) <= qps * QUOTA_PERIOD_S * (1 + 1e-12) or \
        qps * QUOTA_PERIOD_S < 1.0 + 1e-9  # a quota of one start a minute fits only the burst
    if qps >= 100 and max_burst <= 40:  # the documented quota: the whole first wave at once
        assert shape.burst == max_burst and shape.rate == pytest.approx(0.98 * qps)


def test_retry_after_pauses_new_grants() -> None:
    async def main() -> None:
        governor = Governor(4, qps=1e6)
        with pytest.raises(QuotaExceeded):
            async with governor.slot():
                raise QuotaExceeded("429", status=429, retry_after=5.0)
        assert governor.paused
        assert governor.stats().paused_s == pytest.approx(5.0)
        async with governor.slot():
            granted_at = now()
        assert granted_at == pytest.approx(5.0)
        assert not governor.paused

    run_virtual(main)


def test_retry_after_on_a_server_error_pauses_without_cutting() -> None:
    async def main() -> None:
        governor = Governor(4, qps=1e6)
        with pytest.raises(ServerError):
            async with governor.slot():
                raise ServerError("503", status=503, retry_after=2.0)
        assert (governor.limit, governor.cuts) == (4, 0)
        async with governor.slot():
            assert now() == pytest.approx(2.0)

    run_virtual(main)


def test_retry_after_is_capped() -> None:
    async def main() -> None:
        governor = Governor(4, qps=1e6, max_pause_s=60)
        with pytest.raises(QuotaExceeded):
            async with governor.slot():
                raise QuotaExceeded("429", status=429, retry_after=86400)
        async with governor.slot():
            assert now() == pytest.approx(60.0)

    run_virtual(main)


def test_no_recovery_while_paused() -> None:
    """A success that lands during a Retry-After pause does not raise the limit."""

    async def main() -> None:
        governor = Governor(8, qps=1e6)
        with pytest.raises(QuotaExceeded):  # t=0: a stray 429 halves 8 -> 4, generation 1
            async with governor.slot():
                raise QuotaExceeded("429", status=429)
        assert governor.limit == 4

        async def brings_retry_after() -> None:  # generation 1, a 503 at t=1
            with pytest.raises(ServerError):
                async with governor.slot():
                    await asyncio.sleep(1.0)
                    raise ServerError("503", status=503, retry_after=10.0)

        async def succeeds_while_paused() -> None:  # generation 1, succeeds at t=3
            async with governor.slot():
                await asyncio.sleep(3.0)

        await asyncio.gather(brings_retry_after(), succeeds_while_paused())
        assert governor.paused
        limits = []
        for _ in range(4):
            async with governor.slot():  # the first waits for the pause to end at t=11
                pass
            limits.append(governor.limit)
        assert now() == pytest.approx(11.0)
        # Four successes raise 4 -> 5; had the paused one counted, three would have.
        assert limits == [4, 4, 4, 5]

    run_virtual(main)


def test_other_errors_are_neutral() -> None:
    async def main() -> None:
        governor = Governor(4, qps=1e6)
        for _ in range(10):
            with pytest.raises(NotFound):
                async with governor.slot():
                    raise NotFound("404", status=404)
        assert (governor.limit, governor.cuts, governor.in_flight) == (4, 0, 0)

    run_virtual(main)


def test_cancelled_waiters_leave_no_reserved_slots() -> None:
    async def main() -> None:
        governor = Governor(2, qps=1.0)  # slow rate: waiters pile up in the rate limiter
        hold = asyncio.Event()

        async def holder() -> None:
            async with governor.slot():
                await hold.wait()

        holders = [asyncio.create_task(holder()) for _ in range(2)]
        waiters = [asyncio.create_task(holder()) for _ in range(5)]
        await asyncio.sleep(5)
        assert governor.in_flight == 2
        for task in waiters:
            task.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        hold.set()
        await asyncio.gather(*holders)
        assert governor.in_flight == 0
        # Both slots are grantable again (nothing leaked into the reservations).
        both_in = asyncio.Event()

        async def pair() -> None:
            async with governor.slot():
                if governor.in_flight == 2:
                    both_in.set()
                await both_in.wait()

        await asyncio.wait_for(asyncio.gather(pair(), pair()), timeout=10)

    run_virtual(main)


def test_cancelling_a_waiter_that_holds_a_reservation_wakes_the_next() -> None:
    granted: dict[str, float] = {}

    async def main() -> None:
        governor = Governor(2, qps=1.0)  # one start per second
        done = asyncio.Event()

        async def request(key: str) -> None:
            async with governor.slot():
                granted[key] = now()
                await done.wait()

        a = asyncio.create_task(request("a"))  # t=0, holds its slot for good
        await asyncio.sleep(0.1)
        b = asyncio.create_task(request("b"))  # reserves the 2nd slot, waits for t=1
        await asyncio.sleep(0.1)
        c = asyncio.create_task(request("c"))  # no slot free: waits for capacity
        await asyncio.sleep(0.3)
        b.cancel()
        await asyncio.sleep(2.0)
        assert "c" in granted  # woken by b's cancellation, not stuck until a finishes
        done.set()
        await asyncio.gather(a, c, b, return_exceptions=True)

    run_virtual(main)
    assert granted["c"] == pytest.approx(1 / 0.98)  # one start a second, less 2% headroom
    assert "b" not in granted


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        Governor(0, qps=10)
    with pytest.raises(ValueError):
        Governor(4, qps=0)
    with pytest.raises(ValueError):
        Governor(4, qps=10, min_concurrency=5)
