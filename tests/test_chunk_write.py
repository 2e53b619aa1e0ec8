"""write_chunk stores exactly the bytes zarr's setitem stores, or leaves the write to it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.storage import LocalStore

from bulkpix.store import chunk_write
from bulkpix.store.chunk_write import write_chunk
from bulkpix.store.codecs import CODECS, zarr_compressors

DTYPES = ("uint8", "int16", "uint16", "float32")


def _records(height: int, width: int) -> np.ndarray:
    """An NPY-like record array: its fields are strided views, as decoded tiles are."""
    rng = np.random.default_rng(7)
    records = np.zeros((height, width), dtype=[(d, d) for d in DTYPES])
    for name in DTYPES:
        records[name] = rng.integers(0, 200, (height, width)).astype(name)
    return records


async def _array(root: Path, name: str, dtype: str, shape: tuple[int, ...],
                 chunks: tuple[int, ...], compression: str, zarr_format: int = 3) -> Any:
    store = await LocalStore.open(str(root))
    group = await zarr.api.asynchronous.open_group(store=store, mode="a",
                                                    zarr_format=zarr_format)  # type: ignore[arg-type]
    array = await group.create_array(
        name, shape=shape, chunks=chunks, dtype=dtype, fill_value=7,
        compressors=zarr_compressors(compression, None, zarr_format))
    return array.with_config({"write_empty_chunks": True})  # as ItemWriter's arrays


def _chunk_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): _without_gzip_time(p.read_bytes())
            for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith((".", "zarr.json"))}


def _without_gzip_time(data: bytes) -> bytes:
    # A gzip member's header carries the second it was written (bytes 4-7).
    return data[:4] + bytes(4) + data[8:] if data[:2] == b"\x1f\x8b" else data


@pytest.mark.parametrize("compression", list(CODECS))
def test_same_bytes_as_setitem_whole_and_edge_chunks(tmp_path: Path, compression: str) -> None:
    records = _records(40, 56)  # 16-px chunks: full chunks and edge chunks on both axes

    async def write(root: Path, fast: bool) -> None:
        writes = []
        for dtype in DTYPES:
            array = await _array(root, dtype, dtype, (40, 56), (16, 16), compression)
            for row in range(0, 40, 16):
                for col in range(0, 56, 16):
                    sel = (slice(row, min(row + 16, 40)), slice(col, min(col + 16, 56)))
                    value = records[dtype][sel]
                    writes.append(write_chunk(array, sel, value) if fast
                                  else array.setitem(sel, value))
        # All at once, as a tile's bands are: worker threads reuse their scratch buffers.
        await asyncio.gather(*writes)

    asyncio.run(write(tmp_path / "fast", True))
    asyncio.run(write(tmp_path / "zarr", False))
    fast, slow = _chunk_files(tmp_path / "fast"), _chunk_files(tmp_path / "zarr")
    assert len(fast) == 4 * 3 * 4
    assert fast == slow
    read = zarr.open_group(str(tmp_path / "fast"), mode="r")
    for dtype in DTYPES:
        np.testing.assert_array_equal(read[dtype][:], records[dtype])


def test_time_cube_step_same_bytes(tmp_path: Path) -> None:
    records = _records(16, 32)

    async def write(root: Path, fast: bool) -> None:
        array = await _array(root, "b", "int16", (3, 16, 32), (1, 16, 16), "lz4")
        for step in (0, 2):
            for col in (0, 16):
                sel = (step, slice(0, 16), slice(col, col + 16))
                value = records["int16"][:, col : col + 16] + step
                await (write_chunk(array, sel, value) if fast else array.setitem(sel, value))

    asyncio.run(write(tmp_path / "fast", True))
    asyncio.run(write(tmp_path / "zarr", False))
    assert _chunk_files(tmp_path / "fast") == _chunk_files(tmp_path / "zarr")
    assert len(_chunk_files(tmp_path / "fast")) == 4


@pytest.mark.parametrize(
    ("sel", "why"),
    [
        ((slice(0, 8), slice(0, 16)), "half a chunk"),
        ((slice(8, 24), slice(0, 16)), "off the chunk grid"),
        ((slice(0, 16, 2), slice(0, 16)), "a step"),
    ],
)
def test_partial_selections_go_through_setitem(tmp_path: Path, sel: tuple[slice, ...],
                                               why: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        array = await _array(tmp_path, "b", "uint16", (32, 32), (16, 16), "zstd")
        value = np.ones(array.shape, dtype="uint16")[sel]
        monkeypatch.setattr(chunk_write, "_encode", _refuse)
        await write_chunk(array, sel, value)  # through setitem: _encode not called
        np.testing.assert_array_equal(await array.getitem(sel), value)

    asyncio.run(main())


def test_v2_array_and_other_dtype_go_through_setitem(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        monkeypatch.setattr(chunk_write, "_encode", _refuse)
        v2 = await _array(tmp_path / "v2", "b", "uint16", (16, 16), (16, 16), "zstd",
                          zarr_format=2)
        value = np.arange(256, dtype="uint16").reshape(16, 16)
        await write_chunk(v2, (slice(0, 16), slice(0, 16)), value)
        np.testing.assert_array_equal(await v2.getitem(slice(None)), value)
        v3 = await _array(tmp_path / "v3", "b", "uint16", (16, 16), (16, 16), "zstd")
        await write_chunk(v3, (slice(0, 16), slice(0, 16)), value.astype("int32"))
        np.testing.assert_array_equal(await v3.getitem(slice(None)), value)
        # An array that leaves out chunks of only the fill value: zarr decides.
        sparse = v3.with_config({"write_empty_chunks": False})
        await write_chunk(sparse, (slice(0, 16), slice(0, 16)), np.full((16, 16), 7, "uint16"))
        assert await sparse.store_path.store.get("b/c/0/0", prototype=_prototype()) is None

    asyncio.run(main())


def _prototype() -> Any:
    from zarr.core.buffer import default_buffer_prototype

    return default_buffer_prototype()


def _refuse(*args: object) -> None:
    raise AssertionError("this write should have gone through setitem")


@pytest.mark.parametrize("compression", ["none", "lz4"])
def test_a_strided_chunk_is_encoded_into_bytes_of_its_own(tmp_path: Path,
                                                          compression: str) -> None:
    """Strided chunks are copied into the thread's scratch buffer only when a compressor
    makes new bytes of them: what the encoder returns never changes with the next chunk."""

    async def scenario() -> None:
        array = await _array(tmp_path, "B", "uint16", (16, 32), (16, 16), compression)
        pipeline = array.codec_pipeline
        spec = array.metadata.get_chunk_spec((0, 0), array.config,
                                             zarr.core.buffer.default_buffer_prototype())
        tile = np.arange(16 * 32, dtype=np.uint16).reshape(16, 32)
        first = chunk_write._encode(pipeline, spec, tile[:, :16])  # strided: row stride 32
        kept = first.to_bytes()
        second = chunk_write._encode(pipeline, spec, tile[:, 16:])
        assert first.to_bytes() == kept and second.to_bytes() != kept
        decoded = await array.codec_pipeline.decode([(first, spec)])
        np.testing.assert_array_equal(next(iter(decoded)).as_numpy_array(), tile[:, :16])

    asyncio.run(scenario())


def test_the_scratch_buffer_is_reused_and_bounded() -> None:
    tile = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    a = chunk_write._contiguous_in_scratch(tile[:, :32])
    b = chunk_write._contiguous_in_scratch(tile[:, 32:])
    assert np.shares_memory(a, b)  # the same buffer, chunk after chunk
    np.testing.assert_array_equal(b, tile[:, 32:])
    assert chunk_write._MOST_SCRATCH <= 8 << 20
