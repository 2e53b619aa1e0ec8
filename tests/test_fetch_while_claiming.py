"""A new local output is claimed (made) while its first tiles are requested; an output that
exists is claimed before any tile is requested. Orderings are forced with events, never timed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import bulkpix.store.output
from bulkpix.ee.client import EEClient
from bulkpix.emulator import EmulatorConfig, SyntheticAsset, run_emulator
from bulkpix.emulator.synthetic import synthetic_pixels
from bulkpix.errors import OutputInUse
from bulkpix.job import parse_job
from bulkpix.pipeline import run_job
from bulkpix.sources import gather_all
from bulkpix.store.lease import LEASE_KEY, Lease

ASSET = "projects/demo/assets/synth"
# 640 x 640 px of the synthetic asset in 128-px tiles: 25 tiles.
ROWS, COLS = np.arange(1232, 1232 + 640), np.arange(200, 200 + 640)
BBOX = [602000, 5181280, 608400, 5187680]
CONCURRENCY = 4
WAIT_S = 30  # only reached when the ordering under test is broken


def _job(url: str, output: Path, **keys: Any) -> Any:
    return parse_job(
        {
            "asset": ASSET,
            "output": str(output),
            "endpoint": url,
            "credentials": "none",
            "bands": ["u16"],
            "region": {"bbox": BBOX, "region_crs": "EPSG:32633"},
            "chunk": 128,
            "tile": [128, 128],
            "concurrency": CONCURRENCY,
            **keys,
        }
    )


def _synthetic() -> EmulatorConfig:
    return EmulatorConfig(synthetic={ASSET: SyntheticAsset(width=4000, height=4000)})


def _assert_pixels(output: Path, group: str = "") -> None:
    np.testing.assert_array_equal(
        zarr.open_group(output, mode="r", path=group)["u16"][:], synthetic_pixels(2, ROWS, COLS)
    )


class _Watch:
    """Counts tile requests as they are made, and wraps the claim of the output."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.requested = asyncio.Event()
        self.requests = 0
        self.requests_at_claim: int | None = None
        self.claims: list[dict[str, Any]] = []
        original_stream = EEClient.stream_pixels
        original_claim = bulkpix.store.output.claim_output

        def stream_pixels(client: EEClient, *args: Any, **kwargs: Any) -> Any:
            self.requests += 1
            self.requested.set()
            return original_stream(client, *args, **kwargs)

        @contextlib.asynccontextmanager
        async def claim_output(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            self.requests_at_claim = self.requests
            self.claims.append(kwargs)
            await self.before_claim()
            async with original_claim(*args, **kwargs) as claimed:
                await self.after_claim()
                yield claimed

        monkeypatch.setattr(EEClient, "stream_pixels", stream_pixels)
        monkeypatch.setattr(bulkpix.store.output, "claim_output", claim_output)

    async def before_claim(self) -> None:
        pass

    async def after_claim(self) -> None:
        pass


async def test_a_new_outputs_tiles_are_requested_while_it_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    watch = _Watch(monkeypatch)

    async def claim_only_once_a_tile_is_requested() -> None:
        # Were tiles requested only after the claim, this would wait in vain.
        await asyncio.wait_for(watch.requested.wait(), WAIT_S)

    watch.before_claim = claim_only_once_a_tile_is_requested  # type: ignore[method-assign]
    output = tmp_path / "out.zarr"
    config = EmulatorConfig(synthetic={ASSET: SyntheticAsset(width=4000, height=4000)})
    async with run_emulator(config) as emu:
        stats = await run_job(_job(emu.url, output))
    assert stats.ok and stats.finished == 25
    assert watch.requests == 25
    np.testing.assert_array_equal(
        zarr.open_group(output, mode="r")["u16"][:], synthetic_pixels(2, ROWS, COLS)
    )
    assert zarr.open_group(output, mode="r").attrs["bulkpix"]["complete"] is True


async def test_a_refused_claim_stops_the_requests_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real claim refuses (its lease is taken), once a tile is in flight: the requests
    stop, the error is the claim's own, and the output it began is removed."""
    watch = _Watch(monkeypatch)

    async def refuse(lease: Lease) -> None:
        await asyncio.wait_for(watch.requested.wait(), WAIT_S)
        raise OutputInUse("output in use by a run on host elsewhere (pid 4242)")

    monkeypatch.setattr(Lease, "acquire", refuse)
    output = tmp_path / "out.zarr"
    async with run_emulator(_synthetic()) as emu:
        with pytest.raises(OutputInUse, match="in use by a run on host elsewhere"):
            await asyncio.wait_for(run_job(_job(emu.url, output)), WAIT_S)
        # No request starts once the claim is refused: at most the first wave was sent.
        assert 0 < watch.requests <= CONCURRENCY
    assert watch.claims == [{"restart": False}]
    assert not output.exists()  # nothing written, not even the root the claim made
    leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert leftover == []
    assert not [t for t in threading.enumerate() if t.name == "bulkpix-writer"]


async def test_restart_into_a_new_output_holds_it_exclusively(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    watch = _Watch(monkeypatch)
    output = tmp_path / "out.zarr"
    leases: list[dict[str, Any]] = []

    async def read_lease() -> None:
        leases.append(json.loads((output / LEASE_KEY).read_text()))

    watch.after_claim = read_lease  # type: ignore[method-assign]
    async with run_emulator(_synthetic()) as emu:
        stats = await run_job(_job(emu.url, output), restart=True)
    assert stats.ok and stats.finished == 25
    assert watch.claims == [{"restart": True}]
    assert [lease["exclusive"] for lease in leases] == [True]
    _assert_pixels(output)


async def test_a_run_of_the_same_job_that_makes_the_output_first_is_joined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run B finds the path absent and requests its first tiles; run A (the same job, a
    batch of two items) makes the output and finishes it before B's claim. B counts A's
    tiles as finished before, writes none of them again, requests no more, and the items
    are complete."""
    watch = _Watch(monkeypatch)
    output = tmp_path / "out.zarr"
    keys = {"items": [{"name": "a"}, {"name": "b"}]}
    first: list[Any] = []

    async def run_a_first() -> None:
        if first:  # A's own claim
            return
        first.append(None)
        await asyncio.wait_for(watch.requested.wait(), WAIT_S)
        first[0] = await run_job(_job(emu.url, output, **keys))

    watch.before_claim = run_a_first  # type: ignore[method-assign]
    async with run_emulator(_synthetic()) as emu:
        b = await asyncio.wait_for(run_job(_job(emu.url, output, **keys)), WAIT_S)
    a = first[0]
    assert a.ok and a.finished == 50 and all(i.done == 25 for i in a.items)
    assert b.ok and b.finished == 50
    assert [(i.done_before, i.done) for i in b.items] == [(25, 0), (25, 0)]
    # B's requests: only its first wave, sent before its claim found the tiles done.
    assert watch.requests - 50 <= CONCURRENCY
    for group in ("a", "b"):
        _assert_pixels(output, group)
        assert zarr.open_group(output, mode="r", path=group).attrs["bulkpix"]["complete"]


async def test_cancelling_the_run_while_it_holds_a_new_output_releases_the_lease(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second Ctrl-C (the run's task cancelled) right after the claim took the lease:
    the lease is released, not left for the next run to wait out."""
    watch = _Watch(monkeypatch)
    output = tmp_path / "out.zarr"
    claimed = asyncio.Event()

    async def hold() -> None:
        claimed.set()
        await asyncio.Event().wait()  # until cancelled

    watch.after_claim = hold  # type: ignore[method-assign]
    async with run_emulator(_synthetic()) as emu:
        run = asyncio.ensure_future(run_job(_job(emu.url, output)))
        await asyncio.wait_for(claimed.wait(), WAIT_S)
        assert (output / LEASE_KEY).exists()
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(run, WAIT_S)
    assert not (output / LEASE_KEY).exists()
    assert not [t for t in threading.enumerate() if t.name == "bulkpix-writer"]


async def test_an_output_that_exists_is_claimed_before_any_tile_is_requested(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = tmp_path / "out.zarr"
    config = EmulatorConfig(synthetic={ASSET: SyntheticAsset(width=4000, height=4000)})
    stop = asyncio.Event()  # Ctrl-C, in effect, once three tiles are requested
    calls = 0
    original_stream = EEClient.stream_pixels

    def stop_after_three(client: EEClient, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:
            stop.set()
        return original_stream(client, *args, **kwargs)

    monkeypatch.setattr(EEClient, "stream_pixels", stop_after_three)
    async with run_emulator(config) as emu:
        first = await run_job(_job(emu.url, output), stop=stop)
        assert first.interrupted and 0 < first.finished < 25
        monkeypatch.undo()
        watch = _Watch(monkeypatch)
        second = await run_job(_job(emu.url, output))
    assert watch.requests_at_claim == 0
    assert second.ok and second.finished == 25
    assert watch.requests == 25 - first.finished
    np.testing.assert_array_equal(
        zarr.open_group(output, mode="r")["u16"][:], synthetic_pixels(2, ROWS, COLS)
    )


async def test_a_cancelled_gather_all_lets_every_call_finish_its_cleanup() -> None:
    """The claim and the fetching run under ``gather_all``: cancelled (a second Ctrl-C), each
    gets the cancel once and finishes its cleanup (a lease's release) however many loop
    turns it takes, rather than being cancelled again when the other ends."""
    cleaned: list[str] = []

    async def slow_cleanup() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            for _ in range(20):  # loop turns, as a release's store calls take
                await asyncio.sleep(0)
            cleaned.append("slow")

    async def quick_cleanup() -> None:
        await asyncio.Event().wait()

    caller = asyncio.ensure_future(gather_all([slow_cleanup(), quick_cleanup()]))
    for _ in range(5):
        await asyncio.sleep(0)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert cleaned == ["slow"]


async def test_gather_all_raises_the_first_error_as_itself_and_cancels_the_rest() -> None:
    cancelled: list[str] = []

    async def fail() -> None:
        raise OutputInUse("refused")

    async def wait() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append("wait")
            raise

    with pytest.raises(OutputInUse, match="refused"):
        await gather_all([wait(), fail()])
    assert cancelled == ["wait"]
