"""bulkpix, driven only through its CLI (``bulkpix run --quiet JOB.yaml``): the job file it
is given and the check of the store it leaves behind."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import yaml
import zarr

from benchmarks.emulator_process import bulkpix_command
from benchmarks.region import ASSET, BAND_DTYPES, CRS, Window, spot_check

__all__ = ["bulkpix_argv", "verify_store", "write_job"]


def write_job(path: Path, *, url: str, window: Window, output: Path,
              service_model: tuple[float, float] | None = None, concurrency: int = 40,
              qps: float = 100.0, tile: tuple[int, int] | None = None,
              compression: tuple[str, int | None] | None = None) -> Path:
    """A job file with bulkpix's defaults except where the scenario says otherwise;
    ``service_model`` is (base_s, per_mb_s), ``compression`` (codec, level or None)."""
    job: dict[str, Any] = {
        "asset": ASSET,
        "bands": list(BAND_DTYPES),
        "region": {"bbox": list(window.bbox), "region_crs": CRS},
        "output": str(output),
        "endpoint": url,
        "credentials": "none",
        "concurrency": concurrency,
        "qps": qps,
    }
    if service_model is not None:
        # So the tiler plans for the service it will meet (the emulator's model).
        job["service_model"] = {"base_s": service_model[0], "per_mb_s": service_model[1]}
    if tile is not None:
        job["tile"] = list(tile)
    if compression is not None:
        job["compression"] = compression[0]
        if compression[1] is not None:
            job["compression_level"] = compression[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    if output.exists():
        shutil.rmtree(output)  # a fresh output each run: no resuming
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def bulkpix_argv(job_path: Path) -> list[str]:
    return [*bulkpix_command(), "run", "--quiet", str(job_path)]


def verify_store(output: Path, window: Window) -> dict[str, Any]:
    """Open the Zarr store bulkpix wrote and check its shape and sampled pixels."""
    group = zarr.open_group(str(output), mode="r")
    bands: dict[str, np.ndarray] = {}
    for band in BAND_DTYPES:
        array = group[band]
        assert isinstance(array, zarr.Array), band
        bands[band] = _SampledArray(array)  # type: ignore[assignment]
    spot_check(bands, window)
    return {"pixels": window.pixels,
            "pixel_bytes": sum(int(np.prod(group[b].shape)) * BAND_DTYPES[b].itemsize
                               for b in BAND_DTYPES),
            "verified": True}


class _SampledArray:
    """Just enough of an ndarray for ``spot_check``: shape, dtype and row/column reads,
    so the check reads a few chunk rows instead of the whole store."""

    def __init__(self, array: zarr.Array) -> None:
        self._array = array
        self.shape = array.shape
        self.dtype = array.dtype

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self._array[key])
