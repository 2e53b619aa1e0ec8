"""The YAML job file: what to export, where to, and how hard to push the quota.

A job is either one item (``asset``, ``bands``, ``region``, ``crs``, ``scale`` at the top level)
or a batch: an ``items`` list whose entries override those same keys, the top level giving the
shared defaults. Everything else (output, endpoint, quota, tiling, retries) belongs to the
whole run. Every key is documented in the README.

Loading validates everything that can be checked without the network, and every problem comes
out as one ``JobError`` line naming the key.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from bulkpix.assets import asset_name
from bulkpix.errors import JobError
from bulkpix.store.codecs import DEFAULT_COMPRESSION, CompressionName, codec_for

__all__ = [
    "DEFAULT_ENDPOINT",
    "EmulatorSection",
    "ItemSpec",
    "Job",
    "Region",
    "Visualization",
    "load_job",
    "parse_job",
]

DEFAULT_ENDPOINT = "https://earthengine-highvolume.googleapis.com"
_ITEM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_crs(value: str | None) -> str | None:
    if value is None:
        return None
    import rasterio
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    # GDAL would print its own "ERROR 1: ..." line for a bad WKT: ours is the one line.
    with rasterio.Env(CPL_LOG=os.devnull):
        try:
            CRS.from_user_input(value)
        except (CRSError, ValueError, TypeError):
            raise ValueError(f"unknown CRS {value!r}") from None
    return value


class Region(_Strict):
    """Exactly one of ``bbox``, ``geometry`` (GeoJSON) or ``file`` (a GeoJSON file)."""

    bbox: tuple[float, float, float, float] | None = None
    geometry: dict[str, Any] | None = None
    file: str | None = None
    region_crs: str = "EPSG:4326"

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"file": value}
        if isinstance(value, list | tuple):
            return {"bbox": value}
        if isinstance(value, dict) and "type" in value:
            return {"geometry": value}
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> Region:
        given = [k for k in ("bbox", "geometry", "file") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of bbox, geometry (GeoJSON) or file")
        if self.bbox is not None:
            xmin, ymin, xmax, ymax = self.bbox
            if not all(math.isfinite(v) for v in self.bbox):
                raise ValueError("bbox values must be finite numbers")
            if xmin >= xmax or ymin >= ymax:
                raise ValueError(
                    "bbox must be [xmin, ymin, xmax, ymax] with xmin < xmax, ymin < ymax"
                )
        return self

    _crs = field_validator("region_crs")(_check_crs)

    def load_geometry(self, base_dir: Path) -> dict[str, Any] | tuple[float, float, float, float]:
        """The bbox, or the GeoJSON object (read from ``file`` relative to the job file)."""
        if self.bbox is not None:
            return self.bbox
        if self.geometry is not None:
            return self.geometry
        assert self.file is not None
        path = Path(self.file).expanduser()
        if not path.is_absolute():
            path = base_dir / path
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML
        except IsADirectoryError:
            raise JobError(f"region file {path}: is a directory") from None
        except OSError as exc:
            raise JobError(f"region file {path}: cannot read it ({exc.strerror})") from None
        except (yaml.YAMLError, UnicodeDecodeError):
            raise JobError(f"region file {path}: not valid GeoJSON") from None
        if not isinstance(data, dict) or "type" not in data:
            raise JobError(f"region file {path}: not a GeoJSON object")
        return data


class Visualization(_Strict):
    """The service's ``visualizationOptions``: the bands come back as 8-bit RGB (stored as
    three uint8 bands, vis-red, vis-green, vis-blue)."""

    bands: list[str] = Field(min_length=1, max_length=3)
    min: float | list[float] | None = None
    max: float | list[float] | None = None
    palette: list[str] | None = Field(default=None, min_length=1)
    gamma: PositiveFloat | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Visualization:
        count = len(self.bands)
        if count == 2:
            raise ValueError("visualization.bands must be 1 band or 3 (red, green, blue)")
        if self.palette is not None and count != 1:
            raise ValueError("visualization.palette goes with one band only")
        if (self.min is None) != (self.max is None):
            raise ValueError("visualization needs both min and max, or neither")
        for key in ("min", "max"):
            value = getattr(self, key)
            if isinstance(value, list) and len(value) not in (1, count):
                raise ValueError(f"visualization.{key} needs 1 or {count} values")
            values = value if isinstance(value, list) else [value]
            if not all(v is None or math.isfinite(v) for v in values):
                raise ValueError(f"visualization.{key} must be finite numbers")
        for color in self.palette or []:
            if not re.fullmatch(r"#?([0-9A-Fa-f]{3}|[0-9A-Fa-f]{6})", color):
                raise ValueError(f"visualization.palette: {color!r} is not an RGB hex colour")
        return self

    def ranges(self) -> list[tuple[float, float]] | None:
        """One (min, max) per band, or None for the service's default."""
        if self.min is None or self.max is None:
            return None
        count = len(self.bands)

        def spread(value: float | list[float]) -> list[float]:
            values = value if isinstance(value, list) else [value]
            return values * count if len(values) == 1 else values

        return list(zip(spread(self.min), spread(self.max), strict=True))

    def options(self) -> dict[str, Any]:
        """The getPixels ``visualizationOptions`` object."""
        out: dict[str, Any] = {}
        ranges = self.ranges()
        if ranges is not None:
            out["ranges"] = [{"min": low, "max": high} for low, high in ranges]
        if self.palette is not None:
            out["paletteColors"] = [c if c.startswith("#") else f"#{c}" for c in self.palette]
        if self.gamma is not None:
            out["gamma"] = self.gamma
        return out


class _ItemFields(_Strict):
    asset: str | None = None
    bands: list[str] | None = Field(default=None, min_length=1)
    region: Region | None = None
    crs: str | None = None
    scale: PositiveFloat | None = None
    workload_tag: str | None = None
    # A number for every band, or band id -> value: the value that marks missing pixels.
    # getPixels sends masked pixels as 0, so `nodata: 0` is what marks them.
    nodata: float | dict[str, float] | None = None
    visualization: Visualization | None = None

    _crs = field_validator("crs")(_check_crs)

    @field_validator("asset")
    @classmethod
    def _asset(cls, value: str | None) -> str | None:
        if value is not None:
            asset_name(value)  # raises ValueError with the reason
        return value

    @field_validator("nodata")
    @classmethod
    def _finite_nodata(
        cls, value: float | dict[str, float] | None
    ) -> float | dict[str, float] | None:
        values = value.values() if isinstance(value, dict) else [value]
        if not all(v is None or math.isfinite(v) or math.isnan(v) for v in values):
            raise ValueError("nodata must be a number (or NaN)")
        return value

    @field_validator("bands")
    @classmethod
    def _unique_bands(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("bands must not repeat")
        return value


class ItemSpec(_ItemFields):
    """One export: an asset over a region, landing in its own group of the store."""

    name: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not _ITEM_NAME.match(value):
            raise ValueError(f"item name {value!r} may hold only letters, digits, '_', '.', '-'")
        if value is not None and value.lower() == "zarr.json":
            raise ValueError("item name 'zarr.json' is reserved by Zarr")
        return value


class Timeouts(_Strict):
    connect: PositiveFloat = 10.0
    read: PositiveFloat = 60.0
    total: PositiveFloat = 300.0


class Retries(_Strict):
    max_attempts: PositiveInt = 8
    backoff_base: PositiveFloat = 0.5
    backoff_cap: PositiveFloat = 30.0
    budget: Annotated[int, Field(ge=0)] = 10_000
    # The longest any wait may be, a server's Retry-After included (never below backoff_cap).
    max_wait: Annotated[float, Field(gt=0, le=86_400)] = 300.0


class ServiceModelSpec(_Strict):
    base_s: NonNegativeFloat = 0.2
    per_mb_s: NonNegativeFloat = 0.05


class EmulatorSection(_Strict):
    """Settings of the in-process stand-in server started by ``endpoint: emulator``."""

    synthetic: dict[str, str] = Field(default_factory=dict)  # name -> "WIDTHxHEIGHT"
    assets: dict[str, list[str]] = Field(default_factory=dict)  # name -> raster files
    max_concurrent: PositiveInt | None = 40
    max_qps: PositiveFloat | None = 100.0
    qps_window: Literal["minute", "second"] = "minute"  # the rate counted per minute, or strictly
    service_base_s: NonNegativeFloat = 0.0
    service_per_mb_s: NonNegativeFloat = 0.0
    seed: int = 0

    @field_validator("synthetic")
    @classmethod
    def _sizes(cls, value: dict[str, str]) -> dict[str, str]:
        for name, size in value.items():
            if not re.fullmatch(r"[1-9]\d*x[1-9]\d*", str(size)):
                raise ValueError(f"synthetic size for {name!r} must be WIDTHxHEIGHT, got {size!r}")
        return value


class Job(_ItemFields):
    """A whole job file, validated."""

    items: list[ItemSpec] | None = Field(default=None, min_length=1)
    output: str
    endpoint: str = DEFAULT_ENDPOINT
    api_version: Literal["v1", "v1alpha", "v1beta"] = "v1"
    project: str | None = None
    credentials: str | None = None  # default | none | a key file; None: by endpoint
    file_format: Literal["NPY", "GEO_TIFF"] = "NPY"
    concurrency: Annotated[int, Field(gt=0, le=1000)] = 40
    qps: PositiveFloat = 100.0
    chunk: Annotated[int, Field(ge=16, le=32768)] = 1024
    tile: Literal["auto"] | tuple[PositiveInt, PositiveInt] = "auto"
    memory_mb: Annotated[int, Field(ge=16)] = 128
    compression: CompressionName = DEFAULT_COMPRESSION  # the chunk codec (store/codecs.py)
    compression_level: int | None = None  # None: the codec's default level
    # 3: what xarray and zarr read (GDAL from 3.11); 2: what GDAL 3.10 (rasterio's) reads.
    zarr_format: Literal[2, 3] = 3
    # fsync each chunk file (and its directory) before the tile's done-marker is written.
    durable: bool = False
    timeouts: Timeouts = Timeouts()
    retries: Retries = Retries()
    service_model: ServiceModelSpec = ServiceModelSpec()
    emulator: EmulatorSection | None = None

    # The directory relative paths in the job are taken from (set by load_job).
    base_dir: Path = Field(default=Path("."), exclude=True)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if value == "emulator":
            return value
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"must be an http(s) URL or 'emulator', got {value!r}")
        return value.rstrip("/")

    @field_validator("output")
    @classmethod
    def _output(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        if "://" in value:
            return value
        # A local path, relative to the working directory (as a shell user expects), with
        # ~ expanded: never a directory literally named "~".
        return str(Path(value).expanduser())

    @model_validator(mode="after")
    def _consistent(self) -> Job:
        if self.tile != "auto" and any(side % self.chunk for side in self.tile):
            raise ValueError(f"tile {list(self.tile)} must be multiples of chunk ({self.chunk})")
        if self.emulator is not None and self.endpoint != "emulator":
            raise ValueError("the emulator section goes with endpoint: emulator")
        codec_for(self.compression, self.compression_level)  # a level this codec has
        items = self.resolved_items()
        names = [item.name for item in items]
        duplicates = sorted({n for n in names if names.count(n) > 1 and n is not None})
        if duplicates:
            raise ValueError(f"item names repeat: {', '.join(map(str, duplicates))}")
        for index, item in enumerate(items):
            where = f"items[{index}]" if self.items else "job"
            if item.asset is None:
                raise ValueError(f"{where}: asset is missing")
            vis = item.visualization
            if vis is not None and item.bands is not None and item.bands != vis.bands:
                raise ValueError(f"{where}: bands and visualization.bands differ; give one")
        return self

    @property
    def is_batch(self) -> bool:
        return self.items is not None

    @property
    def credentials_spec(self) -> str:
        if self.credentials is not None:
            return self.credentials
        return "none" if self.endpoint == "emulator" else "default"

    def resolved_items(self) -> list[ItemSpec]:
        """Items with the shared defaults filled in and a name each."""
        shared = {k: getattr(self, k) for k in _ItemFields.model_fields}
        if self.items is None:
            return [ItemSpec(**shared)]
        resolved = []
        for index, item in enumerate(self.items):
            fields = dict(shared)
            fields.update({k: v for k, v in item.model_dump(exclude_unset=True).items()})
            if not fields.get("name"):
                fields["name"] = f"item{index:04d}"
            resolved.append(ItemSpec(**fields))
        return resolved


_HINTS = {
    "tile": "must be auto or [height, width]",
    "region": "must be a bbox, a GeoJSON geometry or a file path",
}


def _clean_loc(loc: tuple[Any, ...]) -> str:
    # Union branches show up as tags like "literal['auto']": they are not keys.
    parts = [str(p) for p in loc if isinstance(p, int) or str(p).isidentifier()]
    return ".".join(parts)


def _format_errors(errors: list[Any]) -> str:
    first = errors[0]
    loc = _clean_loc(first["loc"])
    same_key = [e for e in errors if _clean_loc(e["loc"]) == loc]
    if first["type"] == "extra_forbidden":
        return f"unknown key {loc!r}"
    if (
        first["type"] in ("missing", "too_short")
        and first["loc"]
        and isinstance(first["loc"][-1], int)
    ):
        return f"key {loc.rsplit('.', 1)[0]!r}: too few values"
    if first["type"] == "missing":
        return f"key {loc!r} is required"
    if len(same_key) > 1:
        top = loc.split(".")[0]
        hint = _HINTS.get(top, "has the wrong type or value")
        return f"key {top!r} {hint}, got {first.get('input')!r}"
    msg = str(first["msg"]).removeprefix("Value error, ")
    return f"key {loc!r}: {msg}" if loc else msg


def parse_job(data: Any, *, source: str = "job", base_dir: Path | None = None) -> Job:
    """Validate an already-parsed job mapping; every problem becomes one JobError line."""
    if not isinstance(data, dict):
        raise JobError(f"{source}: the job must be a YAML mapping of keys to values")
    try:
        job = Job.model_validate(data)
    except ValidationError as exc:
        raise JobError(f"{source}: {_format_errors(exc.errors(include_url=False))}") from None
    if base_dir is not None:
        job = job.model_copy(update={"base_dir": base_dir})
        # Region files are read now, so a missing one is refused before any network call.
        for item in job.resolved_items():
            if item.region is not None and item.region.file is not None:
                item.region.load_geometry(job.base_dir)
    return job


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key given twice in one mapping, instead of keeping the last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_job(path: str | Path) -> Job:
    """Read and validate a YAML job file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except IsADirectoryError:
        raise JobError(f"{path}: is a directory, not a job file") from None
    except OSError as exc:
        raise JobError(f"{path}: cannot read the job file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise JobError(f"{path}: not a text file (it is not UTF-8)") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise JobError(f"{path}: broken YAML{where}: {problem}") from None
    return parse_job(data, source=str(path), base_dir=path.resolve().parent)
