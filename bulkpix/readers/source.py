"""One item of an output, as the readers see it: its bands in the job's order, its grid,
each band's nodata and attributes, and whether every tile is in."""

from __future__ import annotations

import gzip
import math
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from affine import Affine

from bulkpix.errors import JobError, StoreDamaged
from bulkpix.store.location import V2_GROUP, V3_METADATA

__all__ = ["Band", "OutputItem", "blocks", "open_item"]


@dataclass(frozen=True)
class Band:
    id: str
    dtype: np.dtype
    array: zarr.Array
    nodata: float | None  # the declared fill value, None when the band declares none
    attrs: dict[str, Any]

    @property
    def units(self) -> str | None:
        value = self.attrs.get("units")
        return value if isinstance(value, str) else None

    @property
    def scale(self) -> float:
        return float(self.attrs.get("scale_factor", 1.0))

    @property
    def offset(self) -> float:
        return float(self.attrs.get("add_offset", 0.0))


@dataclass(frozen=True)
class OutputItem:
    output: str
    path: str  # "" for a single-item output
    bands: tuple[Band, ...]
    crs: str
    transform: Affine
    width: int
    height: int
    chunk: int
    complete: bool

    def select(self, band_ids: Sequence[str] | None) -> tuple[Band, ...]:
        """The named bands, in the order named (all of them, in the job's order, for None)."""
        if not band_ids:
            return self.bands
        by_id = {b.id: b for b in self.bands}
        missing = [b for b in band_ids if b not in by_id]
        if missing:
            have = ", ".join(by_id)
            raise JobError(f"{self.label} has no band {', '.join(missing)} (it has: {have})")
        return tuple(by_id[b] for b in band_ids)

    @property
    def label(self) -> str:
        return f"{self.output} item {self.path}" if self.path else self.output

    def read(self, band: Band, rows: slice | np.ndarray, cols: slice | np.ndarray) -> np.ndarray:
        """``band``'s values at ``rows`` x ``cols`` (slices, or index arrays for an orthogonal
        read); a chunk that cannot be decoded is ``StoreDamaged``, naming it."""
        try:
            if isinstance(rows, slice) and isinstance(cols, slice):
                return np.asarray(band.array[rows, cols])
            return np.asarray(band.array.get_orthogonal_selection((rows, cols)))
        except _DECODE_ERRORS as exc:
            raise self._damaged(band, rows, cols, exc) from None

    def _damaged(
        self,
        band: Band,
        rows: slice | np.ndarray,
        cols: slice | np.ndarray,
        exc: Exception,
    ) -> StoreDamaged:
        """Find the chunk of the read that does not decode (read one by one)."""
        chunk_rows, chunk_cols = band.array.chunks
        bad, why = None, exc
        for r in _chunk_indices(rows, chunk_rows, band.array.shape[0]):
            for c in _chunk_indices(cols, chunk_cols, band.array.shape[1]):
                try:
                    band.array.blocks[r, c]
                except _DECODE_ERRORS as found:
                    bad, why = (r, c), found
                    break
            if bad is not None:
                break
        prefix = f"{self.path}/" if self.path else ""
        what = (
            f"chunk {prefix}{band.id}/{band.array.metadata.encode_chunk_key(bad)}"
            if bad is not None
            else f"a chunk of {prefix}{band.id}"
        )
        return StoreDamaged(
            f"{self.output}: {what} cannot be read ({type(why).__name__}: {why}); "
            f"`bulkpix verify {self.output}` finds the damaged tiles, and the next "
            "`bulkpix run` fetches them again"
        )


def check_destination(output: str, destination: str | Path, what: str) -> Path:
    """The file ``export``/``preview`` writes ``what`` (e.g. "GeoTIFF") to, checked: a file
    name in an existing folder, and not inside the output it reads."""
    path = Path(destination).expanduser()
    if path.is_dir():
        raise JobError(f"{path} is a directory; give the {what}'s file name")
    if not path.parent.is_dir():
        raise JobError(f"{path.parent} does not exist")
    if "://" not in str(output) and path.resolve().is_relative_to(
        Path(output).expanduser().resolve()
    ):
        raise JobError(
            f"{path} is inside the output {output}, which it is read from; write it elsewhere"
        )
    return path


# What zarr's codecs raise for bytes they cannot decode (blosc, zstd, lz4: RuntimeError; a
# chunk of the wrong size: ValueError; gzip: BadGzipFile, EOFError or zlib.error).
_DECODE_ERRORS = (RuntimeError, ValueError, zlib.error, gzip.BadGzipFile, EOFError)


def _chunk_indices(selection: slice | np.ndarray, chunk: int, length: int) -> list[int]:
    if isinstance(selection, slice):
        start, stop, _ = selection.indices(length)
        return list(range(start // chunk, (max(stop, start + 1) - 1) // chunk + 1))
    return sorted({int(i) // chunk for i in np.asarray(selection).ravel()})


def _is_output(output: str) -> bool:
    if "://" in output:
        return True
    path = Path(output)
    return (path / V3_METADATA).is_file() or (path / V2_GROUP).is_file()


def _store(output: str) -> Any:
    """What zarr opens: object-store URLs through obstore, as the run wrote them; other
    paths and URLs as zarr takes them (fsspec for URLs)."""
    from bulkpix.store.cloud import is_object_store_url, open_object_store

    if is_object_store_url(output):
        return open_object_store(output, read_only=True)
    return output


def open_item(output: str, item: str | None = None) -> OutputItem:
    """Open an output (or the item ``item`` of a batch output) for reading.

    Raises ``JobError`` with one line when it is not a bulkpix output, when a batch output
    is given without an item, or when the item does not exist.
    """
    output = str(output)
    if not _is_output(output):
        raise JobError(f"{output} is not a bulkpix output (no Zarr group there)")
    with warnings.catch_warnings():
        # The tile record under .bulkpix is not a Zarr node; zarr says so on every walk.
        warnings.simplefilter("ignore")
        try:
            root = zarr.open_group(store=_store(output), mode="r", zarr_format=None)
        except (FileNotFoundError, ValueError, KeyError) as exc:
            raise JobError(f"cannot open {output}: {exc}") from None
        info = root.attrs.get("bulkpix")
        if not isinstance(info, dict):
            raise JobError(f"{output} was not written by bulkpix")
        if info.get("batch") is True:
            names = sorted(name for name, _ in root.groups())
            if item is None:
                raise JobError(
                    f"{output} is a batch output; choose an item with --item "
                    f"(one of: {', '.join(names) or 'none yet'})"
                )
            if item not in names:
                raise JobError(f"{output} has no item {item!r} (it has: {', '.join(names)})")
            group = root[item]
            assert isinstance(group, zarr.Group)
            info = group.attrs.get("bulkpix")
            path = item
        else:
            if item is not None:
                raise JobError(f"{output} holds a single item; leave out --item")
            group, path = root, ""
        if not isinstance(info, dict) or "bands" not in info or "grid" not in info:
            raise JobError(f"{output}: item {path or '(root)'} was not written by bulkpix")
        if info.get("steps"):
            # export and preview draw one 2-D grid; a cube's steps are read with xarray.
            raise JobError(
                f"{output}: item {path or '(root)'} is a time cube of {info['steps']} steps; "
                "export and preview read 2-D outputs (open a cube with bulkpix.open or xarray)"
            )
        bands = []
        for entry in info["bands"]:
            array = group[entry["id"]]
            assert isinstance(array, zarr.Array)
            attrs = dict(array.attrs)
            bands.append(
                Band(
                    id=entry["id"],
                    dtype=np.dtype(entry["dtype"]).newbyteorder("="),
                    array=array,
                    nodata=_nodata(array, attrs),
                    attrs=attrs,
                )
            )
    grid = info["grid"]
    return OutputItem(
        output=output,
        path=path,
        bands=tuple(bands),
        crs=str(grid["crs"]),
        transform=Affine(*grid["transform"]),
        width=int(grid["width"]),
        height=int(grid["height"]),
        chunk=int(info["chunk"]),
        complete=info.get("complete") is True,
    )


def _nodata(array: zarr.Array, attrs: dict[str, Any]) -> float | None:
    """The band's declared nodata: ``_FillValue`` (v3), or the fill value (v2 declares
    nodata that way, and null when there is none)."""
    if "_FillValue" in attrs:
        value = array.metadata.fill_value if array.metadata.zarr_format == 3 else None
        if value is None:
            return None
        return float(value)
    if array.metadata.zarr_format == 2 and array.metadata.fill_value is not None:
        return float(array.metadata.fill_value)
    return None


def blocks(height: int, width: int, size: int) -> Iterator[tuple[int, int, int, int]]:
    """(row_off, col_off, height, width) windows of ``size`` covering the grid, row by row."""
    for row in range(0, height, size):
        for col in range(0, width, size):
            yield row, col, min(size, height - row), min(size, width - col)


def is_nan(value: float | None) -> bool:
    return value is not None and math.isnan(value)
