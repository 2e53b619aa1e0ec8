"""The emulator in this process, for a job that says ``endpoint: emulator``: its config from
the job's ``emulator:`` section, served on its own thread for as long as the session lasts.

The pipeline imports this module only for such a job: the download path never loads the
emulator otherwise (tests/test_architecture.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from bulkpix.assets import asset_name
from bulkpix.errors import JobError
from bulkpix.job import EmulatorSection, Job

__all__ = ["emulator_url"]


@contextlib.asynccontextmanager
async def emulator_url(job: Job) -> AsyncIterator[str]:
    """Start the stand-in server in this process for the job's ``emulator:`` section; its URL."""
    # Looked up at call time, so a test may stand in for `emulator_in_thread`.
    from bulkpix.emulator import EmulatorConfig, SyntheticAsset, emulator_in_thread
    from bulkpix.emulator.config import FileCollection, FileImageSpec, SyntheticCollection

    section = job.emulator or EmulatorSection()
    synthetic = {}
    for name, size in section.synthetic.items():
        width, height = (int(v) for v in size.split("x"))
        synthetic[asset_name(name)] = SyntheticAsset(width=width, height=height)
    assets = {
        asset_name(name): [str(_job_path(job, p)) for p in paths]
        for name, paths in section.assets.items()
    }
    # An asset the section does not mention is served as a synthetic one, so a job that
    # only says `endpoint: emulator` runs as is.
    for item in job.resolved_items():
        if item.is_collection or item.is_computed:
            continue
        if item.asset not in assets and item.asset not in synthetic:
            synthetic[item.asset] = SyntheticAsset(width=20000, height=20000)
    collections: dict[str, SyntheticCollection | FileCollection] = {}
    for name, spec in section.collections.items():
        if spec.files is not None:
            collections[asset_name(name)] = FileCollection(tuple(
                FileImageSpec(str(_job_path(job, f.file)), f.start, f.end, dict(f.image_properties))
                for f in spec.files
            ))
        else:
            collections[asset_name(name)] = SyntheticCollection(
                tiles=spec.tiles, tile_size=spec.tile_size, overlap=spec.overlap,
                scale=spec.scale, dates=spec.dates, start=spec.start, crs=tuple(spec.crs),
                origin=spec.origin,
            )
    config = EmulatorConfig(
        assets=assets,
        synthetic=synthetic,
        collections=collections,
        max_concurrent=section.max_concurrent,
        max_qps=section.max_qps,
        qps_window=section.qps_window,
        service_base_s=section.service_base_s,
        service_per_mb_s=section.service_per_mb_s,
        seed=section.seed,
    )
    # On its own thread and event loop, so serving does not queue behind the download's work.
    with contextlib.ExitStack() as stack:
        try:
            emu = await asyncio.to_thread(stack.enter_context, emulator_in_thread(config))
        except ValueError as exc:  # an asset file it cannot read, and the like
            raise JobError(f"emulator: {exc}") from None
        try:
            yield emu.url
        finally:
            await asyncio.to_thread(stack.close)


def _job_path(job: Job, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else job.base_dir / p
