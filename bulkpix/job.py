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
    GetJsonSchemaHandler,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue, SkipJsonSchema
from pydantic_core import CoreSchema

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
OutputSide = Annotated[int, Field(gt=0, le=2**24)]  # planning.MAX_OUTPUT_SIDE


class _Strict(BaseModel):
    # A field's docstring is its description in the JSON Schema (`bulkpix schema`).
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


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
    """[xmin, ymin, xmax, ymax] in region_crs (lon/lat by default)."""
    geometry: dict[str, Any] | None = None
    """A GeoJSON geometry, Feature or FeatureCollection; only its bounding box is used."""
    file: str | None = None
    """A GeoJSON file, relative to the job file."""
    region_crs: str = "EPSG:4326"
    """The CRS of bbox or geometry (EPSG code or WKT); default lon/lat."""

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

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        # The shorthands `_shorthand` accepts, so editors do not flag `region: [..]` as wrong.
        reference = handler(core_schema)
        schema = handler.resolve_ref_schema(reference)
        mapping = dict(schema)
        description = mapping.pop("description", None)
        schema.clear()
        schema.update(
            title="Region",
            description=description,
            anyOf=[
                mapping,
                {
                    "description": "A bbox, [xmin, ymin, xmax, ymax] in lon/lat.",
                    "type": "array",
                    "prefixItems": [{"type": "number"}] * 4,
                    "minItems": 4,
                    "maxItems": 4,
                },
                {
                    "description": "A GeoJSON geometry, Feature or FeatureCollection (lon/lat).",
                    "type": "object",
                    "required": ["type"],
                    "properties": {
                        "type": {"type": "string", "description": "Polygon, Feature, ..."}
                    },
                },
                {"description": "A GeoJSON file, relative to the job file.", "type": "string"},
            ],
        )
        return reference

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
    """One band (drawn through palette, or gray) or three (red, green, blue)."""
    min: float | list[float] | None = None
    """The value drawn as 0: one for all bands or one per band (with max)."""
    max: float | list[float] | None = None
    """The value drawn as 255: one for all bands or one per band (with min)."""
    palette: list[str] | None = Field(default=None, min_length=1)
    """RGB hex colours from min to max, for one band."""
    gamma: PositiveFloat | None = None
    """Gamma correction."""

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
    """The image asset: projects/P/assets/ID, users/... (legacy) or a public id such as
    COPERNICUS/S2_SR/...; required (at the top level or in each item)."""
    bands: list[str] | None = Field(default=None, min_length=1)
    """Band ids, in output order (default: all of the asset's bands)."""
    region: Region | None = None
    """What to download (default: the whole asset): {bbox: [xmin, ymin, xmax, ymax]}, a GeoJSON
    geometry, or a GeoJSON file path; region_crs inside the mapping (default lon/lat). Only
    its bounding box in the output CRS is used."""
    crs: str | None = None
    """The output CRS, EPSG:... or WKT (default: the asset's first band's)."""
    scale: PositiveFloat | None = None
    """The pixel size in CRS units, edges on multiples of it (default: the asset's own grid);
    required when crs is not the asset's, unless dimensions is given."""
    # The whole region at this many pixels, [width, height], instead of a scale (as the
    # service's grid.dimensions rescales a region); the pixel size is the extent / dimensions.
    dimensions: tuple[OutputSide, OutputSide] | None = None
    """[width, height] in pixels instead of scale: the region's bounding box in the output
    CRS (the asset's footprint without a region) at exactly this size, north-up; the pixel
    size is the extent over the dimensions."""
    workload_tag: str | None = None
    """Sent as the requests' workloadTag (shows in the Cloud project's usage)."""
    # A number for every band, or band id -> value: the value that marks missing pixels.
    # getPixels sends masked pixels as 0, so `nodata: 0` is what marks them.
    nodata: float | dict[str, float] | None = None
    """The value marking missing pixels, for every band or as {band: value}: the arrays'
    fill value and _FillValue. getPixels sends masked pixels as 0, so 0 is what marks them."""
    visualization: Visualization | None = None
    """Download 8-bit RGB drawn by the service (its visualizationOptions), stored as three
    uint8 bands vis-red, vis-green, vis-blue."""

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

    @model_validator(mode="after")
    def _scale_or_dimensions(self) -> _ItemFields:
        if self.scale is not None and self.dimensions is not None:
            raise ValueError("give scale or dimensions, not both")
        return self

    @field_validator("bands")
    @classmethod
    def _unique_bands(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("bands must not repeat")
        return value


class ItemSpec(_ItemFields):
    """One export: an asset over a region, landing in its own group of the store."""

    name: str | None = None
    """The item's group in the output store (default item0000, item0001, ...)."""

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
    """Seconds to open a connection."""
    read: PositiveFloat = 60.0
    """Seconds any one socket read may wait, so a stalled body is caught early."""
    total: PositiveFloat = 300.0
    """Seconds one request may take in all."""


class Retries(_Strict):
    max_attempts: PositiveInt = 8
    """Tries per request, the first included."""
    backoff_base: PositiveFloat = 0.5
    """Seconds of the first backoff; it doubles per attempt, with jitter."""
    backoff_cap: PositiveFloat = 30.0
    """The longest backoff bulkpix chooses, in seconds."""
    budget: Annotated[int, Field(ge=0)] = 10_000
    """Retries allowed in the whole run; past it, failing tiles fail at once."""
    # The longest any wait may be, a server's Retry-After included (never below backoff_cap).
    max_wait: Annotated[float, Field(gt=0, le=86_400)] = 300.0
    """The longest any wait may be, in seconds, a server's Retry-After included."""


class ServiceModelSpec(_Strict):
    base_s: NonNegativeFloat = 0.2
    """Seconds one request takes besides its size."""
    per_mb_s: NonNegativeFloat = 0.05
    """Seconds one request takes per MB it asks for."""


class EmulatorSection(_Strict):
    """Settings of the in-process stand-in server started by ``endpoint: emulator``."""

    synthetic: dict[str, str] = Field(default_factory=dict)  # name -> "WIDTHxHEIGHT"
    """Synthetic assets, {asset name: "WIDTHxHEIGHT"}; an asset not listed anywhere is
    served synthetic, 20,000 x 20,000."""
    assets: dict[str, list[str]] = Field(default_factory=dict)  # name -> raster files
    """Assets served from raster files, {asset name: [one file per band, or one file]}."""
    max_concurrent: PositiveInt | None = 40
    """Requests in flight the stand-in allows before answering 429 (null: no limit)."""
    max_qps: PositiveFloat | None = 100.0
    """Requests per second the stand-in allows before answering 429 (null: no limit)."""
    qps_window: Literal["minute", "second"] = "minute"  # the rate counted per minute, or strictly
    """How the rate is counted: max_qps * 60 per rolling minute, or strictly per second."""
    service_base_s: NonNegativeFloat = 0.0
    """Seconds each call takes besides its size."""
    service_per_mb_s: NonNegativeFloat = 0.0
    """Seconds each call takes per MB."""
    seed: int = 0
    """The seed of the stand-in's random choices."""

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
    """A batch: one entry per export, each with the item keys (asset, bands, region, crs,
    scale, dimensions, nodata, visualization, workload_tag) and a name; top-level item keys
    are the shared defaults."""
    output: str
    """The Zarr store: a local path (relative to the working directory, ~ expanded) or an
    fsspec URL such as gs://bucket/out.zarr."""
    endpoint: str = DEFAULT_ENDPOINT
    """The service's base URL, or emulator to start the stand-in in this process."""
    api_version: Literal["v1", "v1alpha", "v1beta"] = "v1"
    """The REST API version in the request paths."""
    project: str | None = None
    """The Cloud project whose quota is charged (sent as X-Goog-User-Project)."""
    credentials: str | None = None  # default | none | a key file; None: by endpoint
    """default (Application Default Credentials, or what earthengine authenticate wrote),
    none, or a key file (service account or authorized user); default: none with the
    emulator, default otherwise."""
    file_format: Literal["NPY", "GEO_TIFF"] = "NPY"
    """The getPixels payload format: NPY, or GEO_TIFF (all bands of one data type)."""
    concurrency: Annotated[int, Field(gt=0, le=1000)] = 40
    """Requests in flight at most (the quota's concurrent requests; the adaptive limit
    returns to it after a 429)."""
    qps: PositiveFloat = 100.0
    """Requests started per second at most (the quota's rate)."""
    chunk: Annotated[int, Field(ge=16, le=32768)] = 1024
    """The Zarr chunk side in pixels."""
    tile: Literal["auto"] | tuple[PositiveInt, PositiveInt] = "auto"
    """Pixels per request: auto (chosen from the quota and the service model) or [height,
    width], multiples of chunk."""
    memory_mb: Annotated[int, Field(ge=16)] = 128
    """MB of response bodies held at once: a body is read only when it fits, and no auto
    tile is larger than half of it."""
    compression: CompressionName = DEFAULT_COMPRESSION  # the chunk codec (store/codecs.py)
    """The chunk codec: lz4 (blosc, shuffled), zstd, gzip or none."""
    compression_level: int | None = None  # None: the codec's default level
    """The codec's level (default: the codec's own)."""
    # 3: what xarray and zarr read (GDAL from 3.11); 2: what GDAL 3.10 (rasterio's) reads.
    zarr_format: Literal[2, 3] = 3
    """3: what xarray and zarr read (GDAL from 3.11); 2: what GDAL 3.10 (rasterio's, QGIS)
    reads."""
    # fsync each chunk file (and its directory) before the tile's done-marker is written.
    durable: bool = False
    """fsync each chunk file before its tile is recorded as done (safe against power loss,
    slower)."""
    timeouts: Timeouts = Timeouts()
    """Seconds each request may take."""
    retries: Retries = Retries()
    """Retries of failed requests: per request, and a budget for the whole run."""
    service_model: ServiceModelSpec = ServiceModelSpec()
    """The expected service time of one request, base_s + per_mb_s * MB: what tile: auto and
    the plan's time estimate assume."""
    emulator: EmulatorSection | None = None
    """With endpoint: emulator, what the stand-in serves and how."""

    # The directory relative paths in the job are taken from (set by load_job).
    base_dir: SkipJsonSchema[Path] = Field(default=Path("."), exclude=True)

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
            own = item.model_dump(exclude_unset=True)
            # An item's scale replaces the shared dimensions, and its dimensions the shared scale.
            for key, other in (("scale", "dimensions"), ("dimensions", "scale")):
                if own.get(key) is not None:
                    fields[other] = None
            fields.update(own)
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
