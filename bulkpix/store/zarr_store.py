"""The Zarr output (v3 by default, v2 on request): one group per job item, one 2-D array per
band, georeferenced.

Layout of an item group at ``path`` (``""`` is the store's root group)::

    {path}/zarr.json        group; attrs["bulkpix"] = version, grid, bands (in the job's
                            order), chunk, complete; consolidated metadata so xarray opens
                            it with one read (v2: .zgroup/.zattrs, .zmetadata at the root)
    {path}/{band_id}        (height, width) band dtype, chunks (chunk, chunk), the job's codec,
                            dimensions ["y", "x"] (v2: the _ARRAY_DIMENSIONS attribute),
                            grid_mapping "spatial_ref", _CRS (what GDAL reads), the band's
                            units / scale_factor / add_offset / long_name when the asset
                            gives them; fill value and _FillValue = the job's nodata, when
                            it declares one (else fill 0 in v3, none in v2, no _FillValue)
    {path}/x, {path}/y      float64 pixel-centre coordinates (CF attributes)
    {path}/spatial_ref      0-d int: crs_wkt / spatial_ref (WKT) and GeoTransform (GDAL order)
    {path}/.bulkpix/...     the tile record (``bulkpix.store.record``), not a Zarr node

This is the layout rioxarray reads (CRS from ``spatial_ref``, transform from its
``GeoTransform``, which also carries rotated/sheared grids exactly) and GDAL's Zarr driver
understands (CRS from ``_CRS``, geotransform from the regular x/y coordinates; GDAL 3.10
reads v2 only, 3.11 unsharded v3). Only the abstract zarr ``Store`` API is used here, never
the local filesystem, so the same code writes to object stores.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, Self

import numpy as np
from affine import Affine
from zarr.abc.store import Store
from zarr.api import asynchronous as zarr_async
from zarr.core.array import AsyncArray
from zarr.core.buffer import default_buffer_prototype
from zarr.core.group import AsyncGroup
from zarr.errors import ContainsArrayError, ContainsGroupError, ZarrUserWarning
from zarr.storage import LocalStore, StorePath

from bulkpix.dtypes import BandSpec
from bulkpix.errors import StoreError
from bulkpix.store.checksum import ChecksumStore
from bulkpix.store.chunk_write import write_chunk
from bulkpix.store.cloud import is_object_store_url, open_object_store
from bulkpix.store.codecs import DEFAULT_COMPRESSION, zarr_compressors
from bulkpix.store.location import (
    CUBE_COORD_NAMES,
    GRID_MAPPING,
    RESERVED_NAMES,
    V2_CONSOLIDATED,
    V3_METADATA,
)

if TYPE_CHECKING:
    from bulkpix.geometry.crs import CRS

__all__ = [
    "DEFAULT_CHUNK",
    "DEFAULT_COMPRESSION",
    "DEFAULT_ZARR_FORMAT",
    "BandSpec",
    "GridLike",
    "ItemWriter",
    "WindowLike",
    "consolidate",
    "open_store",
]

# From benchmarks/write_path.py (2 cores): 1024-px chunks cost ~3.3 CPU-s per GB written,
# 512 ~5.5, 256 ~10 (per-chunk overhead dominates). The codec: see bulkpix.store.codecs.
DEFAULT_CHUNK = 1024

ZarrFormat = Literal[2, 3]
DEFAULT_ZARR_FORMAT: ZarrFormat = 3
ZARR_FORMATS = (2, 3)

LAYOUT_VERSION = 1

# zarr warns about every object under a group that is not a Zarr node (our .bulkpix
# record); when we walk the hierarchy ourselves that warning is expected noise.
_NOT_A_NODE_WARNING = r"Object at .* is not recognized as a component of a Zarr hierarchy"
_CONSOLIDATED_WARNING = r"Consolidated metadata is currently not part"


class GridLike(Protocol):
    """What the writer needs of a ``bulkpix.geometry.grid.PixelGrid``."""

    @property
    def crs(self) -> CRS: ...
    @property
    def transform(self) -> Affine: ...
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...


class WindowLike(Protocol):
    """What the writer needs of a ``bulkpix.geometry.grid.Window``."""

    @property
    def row_off(self) -> int: ...
    @property
    def col_off(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def width(self) -> int: ...


# --------------------------------------------------------------------------- stores


async def open_store(url_or_path: str, *, read_only: bool = False) -> Store:
    """A zarr Store for a local path or a URL.

    Object-store URLs (``s3://``, ``gs://``, ``az://``, ``abfs://`` ...) go through zarr's
    ``ObjectStore`` over obstore, configured from the environment (``bulkpix.store.cloud``).
    Any other URL (``memory://`` ...) goes through fsspec (``FsspecStore.from_url``), which
    must be installed along with the filesystem's package.
    """
    if "://" not in url_or_path:
        return await LocalStore.open(url_or_path, read_only=read_only)
    if is_object_store_url(url_or_path):
        return open_object_store(url_or_path, read_only=read_only)
    try:
        from zarr.storage import FsspecStore

        return FsspecStore.from_url(url_or_path, read_only=read_only)
    except ImportError as exc:
        raise StoreError(
            f"cannot open {url_or_path!r}: this URL needs fsspec and the "
            f"filesystem's package: {exc}"
        ) from None
    except (ValueError, TypeError) as exc:
        raise StoreError(f"cannot open {url_or_path!r}: {exc}") from None


async def zarr_format_of(store: Store, path: str = "") -> ZarrFormat | None:
    """The Zarr format (2 or 3) of the group at ``path``, None when there is no group."""
    prefix = _prefix(path)
    prototype = default_buffer_prototype()
    if await store.get(f"{prefix}{V3_METADATA}", prototype=prototype) is not None:
        return 3
    if await store.get(f"{prefix}.zgroup", prototype=prototype) is not None:
        return 2
    return None


async def consolidate(
    store: Store, path: str = "", zarr_format: ZarrFormat | None = None
) -> None:
    """Consolidate the metadata of the group at ``path`` and everything under it.

    ``xarray.open_zarr(store, group=item)`` looks for consolidated metadata at the store's
    ROOT; call this once with ``path=""`` after all items of a run exist (not from several
    processes at once: the last writer wins). The format is the group's own unless given.
    """
    if zarr_format is None:
        zarr_format = await zarr_format_of(store, path) or DEFAULT_ZARR_FORMAT
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", _NOT_A_NODE_WARNING, ZarrUserWarning)
        warnings.filterwarnings("ignore", _CONSOLIDATED_WARNING, ZarrUserWarning)
        await zarr_async.consolidate_metadata(store, path=path or None, zarr_format=zarr_format)


async def mark_batch_root(store: Store, zarr_format: ZarrFormat = DEFAULT_ZARR_FORMAT) -> None:
    """Make the store's root group (if need be) and mark it as holding a bulkpix batch."""
    # A new root is created with its mark in one write: no moment where it exists unmarked.
    await _open_or_make_group(store, "", {"bulkpix": {"batch": True}}, zarr_format)


async def has_keys_under(store: Store, path: str) -> bool:
    """True when any object exists under the group prefix ``path``."""
    async for _ in store.list_prefix(_prefix(path)):
        return True
    return False


async def _drop_root_consolidation(store: Store) -> None:
    """Remove the root group's consolidated metadata, which no longer lists this item.

    A stale copy would make xarray miss (or mis-read) the new item; without one it reads the
    metadata object by object until ``consolidate(store)`` runs again at the end of the run.
    Re-consolidating here instead would re-read every item for every item created.
    """
    prototype = default_buffer_prototype()
    if await store.get(V2_CONSOLIDATED, prototype=prototype) is not None:  # a v2 store
        await store.delete(V2_CONSOLIDATED)
        return
    buffer = await store.get(V3_METADATA, prototype=prototype)
    if buffer is None:
        return
    metadata = json.loads(buffer.to_bytes())
    if metadata.pop("consolidated_metadata", None) is None:
        return
    await store.set(
        V3_METADATA, prototype.buffer.from_bytes(json.dumps(metadata, indent=2).encode())
    )


def _prefix(path: str) -> str:
    path = path.strip("/")
    return f"{path}/" if path else ""


# --------------------------------------------------------------------------- georeferencing


def gdal_geotransform(transform: Affine) -> str:
    """GDAL's "c a b f d e", each number in full precision (repr round-trips a float)."""
    return " ".join(repr(float(v)) for v in transform.to_gdal())


def pixel_centres(transform: Affine, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """x centres along the first row and y centres along the first column.

    Exact for north-up grids; for rotated/sheared grids 1-D coordinates cannot describe
    the grid, so these are a best effort and ``GeoTransform`` is the truth.
    """
    a, b, c, d, e, f = transform[:6]
    cols = np.arange(width, dtype=np.float64) + 0.5
    rows = np.arange(height, dtype=np.float64) + 0.5
    return c + a * cols + b * 0.5, f + d * 0.5 + e * rows


def _crs_wkt(crs: CRS) -> str:
    try:
        return crs.wkt
    except ValueError as exc:
        raise StoreError(str(exc)) from None


def _coordinate_attrs(crs: CRS) -> tuple[dict[str, Any], dict[str, Any]]:
    """CF attributes of the x and y coordinate arrays."""
    if crs.is_geographic:
        return (
            {
                "standard_name": "longitude",
                "long_name": "longitude",
                "units": "degrees_east",
                "axis": "X",
            },
            {
                "standard_name": "latitude",
                "long_name": "latitude",
                "units": "degrees_north",
                "axis": "Y",
            },
        )
    units = crs.linear_units
    units = "metre" if units in ("metre", "meter", "m") else units
    return (
        {
            "standard_name": "projection_x_coordinate",
            "long_name": "x coordinate of projection",
            "units": units,
            "axis": "X",
        },
        {
            "standard_name": "projection_y_coordinate",
            "long_name": "y coordinate of projection",
            "units": units,
            "axis": "Y",
        },
    )


def grid_to_json(grid: GridLike) -> dict[str, Any]:
    return {
        "crs": grid.crs.text,  # as given (the job's or the asset's own spelling)
        "transform": [float(v) for v in grid.transform[:6]],
        "width": int(grid.width),
        "height": int(grid.height),
    }


# --------------------------------------------------------------------------- the writer


class ItemWriter:
    """Writes decoded tiles of one job item into its Zarr group. Use ``create`` or ``open``."""

    def __init__(
        self,
        store: Store,
        path: str,
        arrays: Mapping[str, AsyncArray],
        bands: Sequence[BandSpec],
        chunk: int,
        height: int,
        width: int,
        steps: int = 0,
    ) -> None:
        self.store = store
        self.steps = steps  # a time cube's steps: arrays are (time, y, x); 0: (y, x)
        self.path = path
        self.bands = tuple(bands)
        self.chunk = chunk
        self.height = height
        self.width = width
        # Empty chunks are written like any other: zarr's all-equal check per chunk costs
        # more CPU than storing a few bytes of zstd for a chunk of zeros.
        self._arrays = {
            name: array.with_config({"write_empty_chunks": True}) for name, array in arrays.items()
        }

    @property
    def stores_copies(self) -> bool:
        """Whether a written tile's arrays are free to change once ``write_tile`` returns:
        every array compresses its chunks into new bytes. Without a compressor a chunk may be
        stored as a view of the tile's array, which a store that keeps what it is given (an
        in-memory one) would then see change."""
        return all(
            bool(getattr(array.codec_pipeline, "bytes_bytes_codecs", ()))
            for array in self._arrays.values()
        )

    # ---------------------------------------------------------------- construction

    @classmethod
    async def create(
        cls,
        store: Store,
        path: str,
        grid: GridLike,
        bands: Sequence[BandSpec],
        chunk: int = DEFAULT_CHUNK,
        attrs: Mapping[str, Any] | None = None,
        *,
        compression: str = DEFAULT_COMPRESSION,
        compression_level: int | None = None,
        overwrite: bool = False,
        zarr_format: ZarrFormat = DEFAULT_ZARR_FORMAT,
        band_attrs: Mapping[str, Mapping[str, Any]] | None = None,
        fill_values: Mapping[str, float] | None = None,
        keep_existing: bool = False,
        steps: Sequence[tuple[str, str]] | None = None,
    ) -> Self:
        """Create the item group and all its arrays (no pixel data is written).

        ``compression`` names the chunk codec (``bulkpix.store.codecs``: none, zstd, lz4,
        gzip) and ``compression_level`` its level (None: the codec's default). If anything
        already exists under ``path`` this raises ``StoreError`` unless ``overwrite`` (which
        deletes it all, tile record included) or ``keep_existing``: then only the nodes this
        writer makes are written (the group's metadata, keeping attributes it does not set;
        band arrays that are missing or of another shape; the coordinates) and anything else
        under ``path`` (a user's own arrays, the tile record) stays. ``band_attrs`` adds
        attributes to a band's array (units, scale_factor, ...); ``fill_values`` declares a
        band's nodata: its fill value and ``_FillValue``, which xarray masks and GDAL reports
        as nodata. A band without one declares none (its v3 fill value is 0, which v3 readers
        do not take for nodata). ``steps`` makes a time cube: (time as RFC 3339, image id) of
        each step; every band is then (time, y, x) in chunks (1, chunk, chunk), with ``time``
        (CF seconds since the epoch, which xarray decodes to datetime64) and ``image_id``
        coordinates.
        """
        path = path.strip("/")
        _check_band_names(bands)
        if steps is not None:
            if not steps:
                raise ValueError("a time cube needs at least one step")
            clash = [b.id for b in bands if b.id in CUBE_COORD_NAMES]
            if clash:
                raise StoreError(f"band id {clash[0]!r} clashes with a time cube's coordinate")
        if chunk <= 0:
            raise ValueError(f"chunk must be positive, got {chunk}")
        if zarr_format not in ZARR_FORMATS:
            raise ValueError(f"zarr_format must be 2 or 3, got {zarr_format}")
        band_attrs = band_attrs or {}
        fill_values = dict(fill_values or {})
        for band in bands:
            if band.id in fill_values:
                fill_values[band.id] = _fill_value(band, fill_values[band.id])
        if not keep_existing and await has_keys_under(store, path):
            if not overwrite:
                raise StoreError(
                    f"the store already holds data at {path or '(root)'!r}; "
                    "resume it with ItemWriter.open_recorded or pass overwrite=True"
                )
            await store.delete_dir(path)

        height, width = int(grid.height), int(grid.width)
        group_attrs = dict(attrs or {})
        group_attrs["bulkpix"] = {
            "layout": LAYOUT_VERSION,
            "version": _bulkpix_version(),
            "grid": grid_to_json(grid),
            # The job's band order: zarr lists arrays in no particular order, so readers
            # (bulkpix.open, export, preview) take the order from here.
            "bands": [{"id": b.id, "dtype": b.dtype.str} for b in bands],
            "chunk": chunk,
            **({"steps": len(steps)} if steps is not None else {}),
            "complete": False,  # set by mark_complete once every tile is stored
        }
        if keep_existing:
            group = await _open_or_make_group(store, path, group_attrs, zarr_format)
        else:
            group = await AsyncGroup.from_store(
                StorePath(store, path), attributes=group_attrs, zarr_format=zarr_format
            )
        compressors = zarr_compressors(compression, compression_level, zarr_format)
        crs_attr = {"wkt": _crs_wkt(grid.crs)}

        def array_attrs(band: BandSpec) -> dict[str, Any]:
            # "coordinates" makes xarray keep spatial_ref as a coordinate, as rioxarray
            # itself writes it; _CRS is where GDAL's Zarr driver looks for the CRS.
            out: dict[str, Any] = {
                "grid_mapping": GRID_MAPPING,
                "coordinates": GRID_MAPPING if steps is None else f"{GRID_MAPPING} image_id",
                "_CRS": crs_attr,
            }
            out.update(band_attrs.get(band.id, {}))
            if zarr_format == 3 and band.id in fill_values:
                # v3 readers do not take the fill value for nodata; xarray masks _FillValue.
                out["_FillValue"] = _fill_value_attribute(band, fill_values[band.id])
            return out

        def fill_value(band: BandSpec) -> Any:
            if band.id in fill_values:
                return fill_values[band.id]
            # v2 readers (xarray, GDAL) take the fill value for nodata: declare none.
            return None if zarr_format == 2 else 0

        arrays = await asyncio.gather(
            *(
                _make_array(
                    group,
                    keep_existing,
                    name=band.id,
                    shape=(height, width) if steps is None else (len(steps), height, width),
                    dtype=band.dtype,
                    chunks=(chunk, chunk) if steps is None else (1, chunk, chunk),
                    compressors=compressors,
                    fill_value=fill_value(band),
                    **_dimensions(
                        zarr_format,
                        ("y", "x") if steps is None else ("time", "y", "x"),
                        array_attrs(band),
                    ),
                )
                for band in bands
            )
        )
        await _write_georeferencing(group, grid, chunk, zarr_format, keep_existing=keep_existing)
        if steps is not None:
            await _write_time_coordinates(group, steps, zarr_format, keep_existing=keep_existing)
        await consolidate(store, path, zarr_format)
        if path:
            await _drop_root_consolidation(store)
        return cls(
            store,
            path,
            dict(zip((b.id for b in bands), arrays, strict=True)),
            bands,
            chunk,
            height,
            width,
            len(steps) if steps is not None else 0,
        )

    @classmethod
    async def open_recorded(
        cls,
        store: Store,
        path: str,
        bands: Sequence[BandSpec],
        chunk: int,
        height: int,
        width: int,
        steps: int = 0,
    ) -> Self:
        """Reopen an item from what its record says (the record owns the item's layout;
        the group's ``bulkpix`` attribute is only a copy for other readers)."""
        path = path.strip("/")

        async def open_band(band: BandSpec) -> AsyncArray:
            try:
                array = await AsyncArray.open(
                    StorePath(store, _prefix(path) + band.id), zarr_format=None
                )
            except (FileNotFoundError, KeyError) as exc:
                raise StoreError(
                    f"band array {band.id!r} at {path or '(root)'!r} is missing: {exc}"
                ) from None
            shape = (height, width) if not steps else (steps, height, width)
            if not isinstance(array, AsyncArray) or array.shape != shape:
                raise StoreError(
                    f"band array {band.id!r} at {path or '(root)'!r} does not match its record"
                )
            return array

        arrays = await asyncio.gather(*(open_band(b) for b in bands))
        return cls(
            store,
            path,
            dict(zip((b.id for b in bands), arrays, strict=True)),
            bands,
            chunk,
            height,
            width,
            steps,
        )

    # ---------------------------------------------------------------- writing

    async def write_tile(
        self, window: WindowLike, arrays: Mapping[str, np.ndarray], *, step: int | None = None
    ) -> dict[str, int]:
        """Write one decoded tile: every band's (height, width) array at the window's offset
        (in a time cube, at time index ``step``, which a cube needs and a 2-D output refuses).

        The window must be chunk-aligned (its edges on multiples of ``chunk`` or on the
        array's edge) so that every chunk is written whole: no read-modify-write, and tiles
        written concurrently never touch the same chunk. Returns once every chunk is stored,
        with the crc32c of each stored chunk by its key relative to the item (``B4/c/0/1``)
        when the store is a ``ChecksumStore`` (else an empty dict).
        """
        self._check_tile(window, arrays)
        if (step is None) != (self.steps == 0) or (step is not None and not 0 <= step < self.steps):
            raise ValueError(f"step {step} does not fit an output of {self.steps} steps")
        at: tuple[int, ...] = () if step is None else (step,)
        # One write per chunk: given several, zarr first fills a new chunk with the fill
        # value and copies the value in (twice the memory traffic: ~40% of the write's CPU
        # for 2048-px tiles in 1024-px chunks); write_chunk also skips zarr's ~1 ms of
        # per-chunk machinery. A band's slice goes in as it is: a contiguous one (an NPY
        # tile of one chunk) is encoded without a copy, another is copied to contiguous
        # bytes by the encoder, on a worker thread.
        await asyncio.gather(
            *(
                write_chunk(
                    self._arrays[band],
                    (*at, slice(row, row + height), slice(col, col + width)),
                    array[row - window.row_off : row - window.row_off + height,
                          col - window.col_off : col - window.col_off + width],
                )
                for row, height in _chunk_spans(window.row_off, window.height, self.chunk)
                for col, width in _chunk_spans(window.col_off, window.width, self.chunk)
                for band, array in arrays.items()
            )
        )
        if not isinstance(self.store, ChecksumStore):
            return {}
        keys = self.chunk_keys(window, arrays, step)
        prefix = _prefix(self.path)
        crcs = self.store.take(prefix + key for key in keys)
        return {key[len(prefix) :]: crc for key, crc in crcs.items()}

    def chunk_keys(
        self, window: WindowLike, bands: Iterable[str], step: int | None = None
    ) -> list[str]:
        """The store keys (relative to the item) of the chunks a window covers, per band (at
        time index ``step`` in a cube)."""
        at: tuple[int, ...] = () if step is None else (step,)
        rows = range(
            window.row_off // self.chunk, -(-(window.row_off + window.height) // self.chunk)
        )
        cols = range(
            window.col_off // self.chunk, -(-(window.col_off + window.width) // self.chunk)
        )
        keys = []
        for band in bands:
            metadata = self._arrays[band].metadata
            for i in rows:
                for j in cols:
                    keys.append(f"{band}/{metadata.encode_chunk_key((*at, i, j))}")
        return keys

    def array_paths(self) -> list[str]:
        """Store paths of the band arrays (what a ``ChecksumStore`` should track)."""
        return [_prefix(self.path) + b.id for b in self.bands]

    async def mark_complete(self) -> None:
        """Record in the group's attributes that every tile is stored (readers check
        ``attrs["bulkpix"]["complete"]``). Re-consolidate the root afterwards."""
        group = await AsyncGroup.open(
            StorePath(self.store, self.path), use_consolidated=False, zarr_format=None
        )
        info = dict(group.attrs.get("bulkpix") or {})
        if info.get("complete") is True:
            return
        info["complete"] = True
        await group.update_attributes({"bulkpix": info})

    def _check_tile(self, window: WindowLike, arrays: Mapping[str, np.ndarray]) -> None:
        expected = {b.id for b in self.bands}
        # A tile of one band group carries only that group's bands.
        if not arrays or not set(arrays) <= expected:
            raise ValueError(
                f"tile bands {sorted(arrays)} not among output bands {sorted(expected)}"
            )
        row_end = window.row_off + window.height
        col_end = window.col_off + window.width
        if (
            window.row_off < 0
            or window.col_off < 0
            or row_end > self.height
            or (col_end > self.width)
        ):
            raise ValueError(f"window {window} is outside the {self.height}x{self.width} grid")
        if not (
            _on_chunk_edge(window.row_off, self.chunk, self.height)
            and _on_chunk_edge(window.col_off, self.chunk, self.width)
            and _on_chunk_edge(row_end, self.chunk, self.height)
            and _on_chunk_edge(col_end, self.chunk, self.width)
        ):
            raise ValueError(f"window {window} is not aligned to chunk {self.chunk}")
        for band in self.bands:
            value = arrays.get(band.id)
            if value is None:
                continue
            if value.shape != (window.height, window.width):
                raise ValueError(f"band {band.id!r} has shape {value.shape}, window {window}")
            if value.dtype != band.dtype:
                raise ValueError(f"band {band.id!r} is {value.dtype}, output is {band.dtype}")


def _chunk_spans(offset: int, length: int, chunk: int) -> list[tuple[int, int]]:
    """(start, length) of each chunk along one axis of a chunk-aligned window."""
    return [(start, min(chunk, offset + length - start))
            for start in range(offset, offset + length, chunk)]


def _on_chunk_edge(offset: int, chunk: int, size: int) -> bool:
    return offset % chunk == 0 or offset == size


def _check_band_names(bands: Sequence[BandSpec]) -> None:
    ids = [b.id for b in bands]
    if not ids:
        raise StoreError("an output needs at least one band")
    if len(set(ids)) != len(ids):
        raise StoreError(f"duplicate band ids: {ids}")
    for band_id in ids:
        if band_id in RESERVED_NAMES:
            raise StoreError(f"band id {band_id!r} clashes with a name the output reserves")
        if not band_id or "/" in band_id or band_id.startswith("__") or band_id in (".", ".."):
            raise StoreError(f"band id {band_id!r} cannot name a Zarr array")


def _dimensions(
    zarr_format: int, names: tuple[str, ...], attributes: dict[str, Any]
) -> dict[str, Any]:
    """Dimension names as each format holds them: v3 metadata, or v2's xarray attribute."""
    if zarr_format == 2:
        return {"attributes": {"_ARRAY_DIMENSIONS": list(names), **attributes}}
    return {"dimension_names": names, "attributes": attributes}


def _fill_value(band: BandSpec, value: float) -> Any:
    """The nodata value as the band's type holds it; StoreError when it cannot."""
    kind = band.dtype.kind
    if kind in "iu":
        info = np.iinfo(band.dtype)
        if not (float(value).is_integer() and info.min <= value <= info.max):
            raise StoreError(
                f"nodata {value} for band {band.id!r} is not a {band.dtype.name} value"
            )
        return int(value)
    return float(value)


def _fill_value_attribute(band: BandSpec, value: float) -> int | str:
    """``_FillValue`` as xarray writes it in a v3 array's attributes: an integer as is, a
    float as the base64 of its little-endian float64 bytes (so NaN survives JSON)."""
    if band.dtype.kind in "iu":
        return int(value)
    return base64.standard_b64encode(struct.pack("<d", float(value))).decode()


async def _open_or_make_group(
    store: Store, path: str, attributes: dict[str, Any], zarr_format: ZarrFormat
) -> AsyncGroup:
    """The group at ``path`` with ``attributes`` set, made if missing, others' attributes kept.

    Runs of the same job may make it at the same moment: whoever loses opens the winner's.
    """
    for attempt in range(2):
        try:
            group = await zarr_async.open_group(
                store=store, path=path, mode="a", zarr_format=zarr_format, attributes=attributes
            )
            break
        except (ContainsGroupError, ContainsArrayError):
            if attempt:
                raise
    if any(group.attrs.get(name) != value for name, value in attributes.items()):
        group = await group.update_attributes(attributes)
    return group


async def _make_array(
    group: AsyncGroup, keep_existing: bool, *, name: str, shape: tuple[int, ...], **kwargs: Any
) -> AsyncArray:
    """Create an array; with ``keep_existing`` one that already exists with the same shape,
    type and chunks is kept (made by an earlier or a concurrent run of the same job)."""
    if not keep_existing:
        return await group.create_array(name=name, shape=shape, **kwargs)
    existing = await _existing_array(group, name)
    if existing is not None:
        chunks = kwargs.get("chunks")
        if (
            existing.shape == shape
            and existing.dtype == np.dtype(kwargs["dtype"])
            and (chunks is None or existing.chunks == tuple(chunks))
        ):
            return existing
        return await group.create_array(name=name, shape=shape, overwrite=True, **kwargs)
    try:
        return await group.create_array(name=name, shape=shape, **kwargs)
    except (ContainsArrayError, ContainsGroupError):
        made = await _existing_array(group, name)  # a concurrent run made it just now
        if made is None:
            raise
        return made


async def _existing_array(group: AsyncGroup, name: str) -> AsyncArray | None:
    try:
        node = await group.getitem(name)
    except KeyError:
        return None
    return node if isinstance(node, AsyncArray) else None


async def _write_georeferencing(
    group: AsyncGroup,
    grid: GridLike,
    chunk: int,
    zarr_format: ZarrFormat = DEFAULT_ZARR_FORMAT,
    *,
    keep_existing: bool = False,
) -> None:
    """The x/y centre coordinates and the spatial_ref grid-mapping variable."""
    wkt = _crs_wkt(grid.crs)
    x_attrs, y_attrs = _coordinate_attrs(grid.crs)
    x_centres, y_centres = pixel_centres(grid.transform, int(grid.width), int(grid.height))
    # Coordinates are read whole by xarray: few, large chunks.
    coord_chunk = max(chunk, 1 << 16)

    async def write_coordinate(name: str, values: np.ndarray, attrs: dict[str, Any]) -> None:
        array = await _make_array(
            group,
            keep_existing,
            name=name,
            shape=values.shape,
            dtype=np.float64,
            chunks=(min(coord_chunk, max(values.size, 1)),),
            compressors=None,
            fill_value=np.nan,
            **_dimensions(zarr_format, (name,), attrs),
        )
        await array.setitem(slice(None), values)

    spatial_ref = await _make_array(
        group,
        keep_existing,
        name=GRID_MAPPING,
        shape=(),
        dtype=np.int64,
        # v2 readers would mask a fill value of 0 and turn the variable into a NaN.
        fill_value=None if zarr_format == 2 else 0,
        compressors=None,
        **_dimensions(
            zarr_format,
            (),
            {
                "crs_wkt": wkt,
                "spatial_ref": wkt,
                "GeoTransform": gdal_geotransform(grid.transform),
            },
        ),
    )
    await asyncio.gather(
        write_coordinate("x", x_centres, x_attrs),
        write_coordinate("y", y_centres, y_attrs),
        spatial_ref.setitem((), 0),
    )


async def _write_time_coordinates(
    group: AsyncGroup,
    steps: Sequence[tuple[str, str]],
    zarr_format: ZarrFormat,
    *,
    keep_existing: bool = False,
) -> None:
    """A time cube's ``time`` (CF: int64 seconds since the epoch, proleptic Gregorian, which
    xarray decodes to datetime64) and ``image_id`` (variable-length strings) coordinates."""
    import datetime

    # RFC 3339 times; one without a zone is UTC.
    moments = [datetime.datetime.fromisoformat(time) for time, _ in steps]
    epoch = [
        int((m if m.tzinfo else m.replace(tzinfo=datetime.UTC)).timestamp()) for m in moments
    ]
    time_attrs = {
        "standard_name": "time",
        "long_name": "start time of the step's first image",
        "units": "seconds since 1970-01-01T00:00:00Z",
        "calendar": "proleptic_gregorian",
        "axis": "T",
    }
    time = await _make_array(
        group,
        keep_existing,
        name="time",
        shape=(len(steps),),
        dtype=np.int64,
        chunks=(len(steps),),
        compressors=None,
        fill_value=None if zarr_format == 2 else 0,
        **_dimensions(zarr_format, ("time",), time_attrs),
    )
    ids = await _make_array(
        group,
        keep_existing,
        name="image_id",
        shape=(len(steps),),
        dtype=str,
        chunks=(len(steps),),
        fill_value="",
        **_dimensions(
            zarr_format, ("time",), {"long_name": "the step's image ids, joined by +"}
        ),
    )
    await asyncio.gather(
        time.setitem(slice(None), np.array(epoch, dtype=np.int64)),
        ids.setitem(slice(None), np.array([image for _, image in steps], dtype=object)),
    )


def _bulkpix_version() -> str:
    try:
        from importlib.metadata import version

        return version("bulkpix")
    except Exception:  # not installed as a distribution (running from a checkout)
        return "unknown"
