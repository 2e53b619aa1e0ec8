"""getPixels payload -> one 2-D array per band.

The decoder trusts nothing in the payload: anything that is not exactly the pixels asked for
(format, band names and order, types, size, length) raises ``BadPayload``, which the retry
layer treats as retryable (a cut or mangled response is usually transient).

NPY payloads are decoded without copying: the returned arrays are field views into the
payload's buffer, so the caller keeps the payload alive by keeping the arrays. Decoding is
CPU-light for NPY and GDAL work for GeoTIFF; run it off the event loop (``asyncio.to_thread``).
"""

from __future__ import annotations

import functools
import io
import tokenize
from collections.abc import Sequence

import numpy as np
from numpy.lib import format as npy_format

from bulkpix.errors import BadPayload

__all__ = ["decode_pixels", "max_payload_bytes"]

# An NPY 1.0 header is at most 10 (magic, version, length) + 65535 bytes; 2.0 allows more but
# the service sends 1.0. Only this prefix is copied into a BytesIO for header parsing.
_NPY_HEADER_READ_LIMIT = 1 << 20
# numpy refuses headers over 10,000 characters by default; 1,024 bands need more.
_NPY_MAX_HEADER_SIZE = 1 << 20
# Headers up to this long (about 1,500 bands) are parsed once per process.
_NPY_HEADER_CACHED = 64 << 10
_NPY_HEADER_READERS = {
    (1, 0): npy_format.read_array_header_1_0,
    (2, 0): npy_format.read_array_header_2_0,
}


# What a GeoTIFF adds to its pixels: the header, tags and GeoKeys (a few KB), and an offset
# and a byte count (8 bytes each in BigTIFF) per strip or tile per band, a strip being at
# least a row. Deflate can grow incompressible data by 5 bytes per 16 KiB block.
_GEOTIFF_FIXED_OVERHEAD = 1 << 20
_GEOTIFF_PER_ROW_AND_BAND = 16


def max_payload_bytes(
    file_format: str, band_ids: Sequence[str], dtypes: Sequence[np.dtype], height: int, width: int
) -> int:
    """The most bytes a correct getPixels answer for this request can take.

    The client reads no further: a body past this bound is not those pixels whatever it
    holds, so it is refused before it can take memory the byte budget did not grant. This is
    the answer's size, not the request's as the service counts it against its limit
    (``bulkpix.dtypes.request_bytes``, a mask byte a band more).
    """
    pixels = height * width * sum(np.dtype(d).itemsize for d in dtypes)
    if file_format.upper() == "NPY":
        # The header is a dict literal: each field costs its quoted name (a repr may escape a
        # character to 10 bytes) and its type string; plus magic, shape and padding.
        fields = sum(10 * len(b) + 32 for b in band_ids)
        return pixels + fields + 256
    return (
        pixels
        + pixels // 1000
        + _GEOTIFF_PER_ROW_AND_BAND * height * max(1, len(band_ids))
        + _GEOTIFF_FIXED_OVERHEAD
    )


def decode_pixels(
    payload: bytes | bytearray | memoryview,
    file_format: str,
    band_ids: Sequence[str],
    dtypes: Sequence[np.dtype],
    height: int,
    width: int,
) -> dict[str, np.ndarray]:
    """Decode a getPixels response into ``{band_id: (height, width) array}`` in request order.

    Every returned array has exactly the (native byte order) dtype asked for.
    Raises ``BadPayload`` when the payload is not those pixels; ``ValueError`` for a format
    this decoder does not handle (a programming error, not a bad response).
    """
    if len(band_ids) != len(dtypes):
        raise ValueError(f"{len(band_ids)} band ids but {len(dtypes)} dtypes")
    expected = [np.dtype(d).newbyteorder("=") for d in dtypes]
    fmt = file_format.upper()
    if fmt == "NPY":
        return _decode_npy(memoryview(payload), list(band_ids), expected, height, width)
    if fmt == "GEO_TIFF":
        return _decode_geotiff(payload, list(band_ids), expected, height, width)
    if fmt == "PNG":
        return _decode_png(payload, list(band_ids), expected, height, width)
    raise ValueError(f"cannot decode file format {file_format!r} (NPY, GEO_TIFF and PNG only)")


# --------------------------------------------------------------------------- NPY


def _decode_npy(
    payload: memoryview,
    band_ids: list[str],
    expected: list[np.dtype],
    height: int,
    width: int,
) -> dict[str, np.ndarray]:
    record_dtype, shape, header_len = _read_npy_header(payload)
    if shape != (height, width):
        raise BadPayload(f"NPY shape {shape}, expected {(height, width)}")
    fields = record_dtype.fields
    if record_dtype.names is None or fields is None:
        raise BadPayload(f"NPY is not a record array (dtype {record_dtype})")
    if list(record_dtype.names) != band_ids:
        raise BadPayload(f"NPY fields {list(record_dtype.names)}, expected {band_ids}")
    for band_id, want in zip(band_ids, expected, strict=True):
        got = fields[band_id][0]
        if not _same_type(got, want):
            raise BadPayload(f"NPY field {band_id!r} is {got}, expected {want}")
    data_len = height * width * record_dtype.itemsize
    if payload.nbytes != header_len + data_len:
        raise BadPayload(f"NPY payload is {payload.nbytes} bytes, expected {header_len + data_len}")
    records = np.frombuffer(
        payload, dtype=record_dtype, count=height * width, offset=header_len
    ).reshape(height, width)
    return {
        band_id: _native(records[band_id], want)
        for band_id, want in zip(band_ids, expected, strict=True)
    }


def _read_npy_header(payload: memoryview) -> tuple[np.dtype, tuple[int, ...], int]:
    """(dtype, shape, header length) of an NPY payload; BadPayload if it is not one."""
    # Copy only the header's bytes, never the pixel data: the length the preamble states
    # (magic, version, then a 2-byte length in 1.0 or 4-byte in 2.0), at most the limit.
    preamble = payload[:12].tobytes()
    length = _NPY_HEADER_READ_LIMIT
    if preamble[6:7] == b"\x01" and len(preamble) >= 10:
        length = 10 + int.from_bytes(preamble[8:10], "little")
    elif preamble[6:7] == b"\x02" and len(preamble) >= 12:
        length = 12 + int.from_bytes(preamble[8:12], "little")
    header = payload[: min(length, _NPY_HEADER_READ_LIMIT)].tobytes()
    # Every tile of a run with the same size and bands has the same header: numpy parses
    # it (a Python literal) once, not once a tile. Only headers of ordinary size are kept.
    if len(header) <= _NPY_HEADER_CACHED:
        return _parse_npy_header_cached(header)
    return _parse_npy_header(header)


def _parse_npy_header(header: bytes) -> tuple[np.dtype, tuple[int, ...], int]:
    head = io.BytesIO(header)
    try:
        version = npy_format.read_magic(head)
        reader = _NPY_HEADER_READERS.get(version)
        if reader is None:
            raise BadPayload(f"unsupported NPY format version {version}")
        shape, fortran_order, dtype = reader(head, max_header_size=_NPY_MAX_HEADER_SIZE)
    except BadPayload:
        raise
    # numpy's parse errors; a header cut inside its literal is a TokenError
    except (ValueError, TypeError, SyntaxError, EOFError, tokenize.TokenError) as exc:
        raise BadPayload(f"not an NPY payload: {exc}") from None
    if fortran_order:
        raise BadPayload("NPY payload is in Fortran order, expected C order")
    return dtype, tuple(shape), head.tell()


_parse_npy_header_cached = functools.lru_cache(maxsize=16)(_parse_npy_header)


def _same_type(got: np.dtype, want: np.dtype) -> bool:
    """Same kind and size; byte order may differ (it is converted, not rejected)."""
    return got.newbyteorder("=") == want


def _native(band: np.ndarray, want: np.dtype) -> np.ndarray:
    # Little-endian (what the service sends) on a little-endian host: a view, no copy.
    # A big-endian field is converted so callers always get the native dtype.
    return band if band.dtype == want else band.astype(want)


# --------------------------------------------------------------------------- GeoTIFF


def _decode_geotiff(
    payload: bytes | bytearray | memoryview,
    band_ids: list[str],
    expected: list[np.dtype],
    height: int,
    width: int,
) -> dict[str, np.ndarray]:
    # Imported here: GDAL is heavy and only GeoTIFF payloads need it.
    from rasterio.errors import RasterioError
    from rasterio.io import MemoryFile

    if len(set(expected)) > 1:
        raise ValueError("a GeoTIFF has one data type for all bands; ask for NPY instead")
    try:
        with MemoryFile(bytes(payload)) as memfile, memfile.open() as dataset:
            _check_geotiff(dataset, len(band_ids), expected, height, width)
            stack = dataset.read()
    except BadPayload:
        raise
    except (RasterioError, ValueError) as exc:
        raise BadPayload(f"unreadable GeoTIFF payload: {exc}") from None
    return {band_id: stack[i] for i, band_id in enumerate(band_ids)}


def _check_geotiff(
    dataset, band_count: int, expected: list[np.dtype], height: int, width: int
) -> None:
    if dataset.count != band_count:
        raise BadPayload(f"GeoTIFF has {dataset.count} bands, expected {band_count}")
    if (dataset.height, dataset.width) != (height, width):
        raise BadPayload(f"GeoTIFF is {dataset.height}x{dataset.width}, expected {height}x{width}")
    for got, want in zip(dataset.dtypes, expected, strict=True):
        if np.dtype(got) != want:
            raise BadPayload(f"GeoTIFF band type {got}, expected {want}")


# --------------------------------------------------------------------------- PNG


def _decode_png(
    payload: bytes | bytearray | memoryview,
    band_ids: list[str],
    expected: list[np.dtype],
    height: int,
    width: int,
) -> dict[str, np.ndarray]:
    """8-bit PNG (a visualization): gray, RGB, or RGB(A) whose alpha (masked pixels) is
    dropped, as those pixels are already 0."""
    import warnings

    from rasterio.errors import NotGeoreferencedWarning, RasterioError
    from rasterio.io import MemoryFile

    if any(d != np.uint8 for d in expected):
        raise ValueError("a PNG holds 8-bit bands only")
    try:
        with warnings.catch_warnings(), MemoryFile(bytes(payload)) as memfile:
            # The grid is the request's; a PNG carries none, which is no news.
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with memfile.open() as dataset:
                if (dataset.height, dataset.width) != (height, width):
                    raise BadPayload(
                        f"PNG is {dataset.height}x{dataset.width}, expected {height}x{width}"
                    )
                if dataset.count < len(band_ids) or np.dtype(dataset.dtypes[0]) != np.uint8:
                    raise BadPayload(
                        f"PNG has {dataset.count} {dataset.dtypes[0]} bands, "
                        f"expected {len(band_ids)} uint8"
                    )
                stack = dataset.read(list(range(1, len(band_ids) + 1)))
    except BadPayload:
        raise
    except (RasterioError, ValueError) as exc:
        raise BadPayload(f"unreadable PNG payload: {exc}") from None
    return {band_id: stack[i] for i, band_id in enumerate(band_ids)}
