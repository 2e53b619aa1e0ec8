"""The YAML job file: what to export, where to, and how hard to push the quota.

A job is either one item (``asset``, ``bands``, ``region``, ``crs``, ``scale`` at the top level)
or a batch: an ``items`` list whose entries override those same keys, the top level giving the
shared defaults. Everything else (output, endpoint, quota, tiling, retries) belongs to the
whole run. Every key is documented in the README.

Loading validates everything that can be checked without the network, and every problem comes
out as one ``JobError`` line naming the key. A job file is at most 1 MiB, and its YAML aliases
may expand it to at most 100 times its own node count (no "billion laughs"); a region file is
a regular file of at most 64 MiB, a key file one of at most 64 KiB (``bulkpix.files``). Values
quoted in messages are cut short, whatever their size.
"""

from __future__ import annotations

import datetime
import json
import math
import re
import reprlib
import urllib.parse
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue, SkipJsonSchema
from pydantic_core import CoreSchema

from bulkpix.assets import asset_name
from bulkpix.errors import JobError
from bulkpix.files import (
    JOB_FILE_MAX_BYTES,
    REGION_FILE_MAX_BYTES,
    FileRefused,
    read_bounded,
    read_job_named_file,
)
from bulkpix.store.codecs import DEFAULT_COMPRESSION, CompressionName, codec_for

__all__ = [
    "DEFAULT_ENDPOINT",
    "EmulatorSection",
    "Executor",
    "ItemSpec",
    "Job",
    "Region",
    "ResolvedItem",
    "Visualization",
    "load_job",
    "parse_job",
]

DEFAULT_ENDPOINT = "https://earthengine-highvolume.googleapis.com"
_ITEM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")

# A Cloud project id (6-30 characters: lowercase letters, digits, hyphens; a letter first, no
# hyphen last), the legacy domain-scoped form (example.com:my-project), or a project number.
_PROJECT = re.compile(
    r"(?:[a-z0-9](?:[a-z0-9.-]{0,61}[a-z0-9])?\.[a-z]{2,63}:)?[a-z][a-z0-9-]{4,28}[a-z0-9]"
    r"|[1-9][0-9]{0,19}"
)
# The service's workload tag: 1-63 characters, lowercase letters, digits, '-' and '_',
# beginning and ending with a letter or digit (as Earth Engine's own client checks it).
_WORKLOAD_TAG = re.compile(r"[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?")
# Below this, a "rate" is one request in minutes: a typo (1e-3 for 1e3), not a quota.
MIN_QPS = 0.1

# YAML aliases let a few hundred bytes stand for billions of values. A document may expand
# through its aliases to at most this many times its own node count, and never past the cap.
ALIAS_EXPANSION_RATIO = 100
MAX_EXPANDED_NODES = 1_000_000
# No job needs more; PyYAML composes recursively, so a deeper document would otherwise run
# into Python's recursion limit at whatever depth the caller's stack leaves.
MAX_YAML_DEPTH = 64

# Bounds on single values, so that no message, header or request carries megabytes.
MAX_ASSET_ID = 1024
MAX_BAND_ID = 256
MAX_BANDS = 1024  # the service's own limit on bands per request

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _has_control(value: str) -> bool:
    return _CONTROL.search(value) is not None


MAX_PATH = 4096  # PATH_MAX on Linux; also bounds a URL given as the output


def _check_path(value: str | None) -> str | None:
    """A file path (or URL) from the job: no control characters, at most MAX_PATH long."""
    if value is None:
        return None
    if len(value) > MAX_PATH:
        raise ValueError(f"a path is at most {MAX_PATH} characters")
    if _has_control(value):
        raise ValueError("a path must not contain control characters (NUL, newline, ...)")
    return value


_short_repr = reprlib.Repr()  # keyword arguments need Python 3.12
_short_repr.maxlevel, _short_repr.maxstring, _short_repr.maxother = 2, 60, 60
_short_repr.maxlist = _short_repr.maxtuple = _short_repr.maxdict = 4


def short(value: Any) -> str:
    """A repr of ``value`` bounded to about a hundred characters, whatever its size or depth."""
    text = _short_repr.repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
OutputSide = Annotated[int, Field(gt=0, le=2**24)]  # planning.MAX_OUTPUT_SIDE


class _Strict(BaseModel):
    # A field's docstring is its description in the JSON Schema (`bulkpix schema`), put in
    # by `describe_fields` when a schema is made: pydantic's use_attribute_docstrings finds
    # them by parsing each class's source on import (0.1 to 0.2 CPU-s for every job run).
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_crs(value: str | None) -> str | None:
    if value is None:
        return None
    # An authority code is looked up in PROJ's database; rasterio loads only for anything else.
    from bulkpix.geometry.crs import CRS

    try:
        CRS.of(value).check()  # the answer is kept: planning reuses the same CRS
    except ValueError:
        raise ValueError(f"unknown CRS {short(value)}") from None
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
            from bulkpix.geometry.crs import is_lonlat_crs, lonlat_problem

            if is_lonlat_crs(self.region_crs):
                problem = lonlat_problem(self.bbox)
                if problem:
                    raise ValueError(f"bbox {list(self.bbox)}: {problem}")
        return self

    _crs = field_validator("region_crs")(_check_crs)

    _file = field_validator("file")(_check_path)

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
        raw = read_job_named_file(path, REGION_FILE_MAX_BYTES, "region file")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise JobError(f"region file {path}: not valid GeoJSON (not UTF-8)") from None
        try:
            data = json.loads(text)
        except ValueError:
            data = None  # GeoJSON written as YAML (JSON is YAML), or not GeoJSON at all
        except RecursionError:
            raise JobError(f"region file {path}: nested too deeply") from None
        if data is None:
            try:
                data = safe_yaml(text)
            except _YamlRefused as exc:
                raise JobError(f"region file {path}: {exc}") from None
            except yaml.YAMLError:
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


_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([Zz]|[+-]\d{2}:\d{2})")
MosaicRule = Literal["last", "first", "min", "max"]
Reduction = Literal["median", "mean", "min", "max", "mosaic"]
Layout = Literal["mosaic", "items", "cube"]


def parse_time(value: str) -> datetime.datetime:
    """A date (2024-01-31) or an RFC 3339 time, as an aware UTC datetime; ValueError if not."""
    text = value.strip()
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        return datetime.datetime.fromisoformat(text).replace(tzinfo=datetime.UTC)
    if not _RFC3339.fullmatch(text):
        raise ValueError(f"{short(value)} is not a date (YYYY-MM-DD) or an RFC 3339 time")
    parsed = datetime.datetime.fromisoformat(text.replace("z", "Z"))
    return parsed.astimezone(datetime.UTC)


def rfc3339(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Checked:
    @staticmethod
    def asset_id(value: str | None) -> str | None:
        if value is not None:
            if len(value) > MAX_ASSET_ID:
                raise ValueError(f"an asset id is at most {MAX_ASSET_ID} characters")
            # It becomes part of a URL path: no query, fragment, escapes or "..".
            if _has_control(value) or re.search(r"[\s?#%\\]", value) or re.search(
                r"(^|/)\.\.?(/|$)", value
            ):
                raise ValueError(f"{short(value)} is not an asset id")
            asset_name(value)  # raises ValueError with the reason
        return value


class _ItemFields(_Strict):
    asset: str | None = None
    """The image asset: projects/P/assets/ID, users/... (legacy) or a public id such as
    COPERNICUS/S2_SR/...; this or collection is required (at the top level or in each item)."""
    expression: str | dict[str, Any] | None = None
    """A computed image instead of an asset: the path of a serialized expression graph (JSON,
    relative to the job file; what ee.serializer.encode(image, for_cloud_api=True) writes) or
    the graph inline. Needs crs, scale (or dimensions), region and project."""
    collection: str | None = None
    """An image collection instead of an asset: its images are listed (by region, dates and
    filter) and mosaicked (layout: mosaic) or exported one group each (layout: items)."""
    dates: tuple[str, str] | None = None
    """With collection: [start, end) as dates (YYYY-MM-DD) or RFC 3339 times; images whose
    start time falls in it."""
    filter: str | None = None
    """With collection: the service's filter expression, e.g.
    'properties.CLOUDY_PIXEL_PERCENTAGE < 20'."""
    layout: Layout | None = None
    """With collection: mosaic (default: one 2-D grid per band), cube (one (time, y, x)
    array per band, a step per image, or per day with group_by) or items (one group per
    image)."""
    group_by: Literal["day"] | None = None
    """With layout cube: day merges the images of one UTC day into one step (with the mosaic
    rule), as the granules of one Sentinel-2 pass need; default: a step per image."""
    mosaic: MosaicRule | None = None
    """With layout mosaic (or cube with group_by): how overlapping images combine per pixel:
    last (default: later start times on top), first, min or max; the band's nodata (default
    0) is no value."""
    reduce: Reduction | None = None
    """With collection: one composite the service computes (image:computePixels) from the
    images in dates and region: median, mean, min, max or mosaic (the last image on top).
    Needs crs, scale (or dimensions), region and project, as a computed image."""
    scale_factor: Annotated[float, Field(allow_inf_nan=False)] | None = None
    """With reduce: the composite's bands multiplied by this (e.g. 0.0000275 for Landsat
    surface reflectance), computed by the service."""
    offset: Annotated[float, Field(allow_inf_nan=False)] | None = None
    """With reduce: added to the composite's bands after scale_factor."""
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

    _asset = field_validator("asset")(lambda value: _Checked.asset_id(value))

    _collection = field_validator("collection")(lambda value: _Checked.asset_id(value))

    @field_validator("expression", mode="before")
    @classmethod
    def _expression(cls, value: Any) -> Any:
        from bulkpix.computed import check_expression

        return check_expression(value)

    @field_validator("dates")
    @classmethod
    def _dates(cls, value: tuple[str, str] | None) -> tuple[str, str] | None:
        if value is None:
            return None
        start, end = (parse_time(v) for v in value)
        if start >= end:
            raise ValueError(f"dates {list(value)}: the start must come before the end")
        return value

    @field_validator("filter")
    @classmethod
    def _filter(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > 4096 or _has_control(value) or not value.strip()):
            raise ValueError("a filter is one line of at most 4096 characters")
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
        if value is None:
            return value
        if len(value) > MAX_BANDS:
            raise ValueError(f"at most {MAX_BANDS} bands")
        if any(len(band) > MAX_BAND_ID for band in value):
            raise ValueError(f"a band id is at most {MAX_BAND_ID} characters")
        if any(_has_control(band) for band in value):
            raise ValueError("band ids must not contain control characters")
        if len(set(value)) != len(value):
            raise ValueError("bands must not repeat")
        return value

    @field_validator("workload_tag")
    @classmethod
    def _workload_tag(cls, value: str | None) -> str | None:
        if value is not None and not _WORKLOAD_TAG.fullmatch(value):
            raise ValueError(
                f"{short(value)} is not a workload tag: 1-63 lowercase letters, digits, "
                "'-' or '_', beginning and ending with a letter or digit"
            )
        return value


class ItemSpec(_ItemFields):
    """One export: an asset over a region, landing in its own group of the store."""

    name: str | None = None
    """The item's group in the output store (default item0000, item0001, ...)."""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and len(value) > 255:  # a directory name in the store
            raise ValueError("an item name is at most 255 characters")
        if value is not None and not _ITEM_NAME.match(value):
            raise ValueError(
                f"item name {short(value)} may hold only letters, digits, '_', '.', '-'"
            )
        if value is not None and value.lower() == "zarr.json":
            raise ValueError("item name 'zarr.json' is reserved by Zarr")
        return value


class ResolvedItem(_ItemFields):
    """One item with the job's defaults filled in: what planning works from. Exactly one of
    ``asset`` and ``collection`` is there, as the full resource name
    (``projects/.../assets/...``); ``source`` is whichever it is. An item of an image asset
    has ``asset`` (the callers that read it see a str)."""

    asset: str = ""  # "" for a collection item
    name: str | None = None  # None: a single-item job, at the root of the store

    # Replaces the check of the job's own key: "" stands for "no asset" here.
    _asset = field_validator("asset")(lambda value: value)

    @field_validator("asset", "collection")
    @classmethod
    def _full_name(cls, value: str | None) -> str | None:
        return asset_name(value) if value else value

    @model_validator(mode="after")
    def _one_source(self) -> ResolvedItem:
        given = [bool(self.asset), self.collection is not None, self.expression is not None]
        if sum(given) != 1:
            raise ValueError("a resolved item has exactly one of asset, collection and "
                             "expression")
        return self

    @property
    def is_collection(self) -> bool:
        """A collection whose images are listed and fetched (not reduced by the service)."""
        return self.collection is not None and self.reduce is None

    @property
    def is_computed(self) -> bool:
        """An expression, or a collection the service reduces: image:computePixels."""
        return self.expression is not None or self.reduce is not None

    @property
    def source(self) -> str:
        """The asset or the collection this item reads ("expression" for a computed image)."""
        return self.collection or self.asset or "expression"

    @property
    def layout_name(self) -> Layout | None:
        """mosaic or items for a collection (mosaic by default), None for an asset."""
        return (self.layout or "mosaic") if self.collection is not None else None

    @property
    def mosaic_rule(self) -> MosaicRule:
        return self.mosaic or "last"

    def time_range(self) -> tuple[str, str] | None:
        """``dates`` as RFC 3339 [start, end), or None."""
        if self.dates is None:
            return None
        start, end = (parse_time(v) for v in self.dates)
        return rfc3339(start), rfc3339(end)


# Waits past a day are typos, not settings (and a run would seem to hang on them).
# Below a tenth of a second every request times out, and the run only retries: a typo too.
Seconds = Annotated[float, Field(ge=0.1, le=86_400, allow_inf_nan=False)]


class Timeouts(_Strict):
    connect: Seconds = 10.0
    """Seconds to open a connection."""
    read: Seconds = 60.0
    """Seconds any one socket read may wait, so a stalled body is caught early."""
    total: Seconds = 300.0
    """Seconds one request may take in all."""


class Retries(_Strict):
    max_attempts: PositiveInt = 8
    """Tries per request, the first included."""
    backoff_base: PositiveFloat = 0.5
    """Seconds of the first backoff; it doubles per attempt, with jitter."""
    backoff_cap: Annotated[float, Field(gt=0, le=3600, allow_inf_nan=False)] = 30.0
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


class Executor(_Strict):
    dask: str = Field(min_length=1, max_length=1000)
    """The Dask scheduler's address (tcp://host:8786, or what Client() accepts): the tiles run
    on its workers, under the job's one quota."""
    batch_tiles: PositiveInt | None = None
    """Tiles per Dask task; default: enough tasks for about four per worker thread, at
    most 256 tiles each."""

    @field_validator("dask")
    @classmethod
    def _address(cls, value: str) -> str:
        value = value.strip()
        if any(ord(c) < 32 for c in value) or " " in value:
            raise ValueError("must be a scheduler address such as tcp://10.0.0.5:8786")
        return value


class EmulatorImageFile(_Strict):
    """One image of a collection served from a raster file."""

    file: str
    """The raster file (relative to the job file)."""
    start: str
    """Its start time: a date or an RFC 3339 time."""
    end: str | None = None
    """Its end time (default: a day after start)."""
    image_properties: dict[str, Any] = Field(default_factory=dict)
    """Its properties, {name: value} (what filters compare)."""

    _file = field_validator("file")(_check_path)

    @field_validator("start", "end")
    @classmethod
    def _time(cls, value: str | None) -> str | None:
        if value is not None:
            parse_time(value)
        return value


class EmulatorCollection(_Strict):
    """A collection the stand-in serves: synthetic tiles (the default), or raster files."""

    files: list[EmulatorImageFile] | None = None
    """One image per raster file; without it the collection is synthetic."""
    tiles: tuple[PositiveInt, PositiveInt] = (2, 2)
    """Synthetic: [rows, cols] of tiles."""
    tile_size: Annotated[int, Field(gt=0, le=100_000)] = 512
    """Synthetic: pixels a side of each tile."""
    overlap: Annotated[int, Field(ge=0)] = 32
    """Synthetic: pixels neighbouring tiles share."""
    scale: PositiveFloat = 30.0
    """Synthetic: pixel size in metres."""
    dates: Annotated[int, Field(gt=0, le=10_000)] = 1
    """Synthetic: days of images, one set of tiles per day."""
    start: str = "2024-01-01"
    """Synthetic: the first day."""
    crs: list[str] = Field(default_factory=lambda: ["EPSG:32633"], min_length=1)
    """Synthetic: the CRSs the tile grid repeats in (two UTM zones, say)."""
    origin: tuple[float, float] = (12.0, 46.0)
    """Synthetic: the grid's top-left corner, [lon, lat]."""

    @model_validator(mode="after")
    def _sizes(self) -> EmulatorCollection:
        if self.overlap >= self.tile_size:
            raise ValueError("overlap must be below tile_size")
        parse_time(self.start)
        for crs in self.crs:
            _check_crs(crs)
        return self


# 16.7 million px a side, as planning's MAX_OUTPUT_SIDE: past that a size is a typo.
MAX_SYNTHETIC_SIDE = 2**24


class EmulatorSection(_Strict):
    """Settings of the in-process stand-in server started by ``endpoint: emulator``."""

    synthetic: dict[str, str] = Field(default_factory=dict)  # name -> "WIDTHxHEIGHT"
    """Synthetic assets, {asset name: "WIDTHxHEIGHT"}; an asset not listed anywhere is
    served synthetic, 20,000 x 20,000."""
    assets: dict[str, list[str]] = Field(default_factory=dict)  # name -> raster files
    """Assets served from raster files, {asset name: [one file per band, or one file]}."""
    collections: dict[str, EmulatorCollection] = Field(default_factory=dict)
    """Image collections, {collection name: synthetic tiles or raster files}."""
    max_concurrent: PositiveInt | None = 40
    """Requests in flight the stand-in allows before answering 429 (null: no limit)."""
    max_qps: Annotated[float, Field(ge=MIN_QPS, allow_inf_nan=False)] | None = 100.0
    """Requests per second the stand-in allows before answering 429 (null: no limit)."""
    qps_window: Literal["minute", "second"] = "minute"  # the rate counted per minute, or strictly
    """How the rate is counted: max_qps * 60 per rolling minute, or strictly per second."""
    service_base_s: Annotated[float, Field(ge=0, le=3600, allow_inf_nan=False)] = 0.0
    """Seconds each call takes besides its size."""
    service_per_mb_s: Annotated[float, Field(ge=0, le=3600, allow_inf_nan=False)] = 0.0
    """Seconds each call takes per MB."""
    seed: int = 0
    """The seed of the stand-in's random choices."""

    @field_validator("synthetic")
    @classmethod
    def _sizes(cls, value: dict[str, str]) -> dict[str, str]:
        for name, size in value.items():
            if not re.fullmatch(r"[1-9]\d*x[1-9]\d*", str(size)):
                raise ValueError(
                    f"synthetic size for {short(name)} must be WIDTHxHEIGHT, got {short(size)}"
                )
            if any(int(side) > MAX_SYNTHETIC_SIDE for side in str(size).split("x")):
                raise ValueError(
                    f"synthetic size for {short(name)}: at most {MAX_SYNTHETIC_SIDE} px a side"
                )
        return value


class Job(_ItemFields):
    """A whole job file, validated."""

    items: list[ItemSpec] | None = Field(default=None, min_length=1)
    """A batch: one entry per export, each with the item keys (asset, bands, region, crs,
    scale, dimensions, nodata, visualization, workload_tag) and a name; top-level item keys
    are the shared defaults."""
    output: str
    """The Zarr store: a local path (relative to the working directory, ~ expanded) or an
    object-store URL (s3://, gs://, az://; see the README), or another fsspec URL."""
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
    qps: Annotated[float, Field(ge=MIN_QPS, allow_inf_nan=False)] = 100.0
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
    executor: Executor | None = None
    """Where the tiles run: absent, in this process; dask: a Dask cluster (see the README's
    "Past one machine")."""

    # The directory relative paths in the job are taken from (set by load_job).
    base_dir: SkipJsonSchema[Path] = Field(default=Path("."), exclude=True)
    # The items, resolved once when the job is validated (see ``resolved_items``).
    _resolved: tuple[ResolvedItem, ...] = PrivateAttr(default=())

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if value == "emulator":
            return value
        if len(value) > MAX_PATH:
            raise ValueError(f"a URL is at most {MAX_PATH} characters")
        if not re.match(r"^https?://[^/\s]+", value) or _has_control(value):
            raise ValueError(f"must be an http(s) URL or 'emulator', got {short(value)}")
        try:
            url = urllib.parse.urlsplit(value)
            url.port  # noqa: B018 (raises ValueError for a port out of range)
        except ValueError as exc:
            raise ValueError(f"{short(value)} is not a valid URL ({exc})") from None
        if not url.hostname:
            raise ValueError(f"{short(value)} names no host")
        return value.rstrip("/")

    _credentials = field_validator("credentials")(_check_path)

    @field_validator("project")
    @classmethod
    def _project(cls, value: str | None) -> str | None:
        if value is not None and not _PROJECT.fullmatch(value):
            raise ValueError(
                f"{short(value)} is not a Cloud project id (6-30 lowercase letters, digits "
                "or hyphens, starting with a letter) or project number"
            )
        return value

    @field_validator("output")
    @classmethod
    def _output(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        _check_path(value)
        if value.startswith("file:"):
            # fsspec's local filesystem would serve file:// too, but a plain path gets the
            # local checks and the local store: the same output either way it is written.
            url = urllib.parse.urlsplit(value)
            if url.netloc not in ("", "localhost") or not url.path.startswith("/"):
                raise ValueError(f"{short(value)}: a file URL is file:///absolute/path")
            return urllib.parse.unquote(url.path)
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
        items = self._resolved = self._resolve()
        if self.project is None and any(item.is_computed for item in items):
            raise ValueError("key 'project' is required for a computed image (expression): "
                             "the computePixels path names it")
        names = [item.name for item in items]
        duplicates = sorted({n for n in names if names.count(n) > 1 and n is not None})
        if duplicates:
            raise ValueError(f"item names repeat: {', '.join(map(str, duplicates))}")
        for index, item in enumerate(items):
            where = f"items[{index}]" if self.items else "job"
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

    def resolved_items(self) -> list[ResolvedItem]:
        """Items with the shared defaults filled in, an asset and (in a batch) a name each."""
        return list(self._resolved)

    def _resolve(self) -> tuple[ResolvedItem, ...]:
        shared = {k: getattr(self, k) for k in _ItemFields.model_fields}
        entries = (
            [{}] if self.items is None
            else [item.model_dump(exclude_unset=True) for item in self.items]
        )
        resolved = []
        for index, entry in enumerate(entries):
            fields = dict(shared)
            # An item's scale replaces the shared dimensions, and its dimensions the shared scale.
            for key, other in (("scale", "dimensions"), ("dimensions", "scale")):
                if entry.get(key) is not None:
                    fields[other] = None
            fields.update(entry)
            where = f"items[{index}]" if self.items else "job"
            if entry.get("asset") is not None and entry.get("collection") is None:
                fields["collection"] = None  # an item's asset replaces a shared collection
            if entry.get("collection") is not None and entry.get("asset") is None:
                fields["asset"] = None
            # An item's source replaces a shared one of another kind.
            if entry.get("expression") is not None:
                if entry.get("asset") is None:
                    fields["asset"] = None
                if entry.get("collection") is None:
                    fields["collection"] = None
            elif entry.get("asset") is not None or entry.get("collection") is not None:
                fields["expression"] = None
            _check_source(where, fields)
            if fields.get("asset") is None:
                fields["asset"] = ""
            if self.items is not None and not fields.get("name"):
                fields["name"] = f"item{index:04d}"
            resolved.append(ResolvedItem(**fields))
        return tuple(resolved)


def _check_source(where: str, fields: dict[str, Any]) -> None:
    """Exactly one of asset, collection and expression; the collection keys only with a
    collection; a computed image's grid keys (it has no native grid)."""
    if fields.get("expression") is not None:
        from bulkpix.computed import check_computed_item

        check_computed_item(where, fields)
        return
    asset, collection = fields.get("asset"), fields.get("collection")
    if fields.get("reduce") is not None:
        from bulkpix.computed import check_reduced_item

        check_reduced_item(where, fields)
        return
    from bulkpix.computed import check_rescale

    check_rescale(where, fields)
    if asset is not None and collection is not None:
        raise ValueError(f"{where}: give asset or collection, not both")
    if asset is None and collection is None:
        raise ValueError(f"{where}: asset is missing (or give collection)")
    if collection is None:
        given = [
            k for k in ("dates", "filter", "layout", "mosaic", "group_by")
            if fields.get(k) is not None
        ]
        if given:
            raise ValueError(f"{where}: {', '.join(given)} goes with collection, not asset")
        return
    if fields.get("group_by") is not None and fields.get("layout") != "cube":
        raise ValueError(f"{where}: group_by goes with layout cube")
    if fields.get("mosaic") is not None and fields.get("layout") == "items":
        raise ValueError(f"{where}: mosaic goes with layout mosaic, not items")
    if fields.get("visualization") is not None:
        raise ValueError(f"{where}: visualization is not supported with a collection yet")
    nodata = fields.get("nodata")
    values = nodata.values() if isinstance(nodata, dict) else [nodata]
    if fields.get("layout") != "items" and any(v is not None and v != 0 for v in values):
        # getPixels sends an image's masked pixels (the corners of its footprint's box) as 0:
        # only 0 can tell them from data when images are combined.
        raise ValueError(
            f"{where}: a mosaic or cube combines images by their 0s (getPixels sends masked "
            "pixels as 0), so its nodata must be 0"
        )


_HINTS = {
    "tile": "must be auto or [height, width]",
    "region": "must be a bbox, a GeoJSON geometry or a file path",
}


def _clean_loc(loc: tuple[Any, ...]) -> str:
    # Union branches show up as tags like "literal['auto']": they are not keys.
    parts = [str(p) for p in loc if isinstance(p, int) or str(p).isidentifier()]
    loc_text = ".".join(parts)
    return loc_text if len(loc_text) <= 80 else loc_text[:77] + "..."


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
        return f"key {top!r} {hint}, got {short(first.get('input'))}"
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
            if item.is_computed:
                from bulkpix.computed import item_graph

                item_graph(item, job.base_dir)
    return job


class _YamlRefused(ValueError):
    """A YAML document that parses but is refused (alias bomb, nesting too deep)."""


def _expanded_size(root: yaml.Node) -> tuple[int, int]:
    """(distinct nodes, nodes once every alias is expanded), without expanding anything.

    An alias is the same node object met again, so the expanded size of a node is computed
    once and reused: linear in the document, however large its expansion.
    """
    expanded: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            total = 1
            for child in _children(node):
                total += expanded[id(child)]
                if total > MAX_EXPANDED_NODES:
                    break
            expanded[key] = total
            continue
        if key in expanded:
            continue
        if key in on_path:
            raise _YamlRefused("an alias refers to a node that contains it")
        on_path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in expanded)
    return len(expanded), expanded[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def safe_yaml(text: str) -> Any:
    """Parse one YAML document with the safe loader, refusing alias bombs and deep nesting.

    A document may expand through its aliases to ``ALIAS_EXPANSION_RATIO`` times its own
    node count, and to ``MAX_EXPANDED_NODES`` nodes at most. Raises ``_YamlRefused`` for
    those, ``yaml.YAMLError`` for broken YAML.
    """
    loader = _UniqueKeyLoader(text)
    try:
        try:
            root = loader.get_single_node()
        except RecursionError:
            raise _YamlRefused("nested too deeply") from None
        if root is None:
            return None
        distinct, total = _expanded_size(root)
        limit = min(MAX_EXPANDED_NODES, ALIAS_EXPANSION_RATIO * max(distinct, 100))
        if total > limit:
            raise _YamlRefused(
                f"its aliases expand {distinct:,} YAML nodes to more than {limit:,}; refused "
                "as a YAML bomb (write the values out instead)"
            )
        try:
            return loader.construct_document(root)
        except RecursionError:
            raise _YamlRefused("nested too deeply") from None
    finally:
        loader.dispose()


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key given twice in one mapping, instead of keeping the last,
    and a document nested deeper than ``MAX_YAML_DEPTH``."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise _YamlRefused(f"nested too deeply (more than {MAX_YAML_DEPTH} levels)")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {short(key)} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_job(path: str | Path, *, overrides: dict[str, Any] | None = None) -> Job:
    """Read and validate a YAML job file; ``overrides`` replace its top-level keys."""
    path = Path(path)
    try:
        # Not only regular files: `bulkpix run <(make-job)` hands over a pipe.
        text = read_bounded(path, JOB_FILE_MAX_BYTES, regular_only=False).decode("utf-8")
    except IsADirectoryError:
        raise JobError(f"{path}: is a directory, not a job file") from None
    except FileRefused as exc:
        raise JobError(f"{path}: refused as a job file: {exc.reason}") from None
    except OSError as exc:
        raise JobError(f"{path}: cannot read the job file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise JobError(f"{path}: not a text file (it is not UTF-8)") from None
    try:
        data = safe_yaml(text)
    except _YamlRefused as exc:
        raise JobError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise JobError(f"{path}: broken YAML{where}: {problem}") from None
    if overrides and isinstance(data, dict):
        data = {**data, **overrides}
    return parse_job(data, source=str(path), base_dir=path.resolve().parent)
