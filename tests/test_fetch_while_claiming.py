"""A new local output is claimed (made) while its first tiles are requested; an output that
exists is claimed before any tile is requested. Orderings are forced with events, never timed.
"""

from __future__ import annotations

import asyncio
import contextlib
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

ASSET = "projects/demo/assets/synth"
# 640 x 640 px of the synthetic asset in 128-px tiles: 25 tiles.
ROWS, COLS = np.arange(1232, 1232 + 640), np.arange(200, 200 + 640)
BBOX = [602000, 5181280, 608400, 5187680]
CONCURRENCY = 4
WAIT_S = 30  # only reached when the ordering under test is broken


def _job(url: str, output: Path) -> Any:
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
        }
    )


class _Watch:
    """Counts tile requests as they are made, and wraps the claim of the output."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.requested = asyncio.Event()
        self.requests = 0
        self.requests_at_claim: int | None = None
        original_stream = EEClient.stream_pixels
        original_claim = bulkpix.store.output.claim_output

        def stream_pixels(client: EEClient, *args: Any, **kwargs: Any) -> Any:
            self.requests += 1
            self.requested.set()
            return original_stream(client, *args, **kwargs)

        @contextlib.asynccontextmanager
        async def claim_output(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            self.requests_at_claim = self.requests
            await self.before_claim()
            async with original_claim(*args, **kwargs) as claimed:
                yield claimed

        monkeypatch.setattr(EEClient, "stream_pixels", stream_pixels)
        monkeypatch.setattr(bulkpix.store.output, "claim_output", claim_output)

    async def before_claim(self) -> None:
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
    watch = _Watch(monkeypatch)

    async def refuse() -> None:
        await asyncio.wait_for(watch.requested.wait(), WAIT_S)
        raise OutputInUse("output in use by a run on host elsewhere (pid 4242)")

    watch.before_claim = refuse  # type: ignore[method-assign]
    output = tmp_path / "out.zarr"
    config = EmulatorConfig(synthetic={ASSET: SyntheticAsset(width=4000, height=4000)})
    async with run_emulator(config) as emu:
        with pytest.raises(OutputInUse, match="in use by a run on host elsewhere"):
            await run_job(_job(emu.url, output))
        # No request starts once the claim is refused: at most the first wave was sent.
        assert watch.requests <= CONCURRENCY
    assert not output.exists()  # nothing written, not even the root
    leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert leftover == []


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
