"""A description of the machine and software a run was made on."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

__all__ = ["describe_machine"]

_PACKAGES = ("bulkpix", "aiohttp", "numpy", "zarr", "numcodecs", "rasterio",
             "earthengine-api", "google-auth", "requests")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError):
        return 0.0


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def describe_machine() -> dict[str, Any]:
    gdal = "unknown"
    try:
        import rasterio

        gdal = rasterio.__gdal_version__
    except ImportError:
        pass
    return {
        # Other processes on the same cores skew every figure: the 1/5/15-min load averages.
        "loadavg": [round(v, 2) for v in os.getloadavg()],
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "ram_gb": round(_ram_gb(), 1),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "packages": {p: _version(p) for p in _PACKAGES} | {"gdal": gdal},
    }
