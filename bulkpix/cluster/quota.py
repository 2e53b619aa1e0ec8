"""One quota for a whole Dask cluster: the run's Governor lives on the scheduler.

The quota belongs to the Cloud project, not to a machine, so the limits that keep one process
inside it (``bulkpix.transfer.limits.Governor``: adaptive concurrency, aiolimiter's rate, the
Retry-After pause) run once, on the scheduler, as a scheduler plugin. A worker's request asks
for a slot with one RPC and gives it back, with its outcome, on the worker's batched stream:
a 429 one worker sees cuts the one limit, and the whole cluster slows.

Why this design, of the three the issue names (benchmarks/RESULTS.md has the measurements):

* ``distributed.Semaphore`` counts concurrency only (no rate, no 429 feedback), and its leases
  expire when a busy worker misses a refresh (30 s by default): the cluster then overbooks.
* Fixed shares per worker leave a finished worker's share idle, must be rebalanced as workers
  come and go, and a 429 slows only the worker that saw it.
* This broker: exact limits, the same code as a single-machine run, ~1-2 ms per request on a
  local network against service times of hundreds. Slots held by a worker that dies are given
  back when the scheduler removes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

try:
    from distributed.diagnostics.plugin import SchedulerPlugin
except ImportError as exc:  # the caller (pipeline.run_job) turns this into one line
    raise ImportError(
        f"a Dask run needs dask.distributed: pip install 'bulkpix[dask]' ({exc})"
    ) from None

from bulkpix.errors import QuotaExceeded, RetryableError, RunStopped
from bulkpix.transfer.limits import Governor, Ticket

__all__ = ["ClusterGovernor", "QuotaBroker", "open_quota"]

PLUGIN_NAME = "bulkpix-quota"
_OPEN = "bulkpix_quota_open"
_ACQUIRE = "bulkpix_quota_acquire"
_RELEASE = "bulkpix_quota_release"
_STOP = "bulkpix_quota_stop"
_CLOSE = "bulkpix_quota_close"
_STATS = "bulkpix_quota_stats"

# A dead worker's requests may still be in service (the server notices a closed connection
# late): its slots come back this long after the scheduler removed it, not at once.
ORPHAN_HOLD_S = 2.0

# How a request ended, as sent back with its slot.
_SUCCESS, _THROTTLED, _RETRYABLE, _NEUTRAL = "success", "throttled", "retryable", "neutral"


class _Neutral(Exception):
    """An outcome that says nothing about the quota (a 404, a cancelled request)."""


@dataclass
class _Grant:
    holder: str  # the worker's address
    ticket: Ticket


class _JobQuota:
    """One run's governor and the slots granted from it."""

    def __init__(
        self, concurrency: int, qps: float, max_pause_s: float, client: str = ""
    ) -> None:
        self.client = client  # the submitting client: the run ends if it goes away
        self.governor = Governor(concurrency, qps, max_pause_s=max_pause_s)
        self.grants: dict[int, _Grant] = {}
        self.ids = itertools.count(1)
        self.stopped = asyncio.Event()

    async def acquire(self, holder: str, alive: Callable[[str], bool]) -> dict[str, Any]:
        if self.stopped.is_set():
            return {"stopped": True}
        entering = asyncio.ensure_future(self.governor.acquire())
        stopping = asyncio.ensure_future(self.stopped.wait())
        try:
            await asyncio.wait({entering, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not entering.done():
                entering.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await entering
        if entering.cancelled():
            return {"stopped": True}
        ticket = entering.result()
        if self.stopped.is_set() or not alive(holder):  # stopped, or its worker died meanwhile
            self.governor.release(ticket, _Neutral())
            return {"stopped": True}
        grant = next(self.ids)
        self.grants[grant] = _Grant(holder, ticket)
        return {"grant": grant, "limit": self.governor.limit}

    def release(self, grant: int, outcome: str, retry_after: float | None) -> None:
        entry = self.grants.pop(grant, None)
        if entry is None:  # given back already, when its worker was removed
            return
        error: BaseException | None
        if outcome == _SUCCESS:
            error = None
        elif outcome == _THROTTLED:
            error = QuotaExceeded("429 seen by a worker", status=429, retry_after=retry_after)
        elif outcome == _RETRYABLE:
            error = RetryableError("retryable error seen by a worker", retry_after=retry_after)
        else:
            error = _Neutral()
        self.governor.release(entry.ticket, error)

    def release_holder(self, holder: str) -> None:
        for grant in [g for g, entry in self.grants.items() if entry.holder == holder]:
            self.release(grant, _NEUTRAL, None)

    def close(self) -> None:
        self.stopped.set()
        for grant in list(self.grants):
            self.release(grant, _NEUTRAL, None)


class QuotaBroker(SchedulerPlugin):
    """The scheduler's side: one ``_JobQuota`` per run, reached through its handlers."""

    name = PLUGIN_NAME
    idempotent = True  # a second run's registration keeps the quotas of runs under way

    def __init__(self) -> None:
        self._jobs: dict[str, _JobQuota] = {}
        self._scheduler: Any = None

    async def start(self, scheduler: Any) -> None:
        self._scheduler = scheduler
        scheduler.handlers.update(
            {
                _OPEN: self._open,
                _ACQUIRE: self._acquire,
                _STOP: self._stop,
                _CLOSE: self._close,
                _STATS: self._stats,
            }
        )
        scheduler.stream_handlers[_RELEASE] = self._release

    def remove_client(self, scheduler: Any, client: str) -> None:
        # The submitting client died (or left): its batches stop at their next request,
        # freeing the workers; a rerun resumes from the store's record.
        for job in [job for job, quota in self._jobs.items() if quota.client == client]:
            self._close(job)

    def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        for quota in self._jobs.values():
            asyncio.get_running_loop().call_later(ORPHAN_HOLD_S, quota.release_holder, worker)

    # -- handlers (keyword arguments, as distributed passes them) ------------------------
    def _open(
        self, job: str, concurrency: int, qps: float, max_pause_s: float, client: str = ""
    ) -> None:
        if job not in self._jobs:
            self._jobs[job] = _JobQuota(concurrency, qps, max_pause_s, client)

    async def _acquire(self, job: str, holder: str) -> dict[str, Any]:
        quota = self._jobs.get(job)
        if quota is None:  # closed: the submitting client has ended the run
            return {"stopped": True}
        return await quota.acquire(holder, self._alive)

    def _release(
        self, job: str, grant: int, outcome: str, retry_after: float | None, worker: str = ""
    ) -> None:
        quota = self._jobs.get(job)
        if quota is not None:
            quota.release(grant, outcome, retry_after)

    def _stop(self, job: str) -> None:
        quota = self._jobs.get(job)
        if quota is not None:
            quota.stopped.set()

    def _close(self, job: str) -> None:
        quota = self._jobs.pop(job, None)
        if quota is not None:
            quota.close()

    def _stats(self, job: str) -> dict[str, Any] | None:
        quota = self._jobs.get(job)
        if quota is None:
            return None
        stats = quota.governor.stats()
        return {
            "limit": stats.limit,
            "in_flight": stats.in_flight,
            "granted": stats.granted,
            "throttles": stats.throttles,
            "cuts": stats.cuts,
        }

    def _alive(self, holder: str) -> bool:
        return holder in self._scheduler.workers


@contextlib.asynccontextmanager
async def open_quota(
    dask_client: Any, job_id: str, concurrency: int, qps: float, max_pause_s: float
) -> AsyncIterator[None]:
    """The submitting client's side: the run's quota exists on the scheduler for the block."""
    await dask_client.register_plugin(QuotaBroker())
    await dask_client.scheduler.bulkpix_quota_open(
        job=job_id, concurrency=concurrency, qps=qps, max_pause_s=max_pause_s,
        client=dask_client.id,
    )
    try:
        yield
    finally:
        with contextlib.suppress(Exception):  # the scheduler may be gone: nothing to close
            await dask_client.scheduler.bulkpix_quota_close(job=job_id)


class ClusterGovernor:
    """A worker's face of the cluster's quota, with ``Governor.slot()``'s contract: one RPC
    takes a slot; the outcome goes back on the batched stream (no round trip)."""

    def __init__(self, worker: Any, job_id: str, stop: asyncio.Event) -> None:
        self._worker = worker
        self._job = job_id
        self._stop = stop
        self.limit = 0  # the cluster's limit, as last granted
        self.throttles = 0  # 429s this worker saw

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._stop.is_set():
            raise RunStopped("the run is stopping")
        reply = await self._worker.scheduler.bulkpix_quota_acquire(
            job=self._job, holder=self._worker.address
        )
        if reply.get("stopped"):
            self._stop.set()
            raise RunStopped("the run is stopping")
        self.limit = reply["limit"]
        outcome, retry_after = _SUCCESS, None
        try:
            yield
        except QuotaExceeded as exc:
            self.throttles += 1
            outcome, retry_after = _THROTTLED, exc.retry_after
            raise
        except RetryableError as exc:
            outcome, retry_after = _RETRYABLE, exc.retry_after
            raise
        except BaseException:
            outcome = _NEUTRAL
            raise
        finally:
            self._worker.batched_stream.send(
                {
                    "op": _RELEASE,
                    "job": self._job,
                    "grant": reply["grant"],
                    "outcome": outcome,
                    "retry_after": retry_after,
                }
            )
