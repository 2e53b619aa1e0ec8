"""getPixels payload -> one 2-D array per band.

The decoder trusts nothing in the payload: anything that is not exactly the pixels asked for
(format, band names and order, types, size, length) raises ``BadPayload``, which the retry
layer treats as retryable (a cut or mangled response is usually transient).

NPY payloads are decoded without copying: the returned arrays are field views into the
payload's buffer, so the caller keeps the payload alive by keeping the arrays. Decoding is
CPU-light for NPY and GDAL work for GeoTIFF; run it off the event loop (``asyncio.to_thread``).

``NpyReceiver`` decodes an NPY body piece by piece as it arrives, straight into one contiguous
array per band: no buffer for the whole body, and each record is read while the piece is
still in the CPU's cache (for a tile of one chunk, the only copy before the codec).
"""

from __future__ import annotations

import functools
import io
import tokenize
from collections.abc import Callable, Sequence

import numpy as np
from numpy.lib import format as npy_format

from bulkpix.errors import BadPayload

__all__ = ["NpyReceiver", "decode_pixels", "max_payload_bytes"]

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
    _check_npy(record_dtype, shape, band_ids, expected, height, width)
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


Allocate = Callable[[tuple[int, int], np.dtype], np.ndarray]
# An NpyReceiver copies records into the bands in runs of at least this many bytes a band
# (small pieces are gathered first), and gathers at most this much.
_GATHERED_PER_BAND = 32 << 10
_MOST_GATHERED = 4 << 20


def _new_array(shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
    return np.empty(shape, dtype=dtype)


class NpyReceiver:
    """An NPY body decoded as its pieces arrive: ``feed`` each piece, then ``finish`` for
    ``{band_id: (height, width) array}`` in request order, as ``decode_pixels`` returns.

    Every check ``decode_pixels`` makes is made here too (``BadPayload``): the header as soon
    as it is in, the length as the pieces come (a body running past its pixels is refused at
    once) and at ``finish``. ``allocate(shape, dtype)`` gives each band's array (uninitialised
    is fine: every cell is written before ``finish`` returns).
    """

    def __init__(
        self,
        band_ids: Sequence[str],
        dtypes: Sequence[np.dtype],
        height: int,
        width: int,
        allocate: Allocate = _new_array,
    ) -> None:
        if len(band_ids) != len(dtypes):
            raise ValueError(f"{len(band_ids)} band ids but {len(dtypes)} dtypes")
        self._band_ids = list(band_ids)
        self._expected = [np.dtype(d).newbyteorder("=") for d in dtypes]
        self._height, self._width = height, width
        self._allocate = allocate
        self._head = bytearray()  # the header's bytes until it is parsed
        self._records: np.dtype | None = None
        self._bands: list[tuple[str, np.ndarray]] = []  # (field, flat view of its array)
        self._arrays: dict[str, np.ndarray] = {}
        # Bytes not stored yet: a record cut between two pieces, or small pieces gathered
        # until there are enough records to copy (each copy costs a call per band).
        self._pending = bytearray()
        self._batch = min(_MOST_GATHERED, _GATHERED_PER_BAND * len(self._band_ids))
        self._filled = 0  # whole records written
        self._total = height * width

    def feed(self, piece: bytes | bytearray | memoryview) -> None:
        data = memoryview(piece).cast("B")
        if self._records is None:
            data = self._take_header(data)
            if self._records is None:
                return
        itemsize = self._records.itemsize
        if len(self._pending) + len(data) < self._batch:
            self._pending += data
        elif len(self._pending) >= itemsize:  # gathered pieces: store them with this one
            self._pending += data
            with memoryview(self._pending) as pending:
                used = self._store_whole_records(pending)
            del self._pending[:used]
        else:  # at most a cut record: complete it, then store straight from the piece
            need = min(itemsize - len(self._pending), len(data))
            self._pending += data[:need]
            data = data[need:]
            if len(self._pending) == itemsize:
                self._store_whole_records(memoryview(bytes(self._pending)))
                self._pending.clear()
            used = self._store_whole_records(data)
            self._pending += data[used:]
        if self._filled * itemsize + len(self._pending) > self._total * itemsize:
            raise BadPayload(f"NPY payload runs past its {self._total:,} records")

    def finish(self) -> dict[str, np.ndarray]:
        if self._records is None:
            raise BadPayload("NPY payload ends inside its header")
        if self._pending and len(self._pending) >= self._records.itemsize:
            with memoryview(self._pending) as pending:
                used = self._store_whole_records(pending)
            del self._pending[:used]
        if self._filled != self._total or self._pending:
            raise BadPayload(
                f"NPY payload holds {self._filled:,} records and {len(self._pending)} bytes, "
                f"expected {self._total:,} records"
            )
        return self._arrays

    def _take_header(self, data: memoryview) -> memoryview:
        """Gather the header (its bytes only); once it is whole, parse and check it and make
        the arrays. Returns what follows the header in ``data``."""
        taken = 0
        while len(self._head) < (wanted := self._header_length_wanted()):
            more = data[taken : taken + wanted - len(self._head)]
            if not more:
                return data[:0]  # the rest comes with the next piece
            self._head += more
            taken += len(more)
        record_dtype, shape, _ = _read_npy_header(memoryview(self._head))
        _check_npy(record_dtype, shape, self._band_ids, self._expected, self._height, self._width)
        self._records = record_dtype
        for band_id, want in zip(self._band_ids, self._expected, strict=True):
            array = self._allocate((self._height, self._width), want)
            if array.shape != (self._height, self._width) or not array.flags.c_contiguous:
                raise ValueError("allocate must give a C-contiguous array of the shape asked")
            self._arrays[band_id] = array
            self._bands.append((band_id, array.reshape(-1)))
        self._head = bytearray()
        return data[taken:]

    def _header_length_wanted(self) -> int:
        """How many bytes the header takes, as far as the bytes in so far tell: the preamble
        first, then the length it states (bounded); what is in, when it is no NPY preamble
        (the parse then says what is wrong)."""
        if len(self._head) < 12:
            return 12
        length = _declared_header_length(memoryview(self._head))
        return len(self._head) if length is None else min(length, _NPY_HEADER_READ_LIMIT)

    def _store_whole_records(self, data: memoryview) -> int:
        """Copy the whole records at the start of ``data`` into the bands; the bytes used."""
        assert self._records is not None
        count = len(data) // self._records.itemsize
        start, end = self._filled, self._filled + count
        if end > self._total:
            raise BadPayload(f"NPY payload runs past its {self._total:,} records")
        if count:
            records = np.frombuffer(data, dtype=self._records, count=count)
            for field, flat in self._bands:
                flat[start:end] = records[field]  # converts a big-endian field as it copies
            del records  # the view must go before its bytearray may be resized
        self._filled = end
        return count * self._records.itemsize


def _declared_header_length(head: memoryview) -> int | None:
    """The header's whole length as its preamble states it; None if the preamble is not an
    NPY 1.0 or 2.0 one (the parse then says what is wrong)."""
    if head[6:7] == b"\x01" and len(head) >= 10:
        return 10 + int.from_bytes(head[8:10], "little")
    if head[6:7] == b"\x02" and len(head) >= 12:
        return 12 + int.from_bytes(head[8:12], "little")
    return None


def _check_npy(
    record_dtype: np.dtype,
    shape: tuple[int, ...],
    band_ids: list[str],
    expected: list[np.dtype],
    height: int,
    width: int,
) -> None:
    """BadPayload unless the header describes exactly the pixels asked for."""
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
    # The service packs its records; padding (unnamed fields numpy hides) would make each
    # record, and so the body, any size at all.
    packed = sum(want.itemsize for want in expected)
    if record_dtype.itemsize != packed:
        raise BadPayload(f"NPY records of {record_dtype.itemsize:,} bytes, expected {packed}")


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
