"""The emulator's settings: plain dataclasses, read live so tests can change them mid-run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from affine import Affine

__all__ = [
    "ComputeConfig",
    "EmulatorConfig",
    "FaultConfig",
    "FileCollection",
    "FileImageSpec",
    "SyntheticAsset",
    "SyntheticCollection",
]


@dataclass
class FaultConfig:
    """Probabilities of injected faults per getPixels call (each draw is seeded per call)."""

    p500: float = 0.0
    p503: float = 0.0
    p429: float = 0.0
    retry_after_share: float = 0.0  # share of injected 429s that carry a Retry-After header
    retry_after_s: float = 1.0
    p_reset: float = 0.0  # close the connection before any response
    p_truncate: float = 0.0  # honest Content-Length, part of the body, then close
    p_stall: float = 0.0  # headers, then nothing for stall_s seconds
    stall_s: float = 30.0
    bandwidth_bps: float | None = None  # pace every getPixels body to this many bytes/s
    # Permanent errors, for clients that must not retry them.
    p400: float = 0.0
    p403: float = 0.0
    p404: float = 0.0

    def __post_init__(self) -> None:
        probabilities = (self.p500, self.p503, self.p429, self.p_reset, self.p_truncate,
                         self.p_stall, self.p400, self.p403, self.p404)
        if any(p < 0 for p in probabilities) or sum(probabilities) > 1.0 + 1e-9:
            raise ValueError("fault probabilities must be >= 0 and sum to at most 1")
        if not 0.0 <= self.retry_after_share <= 1.0:
            raise ValueError("retry_after_share must be within [0, 1]")
        if self.bandwidth_bps is not None and self.bandwidth_bps <= 0:
            raise ValueError("bandwidth_bps must be > 0")


@dataclass(frozen=True)
class SyntheticAsset:
    """A virtual asset of the synthetic band family; pixels are computed per request."""

    width: int
    height: int
    crs: str = "EPSG:32633"
    transform: Affine = field(default_factory=lambda: Affine(10, 0, 600000, 0, -10, 5200000))

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError("synthetic asset width and height must be > 0")


@dataclass(frozen=True)
class SyntheticCollection:
    """``tiles`` (rows, cols) of ``tile_size`` px at ``scale``, overlapping by ``overlap`` px,
    over ``dates`` days from ``start``; the grid repeats in each of ``crs`` (its top-left corner
    at ``origin`` lon/lat, snapped to the scale). Each date shifts the pixel values."""

    tiles: tuple[int, int] = (2, 2)
    tile_size: int = 256
    overlap: int = 32
    scale: float = 30.0
    dates: int = 1
    start: str = "2024-01-01"
    crs: tuple[str, ...] = ("EPSG:32633",)
    origin: tuple[float, float] = (12.0, 46.0)

    def __post_init__(self) -> None:
        if min(self.tiles) < 1 or self.dates < 1 or self.tile_size < 1 or not self.crs:
            raise ValueError("a synthetic collection needs tiles, dates and a size of at least 1")
        if not 0 <= self.overlap < self.tile_size:
            raise ValueError("a synthetic collection's overlap must be below its tile size")


@dataclass(frozen=True)
class FileImageSpec:
    path: str
    start: str
    end: str | None = None  # default: a day after start
    properties: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FileCollection:
    """One image per raster file, with the times given for it."""

    images: tuple[FileImageSpec, ...]


@dataclass
class ComputeConfig:
    """Faults of computation (computePixels), by output size in pixels (width x height)."""

    memory_limit_pixels: int | None = None  # above: 400 "User memory limit exceeded."
    timeout_pixels: int | None = None  # above: 400 "Computation timed out."
    max_concurrent: int | None = None  # computations at once before 429 "Too many concurrent..."
    # Once this many pixels have been computed, answers carry the header
    # x-earth-engine-quota-status: parallelism_restricted=true.
    budget_pixels: int | None = None

    def __post_init__(self) -> None:
        for name in ("memory_limit_pixels", "timeout_pixels", "max_concurrent", "budget_pixels"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0")


@dataclass
class EmulatorConfig:
    """Everything the emulator serves and how it misbehaves."""

    assets: dict[str, list[str]] = field(default_factory=dict)  # name -> raster files
    synthetic: dict[str, SyntheticAsset] = field(default_factory=dict)
    # name -> a collection of image assets (listed with listImages / listAssets)
    collections: dict[str, SyntheticCollection | FileCollection] = field(default_factory=dict)
    forbidden: set[str] = field(default_factory=set)  # names answered with 403
    token: str | None = None  # when set, a bearer token every API call must carry
    max_concurrent: int | None = 40
    max_qps: float | None = 100.0
    # How the rate quota is counted: max_qps * 60 per rolling minute, as the service documents
    # it, or (a strict mode for tests) max_qps per rolling second.
    qps_window: Literal["minute", "second"] = "minute"
    service_base_s: float = 0.0
    service_per_mb_s: float = 0.0
    service_jitter: float = 0.1
    # The request-size limit; lower it to play a service that counts sizes differently.
    max_request_bytes: int = 50_331_648
    seed: int = 0
    faults: FaultConfig = field(default_factory=FaultConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    log_path: str | None = None
    host: str = "127.0.0.1"
    port: int = 0

    def __post_init__(self) -> None:
        if self.qps_window not in ("minute", "second"):
            raise ValueError(f"qps_window must be 'minute' or 'second', got {self.qps_window!r}")
