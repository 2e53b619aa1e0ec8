"""What the scenarios share: their context, their result and how each client is launched."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks.clients.bulkpix_cli import bulkpix_argv, verify_store, write_job
from benchmarks.emulator_process import EmulatorProcess, EmulatorSettings
from benchmarks.figures import ClientFigures, Target, measure_client
from benchmarks.region import ASSET, Window
from benchmarks.request_stats import RequestStats
from benchmarks.sizes import BIG_ASSET_SIDE, Size

__all__ = ["Context", "ScenarioResult", "big_asset", "run_bare_fetch", "run_bulkpix",
           "run_peer"]


@dataclass(frozen=True)
class Context:
    size_name: str
    size: Size
    workdir: Path
    skip_peers: bool = False

    def for_scenario(self, name: str) -> Context:
        """Each scenario keeps its logs, jobs and outputs in its own folder."""
        return replace(self, workdir=self.workdir / name)


@dataclass
class ScenarioResult:
    name: str
    title: str
    emulator: dict[str, Any]
    clients: list[ClientFigures] = field(default_factory=list)
    ideal: dict[str, Any] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "emulator": self.emulator,
                "clients": {c.client: c.as_dict() for c in self.clients},
                "ideal": self.ideal, "targets": [t.as_dict() for t in self.targets],
                "notes": self.notes}


def big_asset() -> tuple[tuple[str, int, int], ...]:
    return ((ASSET, BIG_ASSET_SIDE, BIG_ASSET_SIDE),)


def run_bulkpix(ctx: Context, emulator: EmulatorProcess, label: str, window: Window, *,
                settings: EmulatorSettings | None = None,
                tile: tuple[int, int] | None = None,
                compression: tuple[str, int | None] | None = None,
                checkout: Path | None = None,
                ) -> tuple[ClientFigures, RequestStats]:
    """``bulkpix run`` on ``window``; ``settings`` given means: tell bulkpix's tiler the
    emulator's service model (otherwise the job keeps bulkpix's default model).
    ``checkout`` given: that source tree's bulkpix runs (its folder as the working directory
    and the only PYTHONPATH entry), e.g. an older commit's worktree."""
    work = ctx.workdir / label
    output = work / "out.zarr"
    model = ((settings.service_base_s, settings.service_per_mb_s) if settings is not None
             else None)
    job = write_job(work / "job.yaml", url=emulator.url, window=window, output=output,
                    tile=tile, service_model=model, compression=compression)
    env = None if checkout is None else dict(os.environ, PYTHONPATH=str(checkout))
    return measure_client(label, bulkpix_argv(job), emulator, work,
                          expected_pixels=window.pixels, timeout_s=ctx.size.child_timeout_s,
                          verify=lambda: verify_store(output, window), env=env, cwd=checkout)


def run_peer(ctx: Context, emulator: EmulatorProcess, label: str, module: str,
             window: Window, *extra_args: str) -> tuple[ClientFigures, RequestStats]:
    """A client script ``benchmarks.clients.MODULE`` in its own interpreter."""
    work = ctx.workdir / label
    result = work / "result.json"
    argv = [sys.executable, "-m", f"benchmarks.clients.{module}", "--url", emulator.url,
            "--asset", ASSET, "--window", str(window), "--result", str(result), *extra_args]
    return measure_client(label, argv, emulator, work, expected_pixels=window.pixels,
                          timeout_s=ctx.size.child_timeout_s, result_path=result)


def run_bare_fetch(ctx: Context, emulator: EmulatorProcess, label: str, window: Window,
                   tiles: list[Window], concurrency: int) -> tuple[ClientFigures, RequestStats]:
    tiles_path = ctx.workdir / label / "tiles.json"
    tiles_path.parent.mkdir(parents=True, exist_ok=True)
    tiles_path.write_text(json.dumps([[t.row_off, t.col_off, t.height, t.width] for t in tiles]))
    return run_peer(ctx, emulator, label, "bare_fetch", window, "--tiles", str(tiles_path),
                    "--concurrency", str(concurrency))
