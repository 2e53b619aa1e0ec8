"""Earth Engine band data types <-> NumPy dtypes.

Earth Engine describes a band's type as ``{"precision": "INT"|"FLOAT"|"DOUBLE",
"range": {"min": .., "max": ..}}`` (proto3 JSON: a zero bound is left out). The mapping to a
storage type is the one GDAL's EEDAI driver uses; ``ee_data_type`` is its inverse, so an
emulated asset's metadata maps back to exactly the dtype it was built from.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "BandSpec",
    "ee_data_type",
    "numpy_dtype",
    "request_bytes",
    "request_bytes_per_pixel",
]


@dataclass(frozen=True)
class BandSpec:
    """A band as the output stores it: its id and storage dtype."""

    id: str
    dtype: np.dtype

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", np.dtype(self.dtype).newbyteorder("="))

_INT_RANGES: dict[str, tuple[int, int]] = {
    "int8": (-128, 127),
    "uint8": (0, 255),
    "int16": (-32768, 32767),
    "uint16": (0, 65535),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
}


def numpy_dtype(data_type: dict[str, Any] | None) -> np.dtype:
    """The storage dtype of an Earth Engine ``dataType`` (the EEDAI rule, checked in order)."""
    data_type = data_type or {}
    precision = data_type.get("precision", "INT")
    if precision == "FLOAT":
        return np.dtype("float32")
    if precision == "DOUBLE":
        return np.dtype("float64")
    if precision != "INT":
        raise ValueError(f"unknown dataType precision {precision!r}")
    value_range = data_type.get("range") or {}
    lo = float(value_range.get("min", 0))
    hi = float(value_range.get("max", 0))
    if lo == -128 and hi == 127:
        return np.dtype("int8")
    if lo < -32768:
        return np.dtype("int32")
    if hi > 65535:
        return np.dtype("uint32")
    if lo < 0:
        return np.dtype("int16")
    if hi > 255:
        return np.dtype("uint16")
    return np.dtype("uint8")


def ee_data_type(dtype: np.dtype | str) -> dict[str, Any]:
    """The proto3-JSON ``dataType`` that ``numpy_dtype`` maps back to ``dtype``."""
    dtype = np.dtype(dtype)
    if dtype == np.float32:
        return {"precision": "FLOAT"}
    if dtype == np.float64:
        return {"precision": "DOUBLE"}
    if dtype.name not in _INT_RANGES:
        raise ValueError(f"Earth Engine has no data type for {dtype}")
    lo, hi = _INT_RANGES[dtype.name]
    value_range: dict[str, int] = {}
    if lo:
        value_range["min"] = lo
    if hi:
        value_range["max"] = hi
    return {"precision": "INT", "range": value_range}


def request_bytes_per_pixel(itemsizes: Iterable[int]) -> int:
    """Bytes per pixel as the service counts a request: each band's size plus a mask byte.

    The one place this rule lives: tiling, planning and the emulator all count with it.
    """
    return sum(int(size) + 1 for size in itemsizes)


def request_bytes(height: int, width: int, itemsizes: Iterable[int]) -> int:
    """Size of a ``height`` x ``width`` request of bands of ``itemsizes`` bytes, as the
    service counts it against its request limit (not the size of its answer)."""
    return height * width * request_bytes_per_pixel(itemsizes)
