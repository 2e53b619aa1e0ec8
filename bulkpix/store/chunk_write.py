"""Write one whole chunk of a zarr array: encode it on a worker thread, then store it.

zarr-python's ``setitem`` costs about 1 ms of CPU per chunk before any pixel is touched (an
indexer, a dozen asyncio tasks and two thread hops through its batched codec pipeline),
and copies the chunk out of its (strided) source on the event loop. bulkpix writes whole
chunks only, so it can skip the machinery: the array's own codecs (``_encode_sync``, the
methods zarr's pipeline runs) encode the chunk in one worker thread, and the bytes go to the
array's store path under the array's own chunk key. The stored chunk is byte for byte what
``setitem`` stores (``tests/test_chunk_write.py``).

Anything this does not cover (a Zarr v2 array, sharding, Fortran order, an array that leaves
out empty chunks, a chunk only part of whose cells the selection covers, a value of another
dtype) goes through ``setitem``.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
from zarr import AsyncArray
from zarr.core.buffer import Buffer, NDBuffer, default_buffer_prototype
from zarr.core.codec_pipeline import BatchedCodecPipeline, fill_value_or_default

__all__ = ["write_chunk"]

Selection = tuple[int | slice, ...]


async def write_chunk(array: AsyncArray[Any], selection: Selection, value: np.ndarray) -> None:
    """``await array.setitem(selection, value)`` where ``selection`` (an int or a slice per
    dimension; ``value`` has the slices' dimensions only) is one chunk's cells inside the
    array, every one of them."""
    whole = _whole_chunk(array, selection, value)
    if whole is None:
        await array.setitem(selection, value)
        return
    coords, shape = whole
    metadata, pipeline = array.metadata, array.codec_pipeline
    assert isinstance(pipeline, BatchedCodecPipeline)  # _whole_chunk checked it
    spec = metadata.get_chunk_spec(coords, array.config, default_buffer_prototype())
    encoded = await asyncio.to_thread(_encode, pipeline, spec, value.reshape(shape))
    path = array.store_path / metadata.encode_chunk_key(coords)
    if encoded is None:  # no codec bulkpix uses does this; zarr deletes the key for it
        await path.delete()
    else:
        await path.set(encoded)


def _whole_chunk(
    array: AsyncArray[Any], selection: Selection, value: np.ndarray
) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(the chunk's coordinates, the value's shape with the int dimensions as 1) when this
    path can write it; None: use setitem."""
    metadata = array.metadata
    if metadata.zarr_format != 3 or array.config.order != "C":
        return None
    if not array.config.write_empty_chunks:
        return None  # zarr would leave out a chunk of only the fill value: let it decide
    pipeline = array.codec_pipeline
    if not isinstance(pipeline, BatchedCodecPipeline) or not all(
        hasattr(codec, "_encode_sync") for codec in pipeline
    ):
        return None  # sharding, or a codec with an async encoder only
    if value.dtype != metadata.data_type.to_native_dtype():
        return None
    chunk_shape = getattr(metadata.chunk_grid, "chunk_shape", None)
    if chunk_shape is None or len(selection) != len(metadata.shape):
        return None
    coords: list[int] = []
    shape: list[int] = []
    for sel, size, chunk in zip(selection, metadata.shape, chunk_shape, strict=True):
        if isinstance(sel, slice):
            start, stop, step = sel.indices(size)
            if step != 1 or start % chunk != 0 or stop != min(start + chunk, size):
                return None
            coords.append(start // chunk)
            shape.append(stop - start)
        elif chunk == 1 and 0 <= int(sel) < size:  # an int picks a 1-thick chunk whole
            coords.append(int(sel))
            shape.append(1)
        else:
            return None
    if tuple(value.shape) != tuple(n for n, sel in zip(shape, selection, strict=True)
                                   if isinstance(sel, slice)):
        return None
    return tuple(coords), tuple(shape)


def _encode(pipeline: BatchedCodecPipeline, spec: Any, chunk: np.ndarray) -> Buffer | None:
    """The chunk's stored bytes, as zarr's pipeline makes them for a new whole chunk."""
    if (
        not chunk.flags.c_contiguous
        and chunk.shape == tuple(spec.shape)
        and chunk.nbytes <= _MOST_SCRATCH
        and pipeline.bytes_bytes_codecs  # compressed into new bytes: the scratch is free after
    ):
        chunk = _contiguous_in_scratch(chunk)
    if chunk.shape != tuple(spec.shape):
        # A chunk over the array's edge: zarr fills the cells outside with the fill value.
        padded = np.full(spec.shape, fill_value_or_default(spec), dtype=chunk.dtype)
        padded[tuple(slice(0, n) for n in chunk.shape)] = chunk
        chunk = padded
    array: NDBuffer = spec.prototype.nd_buffer.from_ndarray_like(chunk)
    for aa_codec in pipeline.array_array_codecs:
        array = aa_codec._encode_sync(array, spec)  # type: ignore[attr-defined]
        spec = aa_codec.resolve_metadata(spec)
    encoded: Buffer | None = pipeline.array_bytes_codec._encode_sync(  # type: ignore[attr-defined]
        array, spec
    )
    spec = pipeline.array_bytes_codec.resolve_metadata(spec)
    for bb_codec in pipeline.bytes_bytes_codecs:
        if encoded is None:
            break
        encoded = bb_codec._encode_sync(encoded, spec)  # type: ignore[attr-defined]
        spec = bb_codec.resolve_metadata(spec)
    return encoded


_scratch = threading.local()
# Larger chunks are copied into an array of their own (mapped and unmapped whole): a scratch
# buffer is kept by every encoding thread, so it must stay small.
_MOST_SCRATCH = 8 << 20


def _contiguous_in_scratch(chunk: np.ndarray) -> np.ndarray:
    """``chunk`` copied into this thread's scratch buffer (kept from chunk to chunk).

    A chunk sliced out of a tile wider than one chunk is strided: zarr would copy it into a
    new array, and a few MB allocated and freed per chunk in each worker thread grow the
    allocator's heaps with the run (peak memory then rose with the region's area)."""
    buffer: np.ndarray | None = getattr(_scratch, "buffer", None)
    if buffer is None or buffer.nbytes < chunk.nbytes:
        buffer = _scratch.buffer = np.empty(chunk.nbytes, dtype=np.uint8)
    contiguous = buffer[: chunk.nbytes].view(chunk.dtype).reshape(chunk.shape)
    np.copyto(contiguous, chunk)
    return contiguous
