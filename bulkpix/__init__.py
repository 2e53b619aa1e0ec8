"""bulkpix: bulk, resumable, quota-aware Earth Engine pixel downloads into georeferenced Zarr.

The Python API (``bulkpix.api``) is a thin shell over the async core in ``bulkpix.pipeline``::

    import bulkpix
    summary = bulkpix.run("configs/demo.yaml")      # also inside a notebook's running loop
    summary = await bulkpix.arun("configs/demo.yaml")
    plans = bulkpix.plan("configs/demo.yaml")       # grids, tiles, estimates; no pixels
    ds = bulkpix.open("out/demo.zarr")              # the output as an xarray Dataset

Importing ``bulkpix`` is cheap: each function loads what it needs when it is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = [
    "ItemSummary",
    "JobTooLarge",
    "RunSummary",
    "WorkerSummary",
    "__version__",
    "aplan",
    "arun",
    "load",
    "open",
    "plan",
    "run",
]

if TYPE_CHECKING:
    from bulkpix.api import (
        ItemSummary,
        RunSummary,
        WorkerSummary,
        aplan,
        arun,
        load,
        open,
        plan,
        run,
    )
    from bulkpix.errors import JobTooLarge


def __getattr__(name: str) -> Any:
    # The API module (and through it the pipeline) loads on first use, not on `import bulkpix`.
    if name == "JobTooLarge":
        from bulkpix.errors import JobTooLarge

        return JobTooLarge
    if name in __all__ and name != "__version__":
        from bulkpix import api

        return getattr(api, name)
    raise AttributeError(f"module 'bulkpix' has no attribute {name!r}")
