"""A job on a local Dask cluster: throughput against the number of workers, and what the
shared quota costs per request.

    python -m benchmarks.cluster [--size default|small] [--json PATH] [--workdir DIR]

1. Throughput: one synthetic asset served by the emulator in its own process (the
   ``bulkpix emulator`` CLI) with a service-time model, fetched by the same job without Dask
   (plain ``run_job``, the baseline row) and on a ``distributed.LocalCluster`` of 1, 2 and 4
   worker processes of one thread each:

   a) ``unbound``: the emulator's quota far above the job's, the job's concurrency high and its
      qps far above what the service time allows: the workers' CPU (and the emulator's, on the
      same cores) is what can limit it;
   b) ``quota_bound``: the job's qps low and the emulator's quota equal to the job's: the run
      should take requests / qps whatever the number of workers.

   ``unbound`` runs again on clusters whose workers lack the ``MALLOC_TRIM_THRESHOLD_=65536``
   Dask's nanny gives them by default ("trim off" rows): with it, every large buffer is a
   fresh mmap, and a worker spends about twice the CPU of a plain process on the same tiles.

   Each row: wall time of ``run_job`` (metadata, planning, submission included), MB/s of pixel
   bytes delivered (1 MB = 1e6 bytes), tiles/s, getPixels requests/s, the quota's ideal, the
   peak ``in_flight`` the emulator logged and its 429s, and the CPU seconds of the worker
   processes (psutil on the pids ``client.run(os.getpid)`` names), of this process (the
   scheduler and the submitting client live here) and of the emulator.

   Where the emulator runs: its own process, on the same two cores (``taskset`` could only
   give it one of the two, halving the workers'). When this process may (root), the emulator
   is reniced to -5 so the workers' CPU does not stretch its service times; the JSON says
   whether it was.

2. The quota's cost per request: bulkpix's broker (``bulkpix.cluster.quota``: one RPC to
   ``bulkpix_quota_acquire``, the release sent on the worker's batched stream, no round trip)
   against ``distributed.Semaphore(max_leases=N)`` (an acquire RPC and a release RPC),
   ``--acquisitions`` in all from N coroutines spread over the 2 workers' event loops, each
   slot held for no time: mean and p99 round trip of the acquire, and of acquire + release.
   Twice: contending for N slots (a coroutine that gives a slot back and asks again waits
   until its release has reached the scheduler), and for 2N (a slot is always free: the bare
   round trip). The Semaphore counts concurrency only: no rate limit, no 429 feedback (and
   its leases lapse when a busy worker misses a refresh).

The unbound rows are the fastest of ``repeats`` runs (3 by default; every wall time is in the
table's last column), interleaved (no Dask, trim on, trim off, one batch, again): the machine's
cores are shared with other sessions, and rows compared must have seen the same load. The
"no Dask" row is the fastest of its runs across all worker counts.

Measured on the 2-core development machine (AMD EPYC, December 2026, 1-min load 6 to 9.5
from other sessions), at the defaults: quota-bound, 6.5 to 6.8 s for 1, 2 and 4 workers
against the quota's 6.7 s, never more than 8 in flight, no 429; unbound, no Dask 127 MB/s,
1/2/4 workers 57/48/71 MB/s (trim off 66/69/90; one batch per worker 112): on two cores the
workers share the CPU with the emulator, so more workers cannot add throughput here. The
broker's acquire + release cost 12 to 16 ms a request on that loaded machine, a Semaphore's
14 to 25.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from benchmarks.emulator_process import EmulatorProcess, EmulatorSettings
from benchmarks.ideal import ideal_for_requests
from benchmarks.machine import describe_machine
from benchmarks.request_stats import most_in_any_window

__all__ = ["SIZES", "ClusterSize", "main", "quota_overhead", "throughput"]

DEFAULT_JSON = Path(__file__).parent / "results" / "cluster.json"
EMULATOR_NICE = -5
OVERHEAD_WORKERS = 2
TRIM_VARIABLE = "MALLOC_TRIM_THRESHOLD_"
# Why the "trim off" rows: Dask's nanny starts each worker with MALLOC_TRIM_THRESHOLD_=65536
# (distributed.nanny.pre-spawn-environ). Setting it turns off glibc's dynamic mmap threshold,
# so every response body and chunk buffer over 128 KiB is a fresh mmap: page faults and
# system time that a plain process does not pay.


@dataclass(frozen=True)
class Scenario:
    """One job against one emulator: its asset, tiles, the job's and the server's quota."""

    name: str
    side: int  # the synthetic asset is side x side px
    tile: int
    concurrency: int
    qps: float
    server_concurrent: int
    server_qps: float
    service_base_s: float
    service_per_mb_s: float


@dataclass(frozen=True)
class ClusterSize:
    unbound: Scenario
    quota_bound: Scenario
    workers: tuple[int, ...]
    slots: int  # N of the quota-cost benchmark
    acquisitions: int
    repeats: int  # runs of each unbound row (the cores are shared): the fastest is reported


SIZES: dict[str, ClusterSize] = {
    "default": ClusterSize(
        # 100 tiles of 512 x 512 (3.4 MB counted, 2.4 MB delivered; 0.27 s each): 32 in
        # flight could deliver ~280 MB/s, more than one worker's core decodes and writes.
        unbound=Scenario("unbound", side=5120, tile=512, concurrency=32, qps=1000.0,
                         server_concurrent=1000, server_qps=10000.0,
                         service_base_s=0.1, service_per_mb_s=0.05),
        # 100 tiles of 256 x 256 at 15/s: 6.7 s whatever the workers; 8 in flight would allow
        # ~55/s, so the rate is what binds. The emulator counts its qps per rolling minute,
        # as the service does.
        quota_bound=Scenario("quota_bound", side=2560, tile=256, concurrency=8, qps=15.0,
                             server_concurrent=8, server_qps=15.0,
                             service_base_s=0.1, service_per_mb_s=0.05),
        workers=(1, 2, 4), slots=8, acquisitions=1000, repeats=3,
    ),
    "small": ClusterSize(
        # 64 tiles: batches of four waves (16 tiles) go round both workers.
        unbound=Scenario("unbound", side=2048, tile=256, concurrency=8, qps=1000.0,
                         server_concurrent=1000, server_qps=10000.0,
                         service_base_s=0.02, service_per_mb_s=0.0),
        quota_bound=Scenario("quota_bound", side=1024, tile=256, concurrency=2, qps=20.0,
                             server_concurrent=2, server_qps=20.0,
                             service_base_s=0.02, service_per_mb_s=0.0),
        workers=(2,), slots=4, acquisitions=40, repeats=1,
    ),
}


def _asset(scenario: Scenario) -> str:
    return f"projects/bench/assets/{scenario.name}"


def _settings(scenario: Scenario) -> EmulatorSettings:
    return EmulatorSettings(assets=((_asset(scenario), scenario.side, scenario.side),),
                            max_concurrent=scenario.server_concurrent,
                            max_qps=scenario.server_qps,
                            service_base_s=scenario.service_base_s,
                            service_per_mb_s=scenario.service_per_mb_s,
                            service_jitter=0.0)


def _job(scenario: Scenario, url: str, output: Path) -> Any:
    from bulkpix.job import parse_job

    return parse_job({
        "asset": _asset(scenario), "output": str(output), "endpoint": url,
        "credentials": "none", "chunk": scenario.tile, "tile": [scenario.tile, scenario.tile],
        "concurrency": scenario.concurrency, "qps": scenario.qps,
    })


def _renice(pid: int) -> bool:
    """Give the emulator priority over the clients on the shared cores, if allowed."""
    try:
        psutil.Process(pid).nice(EMULATOR_NICE)
    except (psutil.AccessDenied, PermissionError):
        return False
    return True


def _cpu_s(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


def _sampled_exact(output: Path, side: int) -> bool:
    """Every 61st row of every band equals the synthetic truth (a full read would cost more
    than the run on these cores)."""
    import zarr

    from bulkpix.emulator.synthetic import SYNTHETIC_BANDS, synthetic_pixels

    group = zarr.open_group(output, mode="r")
    rows = np.arange(0, side, 61)
    cols = np.arange(side)
    for index, (band, _) in enumerate(SYNTHETIC_BANDS):
        array = group[band]
        assert isinstance(array, zarr.Array)
        got = array.get_orthogonal_selection((rows, slice(None)))
        if not np.array_equal(got, synthetic_pixels(index, rows, cols)):
            return False
    return True


async def _one_run(scenario: Scenario, emu: EmulatorProcess, workdir: Path, label: str,
                   client: Any, worker_pids: Sequence[int],
                   batch_tiles: int | None = None) -> dict[str, Any]:
    from bulkpix.job import Executor
    from bulkpix.pipeline import run_job

    output = workdir / f"{scenario.name}-{label}.zarr"
    job = _job(scenario, emu.url, output)
    if batch_tiles is not None:
        executor = Executor(dask=client.scheduler.address, batch_tiles=batch_tiles)
        job = job.model_copy(update={"executor": executor})
    me = psutil.Process()
    before_workers, before_me, before_emu = _cpu_s(worker_pids), me.cpu_times(), emu.cpu_s()
    since = time.time()
    started = time.perf_counter()
    stats = await run_job(job, dask_client=client)
    wall_s = time.perf_counter() - started
    until = time.time()
    after_me = me.cpu_times()
    row_cpu = {
        "workers_cpu_s": round(_cpu_s(worker_pids) - before_workers, 2) if worker_pids else None,
        "harness_cpu_s": round(after_me.user + after_me.system
                               - before_me.user - before_me.system, 2),
        "emulator_cpu_s": round(emu.cpu_s() - before_emu, 2),
    }
    await asyncio.sleep(0.2)  # the emulator's last log lines are flushed after the answer
    calls = [r for r in emu.records(since, until + 1.0) if r["op"] == "get_pixels"]
    ok = [r for r in calls if r["status"] == 200]
    nbytes = sum(item.bytes for item in stats.items)
    ideal = ideal_for_requests([int(r["request_size"]) for r in ok],
                               base_s=scenario.service_base_s,
                               per_mb_s=scenario.service_per_mb_s,
                               concurrency=scenario.concurrency, qps=scenario.qps)
    exact = stats.ok and stats.finished == stats.total and _sampled_exact(output, scenario.side)
    shutil.rmtree(output, ignore_errors=True)
    return {
        "run": label,
        "workers": len(worker_pids) if client is not None else 0,
        "malloc_trim_threshold": (None if client is None
                                  else (await client.run(_trim_setting)).popitem()[1]),
        "wall_s": round(wall_s, 2),
        "tiles": stats.finished,
        "mb": round(nbytes / 1e6, 1),
        "mb_per_s": round(nbytes / 1e6 / wall_s, 1),
        "tiles_per_s": round(stats.finished / wall_s, 1),
        "requests": len(calls),
        "requests_per_s": round(len(calls) / wall_s, 1),
        "ideal_s": round(ideal, 2),
        "wall_over_ideal": round(wall_s / ideal, 2) if ideal else None,
        "peak_in_flight": max((r["in_flight"] or 0 for r in calls), default=0),
        "most_in_1s": most_in_any_window([r["time"] for r in calls], 1.0),
        "n_429": sum(1 for r in calls if r["status"] == 429),
        "retries": stats.retries,
        "per_worker_tiles": sorted((w.tiles for w in stats.workers.values()), reverse=True),
        "exact": exact,
        **row_cpu,
    }


@contextlib.asynccontextmanager
async def _cluster(n_workers: int, *, malloc_trim: bool = True
                   ) -> AsyncIterator[tuple[Any, list[int]]]:
    """A LocalCluster of ``n_workers`` processes of one thread, and a client, on 127.0.0.1.
    ``malloc_trim=False`` drops the ``MALLOC_TRIM_THRESHOLD_`` Dask's nanny sets in its
    workers' environment by default (see the note at ``TRIM_VARIABLE``)."""
    import dask
    import distributed

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ"))
    inherited = os.environ.get(TRIM_VARIABLE)
    if not malloc_trim:
        environ.pop(TRIM_VARIABLE, None)
        # The nanny copies its pre-spawn environment into this very process's os.environ,
        # which the next workers inherit: an earlier cluster's setting must not leak in.
        os.environ.pop(TRIM_VARIABLE, None)
    with contextlib.ExitStack() as restore:
        restore.callback(_set_environ, TRIM_VARIABLE, inherited)
        restore.enter_context(dask.config.set({"distributed.nanny.pre-spawn-environ": environ}))
        async with distributed.LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
            # The dashboard (and its HTTP server) on a free local port, not 8787.
            scheduler_port=0, dashboard_address="127.0.0.1:0", asynchronous=True, silence_logs=40,
        ) as local, distributed.Client(local, asynchronous=True) as client:
            await client.wait_for_workers(n_workers)
            # The workers import bulkpix before the clock starts, as a long-lived cluster has.
            await client.run(_warm)
            pids = sorted((await client.run(os.getpid)).values())
            yield client, pids


def _set_environ(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _workers(n: int) -> str:
    return f"{n} worker" + ("s" if n > 1 else "")


def _trim_setting() -> str | None:
    return os.environ.get(TRIM_VARIABLE)


def _warm() -> None:
    import bulkpix.cluster.task
    import bulkpix.pipeline  # noqa: F401


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest of ``runs`` (the one other sessions' load disturbed least), with every
    run's wall time."""
    return min(runs, key=lambda row: row["wall_s"]) | {
        "wall_s_runs": [row["wall_s"] for row in runs],
        "exact": all(row["exact"] for row in runs)}


async def throughput(size: ClusterSize, workdir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both scenarios: the baseline without Dask, then 1, 2, 4 workers; and the quota's cost
    per request, measured on the 2-worker cluster once its runs are over.

    The unbound runs that are compared are interleaved (no Dask, trim on, trim off, ...), so
    each comparison saw the same load from other sessions; the quota-bound runs are paced by
    the quota, not the cores: one run each."""
    overhead: dict[str, Any] = {}
    unbound, bound = size.unbound, size.quota_bound
    runs: dict[str, list[dict[str, Any]]] = {}  # unbound runs by label, in order of labels
    bound_rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        emulators = {}
        reniced = True
        for scenario in (unbound, bound):
            emu = stack.enter_context(EmulatorProcess(_settings(scenario), workdir / scenario.name))
            assert emu._process is not None
            reniced = _renice(emu._process.pid) and reniced
            emulators[scenario.name] = emu
        fast, slow = emulators[unbound.name], emulators[bound.name]
        _warm()

        async def run(label: str, client: Any = None, pids: Sequence[int] = (),
                      batch_tiles: int | None = None) -> None:
            runs.setdefault(label, []).append(
                await _one_run(unbound, fast, workdir, label, client, pids, batch_tiles))

        runs["no Dask"] = []
        bound_rows.append(await _one_run(bound, slow, workdir, "no Dask", None, []))
        for n in size.workers:
            label = _workers(n)
            runs.setdefault(label, [])
            # The same worker count without the MALLOC_TRIM_THRESHOLD_ Dask's nanny sets.
            async with _cluster(n) as (client, pids), \
                    _cluster(n, malloc_trim=False) as (untrimmed, untrimmed_pids):
                for _ in range(size.repeats):
                    await run("no Dask")
                    await run(label, client, pids)
                    await run(f"{label}, trim off", untrimmed, untrimmed_pids)
                    if n == size.workers[0]:
                        # The default cut makes a batch about one wave (the concurrency over
                        # the worker threads), and a worker thread runs one batch at a time:
                        # each batch drains before the next starts. One batch per worker
                        # shows what that costs.
                        tiles = -(-(unbound.side // unbound.tile) ** 2 // n)
                        await run(f"{label}, trim off, one batch each", untrimmed,
                                  untrimmed_pids, tiles)
                bound_rows.append(await _one_run(bound, slow, workdir, label, client, pids))
                if n == OVERHEAD_WORKERS:
                    overhead = await quota_overhead(client, size.slots, size.acquisitions)
    if not overhead:
        async with _cluster(OVERHEAD_WORKERS) as (client, _):
            overhead = await quota_overhead(client, size.slots, size.acquisitions)
    order = ["no Dask", *(_workers(n) for n in size.workers),
             *(label for label in runs if "trim off" in label)]
    rows = {unbound.name: [_best(runs[label]) for label in order],
            bound.name: [_best([row]) for row in bound_rows]}
    return {
        "emulator_reniced": EMULATOR_NICE if reniced else None,
        "scenarios": {
            s.name: {"settings": s.__dict__ | {"tiles": (s.side // s.tile) ** 2},
                     "rows": rows[s.name]}
            for s in (unbound, bound)
        },
    }, overhead


# -- 2. the quota's cost per request --------------------------------------------------------

async def _broker_worker(job_id: str, coroutines: int, each: int) -> list[tuple[float, float]]:
    """On a worker: ``coroutines`` loops of ``each`` slots from the broker."""
    from distributed import get_worker

    from bulkpix.cluster.quota import ClusterGovernor

    governor = ClusterGovernor(get_worker(), job_id, asyncio.Event())

    async def loop() -> list[tuple[float, float]]:
        times = []
        for _ in range(each):
            t0 = time.perf_counter()
            async with governor.slot():
                t1 = time.perf_counter()
            times.append((t1 - t0, time.perf_counter() - t0))
        return times

    results = await asyncio.gather(*(loop() for _ in range(coroutines)))
    return [t for r in results for t in r]


async def _semaphore_worker(semaphore: Any, coroutines: int,
                            each: int) -> list[tuple[float, float]]:
    """On a worker: ``coroutines`` loops of ``each`` leases of a ``distributed.Semaphore``."""

    async def loop() -> list[tuple[float, float]]:
        times = []
        for _ in range(each):
            t0 = time.perf_counter()
            await semaphore.acquire()
            t1 = time.perf_counter()
            await semaphore.release()
            times.append((t1 - t0, time.perf_counter() - t0))
        return times

    results = await asyncio.gather(*(loop() for _ in range(coroutines)))
    return [t for r in results for t in r]


def _summary(times: list[tuple[float, float]]) -> dict[str, Any]:
    acquire = np.array([a for a, _ in times]) * 1e3
    cycle = np.array([c for _, c in times]) * 1e3
    return {"acquisitions": len(times),
            "acquire_mean_ms": round(float(acquire.mean()), 3),
            "acquire_p99_ms": round(float(np.percentile(acquire, 99)), 3),
            "cycle_mean_ms": round(float(cycle.mean()), 3),
            "cycle_p99_ms": round(float(np.percentile(cycle, 99)), 3)}


async def _time_designs(client: Any, slots: int, coroutines: int,
                        acquisitions: int) -> dict[str, Any]:
    """``coroutines`` loops (split over the workers) taking ``acquisitions`` slots in all,
    of ``slots``: from the broker, then from a Semaphore."""
    import distributed

    from bulkpix.cluster.quota import open_quota

    addresses = sorted((await client.scheduler.identity())["workers"])
    per_worker = max(1, coroutines // len(addresses))
    each = max(1, acquisitions // (per_worker * len(addresses)))
    job_id = f"bench-{uuid.uuid4().hex[:8]}"
    # A rate far above any reached: only the concurrency cap, as the Semaphore has.
    async with open_quota(client, job_id, slots, 1e6, 60.0):
        futures = [client.submit(_broker_worker, job_id, per_worker, each, workers=[a],
                                 pure=False) for a in addresses]
        broker = [t for r in await client.gather(futures) for t in r]
    semaphore = await distributed.Semaphore(max_leases=slots, name=f"bench-{job_id}")
    futures = [client.submit(_semaphore_worker, semaphore, per_worker, each, workers=[a],
                             pure=False) for a in addresses]
    leases = [t for r in await client.gather(futures) for t in r]
    await semaphore.close()
    return {"slots": slots, "coroutines": per_worker * len(addresses),
            "broker": _summary(broker), "semaphore": _summary(leases)}


async def quota_overhead(client: Any, slots: int, acquisitions: int) -> dict[str, Any]:
    """Broker against Semaphore on the client's workers: ``slots`` coroutines contending for
    ``slots`` slots (a slot given back must reach the scheduler before it is taken again),
    then for twice as many (a slot is always free: the bare round trip)."""
    return {
        "workers": len((await client.scheduler.identity())["workers"]),
        "contended": await _time_designs(client, slots, slots, acquisitions),
        "free": await _time_designs(client, 2 * slots, slots, acquisitions),
    }


# -- output ---------------------------------------------------------------------------------

def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, list):
        return "/".join(str(v) for v in value)
    return str(value)


def markdown(document: dict[str, Any]) -> str:
    machine = document["meta"]["machine"]
    where = (f"{machine['cpu_model']}, {machine['nproc']} CPUs, 1-min load "
             f"{document['meta']['loadavg_start'][0]} at the start, "
             f"{machine['loadavg'][0]} at the end")
    columns = [("run", "run"), ("wall s", "wall_s"), ("MB/s", "mb_per_s"),
               ("tiles/s", "tiles_per_s"), ("req/s", "requests_per_s"),
               ("ideal s", "ideal_s"), ("wall / ideal", "wall_over_ideal"),
               ("peak in flight", "peak_in_flight"), ("most in 1 s", "most_in_1s"),
               ("429s", "n_429"), ("workers CPU s", "workers_cpu_s"),
               ("scheduler+client CPU s", "harness_cpu_s"), ("emulator CPU s", "emulator_cpu_s"),
               ("tiles per worker", "per_worker_tiles"), ("exact", "exact"),
               ("wall s of each run", "wall_s_runs")]
    lines = []
    for name, scenario in document["throughput"]["scenarios"].items():
        s = scenario["settings"]
        lines += [
            f"### {name}: {s['side']} x {s['side']} px, {s['tiles']} tiles of {s['tile']} px, "
            f"job concurrency {s['concurrency']} / qps {s['qps']:g}, emulator "
            f"{s['server_concurrent']} / {s['server_qps']:g}, service {s['service_base_s']:g} s "
            f"+ {s['service_per_mb_s']:g} s/MB ({where})", "",
            "| " + " | ".join(c for c, _ in columns) + " |",
            "|" + "---|" * len(columns),
        ]
        lines += ["| " + " | ".join(_fmt(row[k]) for _, k in columns) + " |"
                  for row in scenario["rows"]]
        lines.append("")
    q = document["quota_overhead"]
    lines += [
        f"### The quota's cost per request: coroutines on {q['workers']} workers, "
        f"{q['contended']['broker']['acquisitions']} acquisitions each ({where})", "",
        "| design | slots / coroutines | acquire mean ms | acquire p99 ms | "
        "acquire + release mean ms | acquire + release p99 ms | rate limit | 429 feedback |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for setting in ("contended", "free"):
        t = q[setting]
        for name, label, extras in (
                ("broker", "bulkpix broker (RPC + batched release)", "yes | yes"),
                ("semaphore", "distributed.Semaphore", "no | no")):
            f = t[name]
            lines.append(f"| {label} | {t['slots']} / {t['coroutines']} | "
                         f"{f['acquire_mean_ms']} | {f['acquire_p99_ms']} | "
                         f"{f['cycle_mean_ms']} | {f['cycle_p99_ms']} | {extras} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster")
    parser.add_argument("--size", choices=sorted(SIZES), default="default")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON,
                        help=f"write the figures here (default {DEFAULT_JSON})")
    parser.add_argument("--workdir", type=Path, help="outputs and emulator logs (default: temp)")
    parser.add_argument("--acquisitions", type=int, help="quota-cost acquisitions (default "
                        "by size)")
    args = parser.parse_args(argv)
    try:
        import distributed  # noqa: F401
    except ImportError:
        print("benchmarks.cluster needs dask.distributed: pip install 'bulkpix[dask]'",
              file=sys.stderr)
        return 2
    size = SIZES[args.size]
    if args.acquisitions is not None:
        if args.acquisitions < 1:
            print("--acquisitions must be at least 1", file=sys.stderr)
            return 2
        size = replace(size, acquisitions=args.acquisitions)
    loadavg_start = [round(v, 2) for v in os.getloadavg()]
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        workdir.mkdir(parents=True, exist_ok=True)
        figures, overhead = asyncio.run(throughput(size, workdir))
    document = {
        "meta": {"size": args.size, "loadavg_start": loadavg_start,
                 "seconds": round(time.perf_counter() - started, 1),
                 "machine": describe_machine()},
        "throughput": figures,
        "quota_overhead": overhead,
    }
    text = markdown(document)
    print(text)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=2))
    print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
