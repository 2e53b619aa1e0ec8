"""bulkpix: bulk, resumable, quota-aware Earth Engine pixel downloads into georeferenced Zarr.

The sync API is a thin shell over the async core in ``bulkpix.pipeline``::

    import bulkpix
    stats = bulkpix.run("configs/demo.yaml")          # or a dict shaped like the YAML file
    plans = bulkpix.plan("configs/demo.yaml")         # grids and tiles, no pixels fetched
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "load", "plan", "run"]

if TYPE_CHECKING:
    from bulkpix.job import Job
    from bulkpix.pipeline import RunStats
    from bulkpix.planning import ItemPlan


def load(job: str | Path | dict[str, Any]) -> Job:
    """A validated job from a YAML path or a mapping."""
    from bulkpix.job import Job, load_job, parse_job

    if isinstance(job, Job):
        return job
    if isinstance(job, dict):
        return parse_job(job, base_dir=Path.cwd())
    return load_job(job)


def run(job: str | Path | dict[str, Any], *, restart: bool = False) -> RunStats:
    """Run or resume a job to completion; returns its counters."""
    import asyncio

    from bulkpix.pipeline import run_job

    return asyncio.run(run_job(load(job), restart=restart))


def plan(job: str | Path | dict[str, Any]) -> list[ItemPlan]:
    """Each item's output grid and tiles (one metadata request per asset, no pixels)."""
    import asyncio

    from bulkpix.pipeline import plan_job

    return asyncio.run(plan_job(load(job)))
