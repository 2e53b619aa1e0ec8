"""``bulkpix export``: an output (one item of it) as a Cloud-Optimized GeoTIFF.

Streaming, in two passes that each hold a few chunks: the bands go chunk by chunk into a
tiled scratch GeoTIFF beside the destination, then GDAL's COG driver copies it block by block,
adding internal overviews. GDAL's block cache is capped so its memory stays small too. The
COG appears under its name only once complete (written as a temporary file, then renamed).

A GeoTIFF holds one data type: bands of mixed types are refused unless ``dtype`` names a type
that holds every band's values exactly (``--dtype float32``), the flag saying so.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bulkpix.errors import JobError
from bulkpix.readers.source import (
    Band,
    OutputItem,
    blocks,
    check_destination,
    is_nan,
    open_item,
)

__all__ = ["COMPRESSIONS", "RESAMPLINGS", "ExportResult", "export_cog"]

COMPRESSIONS = ("DEFLATE", "ZSTD", "LZW", "NONE")
RESAMPLINGS = ("nearest", "average", "bilinear", "cubic", "mode")
# GDAL's block cache for the export, in MB: enough for a row of COG blocks, small next to
# any image worth exporting.
GDAL_CACHE_MB = 64
COG_BLOCKSIZE = 512


@dataclass(frozen=True)
class ExportResult:
    path: Path
    width: int
    height: int
    bands: tuple[str, ...]
    dtype: str
    nodata: float | None
    complete: bool  # False: a partial output, exported on request


def export_cog(
    output: str,
    destination: str | Path,
    *,
    item: str | None = None,
    bands: Sequence[str] | None = None,
    dtype: str | None = None,
    compress: str = "DEFLATE",
    resampling: str = "nearest",
    partial: bool = False,
) -> ExportResult:
    """Write ``destination`` as a COG of ``bands`` (all, in the job's order, by default).

    Raises ``JobError`` (one line) for bad input: not an output, an unknown item or band,
    mixed types without ``dtype``, an incomplete output without ``partial``.
    """
    source = open_item(output, item)
    selected = source.select(bands)
    if not source.complete and not partial:
        raise JobError(
            f"{source.label} is not complete (tiles are missing and would read as fill "
            "values); finish it with `bulkpix run`, or export it as it is with --partial"
        )
    out_dtype = _output_dtype(selected, dtype)
    nodata, to_nan = _output_nodata(selected, out_dtype)
    compress = compress.upper()
    if compress not in COMPRESSIONS:
        raise JobError(f"unknown compression {compress!r} (one of: {', '.join(COMPRESSIONS)})")
    if resampling not in RESAMPLINGS:
        raise JobError(f"unknown resampling {resampling!r} (one of: {', '.join(RESAMPLINGS)})")
    destination = check_destination(output, destination, "GeoTIFF")

    import rasterio
    import rasterio.shutil

    folder = destination.parent
    scratch = _temporary(folder, destination.name, ".scratch.tif")
    partial_cog = _temporary(folder, destination.name, ".part")
    try:
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB, CPL_LOG=os.devnull):
            _write_scratch(scratch, source, selected, out_dtype, nodata, to_nan)
            rasterio.shutil.copy(
                scratch,
                partial_cog,
                driver="COG",
                COMPRESS=compress,
                BLOCKSIZE=COG_BLOCKSIZE,
                OVERVIEWS="AUTO",
                RESAMPLING=resampling.upper(),
                BIGTIFF="IF_SAFER",
                **({"PREDICTOR": "YES"} if compress != "NONE" else {}),
            )
        os.replace(partial_cog, destination)
    finally:
        for path in (scratch, partial_cog):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    return ExportResult(
        path=destination,
        width=source.width,
        height=source.height,
        bands=tuple(b.id for b in selected),
        dtype=out_dtype.name,
        nodata=nodata,
        complete=source.complete,
    )


def _temporary(folder: Path, name: str, suffix: str) -> Path:
    handle, path = tempfile.mkstemp(prefix=f".{name}.", suffix=suffix, dir=folder)
    os.close(handle)
    return Path(path)


def _output_dtype(bands: Sequence[Band], requested: str | None) -> np.dtype:
    types = [b.dtype for b in bands]
    if requested is None:
        if len(set(types)) > 1:
            kinds = ", ".join(f"{b.id}={b.dtype.name}" for b in bands)
            common = np.result_type(*types).name
            raise JobError(
                f"the bands have different types ({kinds}) and a GeoTIFF holds one: pass "
                f"--dtype {common} to convert them all (values kept exactly), or choose "
                "bands of one type with --bands"
            )
        return types[0]
    try:
        out = np.dtype(requested)
    except TypeError:
        raise JobError(f"unknown data type {requested!r} (e.g. uint16, float32)") from None
    lossy = [f"{b.id}={b.dtype.name}" for b in bands if not np.can_cast(b.dtype, out, "safe")]
    if lossy or out.kind not in "iuf":
        raise JobError(
            f"--dtype {out.name} cannot hold every value of {', '.join(lossy) or 'the bands'}; "
            f"use {np.result_type(*types).name}"
        )
    return out


def _output_nodata(bands: Sequence[Band], out: np.dtype) -> tuple[float | None, bool]:
    """The file's one nodata value, and whether each band's own nodata becomes NaN."""
    declared = [b.nodata for b in bands]
    if all(v is None for v in declared):
        return None, False
    values = {repr(float(v)) for v in declared if v is not None}
    if len(values) == 1 and None not in declared:
        value = next(v for v in declared if v is not None)
        return (value if not (out.kind in "iu" and is_nan(value)) else None), False
    if out.kind == "f":
        return float("nan"), True  # each band's own nodata becomes NaN, the file's nodata
    listed = ", ".join(f"{b.id}={b.nodata}" for b in bands)
    raise JobError(
        f"the bands declare different nodata ({listed}) and a GeoTIFF has one: export them "
        "separately with --bands, or pass --dtype float32 (or float64) to mark them all NaN"
    )


def _write_scratch(
    path: Path,
    source: OutputItem,
    bands: Sequence[Band],
    dtype: np.dtype,
    nodata: float | None,
    to_nan: bool,
) -> None:
    import rasterio
    from rasterio.windows import Window

    from bulkpix.geometry.crs import CRS

    # Band-interleaved tiles: each band's block is written once, never read back.
    size = COG_BLOCKSIZE
    profile = {
        "driver": "GTiff",
        "width": source.width,
        "height": source.height,
        "count": len(bands),
        "dtype": dtype.name,
        "crs": CRS.of(source.crs).to_rasterio(),
        "transform": source.transform,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": size,
        "blockysize": size,
        "interleave": "band",
        "compress": "ZSTD",
        "zstd_level": 1,
        "bigtiff": "IF_SAFER",
    }
    # Read windows are whole zarr chunks and whole GeoTIFF blocks at once.
    step = _lcm(source.chunk, size)
    if step > 4 * max(source.chunk, size):
        step = source.chunk
    with rasterio.open(path, "w", **profile) as dst:
        for index, band in enumerate(bands, start=1):
            for row, col, height, width in blocks(source.height, source.width, step):
                data = source.read(band, slice(row, row + height), slice(col, col + width))
                if data.dtype != dtype:
                    data = data.astype(dtype)
                if to_nan and band.nodata is not None:
                    data[data == band.nodata] = np.nan
                dst.write(data, index, window=Window(col, row, width, height))
                del data
        dst.descriptions = tuple(b.id for b in bands)
        dst.units = tuple(b.units or "" for b in bands)
        dst.scales = tuple(b.scale for b in bands)
        dst.offsets = tuple(b.offset for b in bands)
        for index, band in enumerate(bands, start=1):
            long_name = band.attrs.get("long_name")
            if isinstance(long_name, str):
                dst.update_tags(index, long_name=long_name)


def _lcm(a: int, b: int) -> int:
    import math

    return a * b // math.gcd(a, b)
