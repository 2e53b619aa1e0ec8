"""bulkpix.ee.decode: NPY and GeoTIFF payloads -> per-band arrays, BadPayload otherwise."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.io import MemoryFile

from bulkpix.ee.decode import NpyReceiver, decode_pixels
from bulkpix.errors import BadPayload, RetryableError

H, W = 6, 5
IDS = ["B4", "NDVI", "QA"]
DTYPES = [np.dtype("uint16"), np.dtype("float32"), np.dtype("uint8")]


def record_array(ids=IDS, dtypes=DTYPES, shape=(H, W), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    record = np.empty(shape, dtype=list(zip(ids, dtypes, strict=True)))
    for name, dtype in zip(ids, dtypes, strict=True):
        record[name] = rng.integers(0, 200, size=shape).astype(dtype)
    return record


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def decode_npy(payload, ids=IDS, dtypes=DTYPES, height=H, width=W):
    return decode_pixels(payload, "NPY", ids, dtypes, height, width)


# --------------------------------------------------------------------------- NPY


def test_npy_round_trip_mixed_types():
    record = record_array()
    bands = decode_npy(npy_bytes(record))
    assert list(bands) == IDS
    for name, dtype in zip(IDS, DTYPES, strict=True):
        assert bands[name].dtype == dtype
        assert bands[name].shape == (H, W)
        np.testing.assert_array_equal(bands[name], record[name])


def test_npy_makes_no_copy_of_the_payload():
    payload = bytearray(npy_bytes(record_array()))
    bands = decode_npy(payload)
    holder = np.frombuffer(payload, dtype=np.uint8)
    for band in bands.values():
        assert np.shares_memory(band, holder)
    # Writing through the payload shows up in the band: they are the same bytes.
    payload[-1] ^= 0xFF  # last byte belongs to the last field (QA) of the last pixel
    assert bands["QA"][-1, -1] == record_array()["QA"][-1, -1] ^ 0xFF


def test_npy_accepts_a_memoryview():
    record = record_array()
    bands = decode_npy(memoryview(npy_bytes(record)))
    np.testing.assert_array_equal(bands["NDVI"], record["NDVI"])


def test_npy_big_endian_fields_are_read_correctly_as_native():
    big = [np.dtype(">u2"), np.dtype(">f4"), np.dtype("u1")]
    record = record_array(dtypes=big)
    bands = decode_npy(npy_bytes(record))
    for name, want in zip(IDS, DTYPES, strict=True):
        assert bands[name].dtype == want  # native byte order
        np.testing.assert_array_equal(bands[name], record[name].astype(want))


def test_npy_many_bands_header_over_numpy_default_limit():
    ids = [f"band_{i:04d}" for i in range(600)]
    dtypes = [np.dtype("uint8")] * len(ids)
    record = record_array(ids, dtypes, shape=(2, 3))
    bands = decode_pixels(npy_bytes(record), "npy", ids, dtypes, 2, 3)
    np.testing.assert_array_equal(bands["band_0599"], record["band_0599"])


def test_npy_version_2_header_is_read() -> None:
    # numpy writes format 2.0 (a 4-byte header length) for headers past 65,535 bytes.
    ids = [f"band_with_a_long_name_{i:05d}" for i in range(3000)]
    dtypes = [np.dtype("uint8")] * len(ids)
    record = record_array(ids, dtypes, shape=(1, 2))
    payload = npy_bytes(record)
    assert payload[6] == 2
    bands = decode_pixels(payload, "npy", ids, dtypes, 1, 2)
    np.testing.assert_array_equal(bands[ids[-1]], record[ids[-1]])


def test_npy_tiles_of_one_shape_share_one_header_parse() -> None:
    from bulkpix.ee import decode

    first, second = record_array(), record_array()
    second[IDS[0]] += 1
    before = decode._parse_npy_header_cached.cache_info().hits
    decode_npy(npy_bytes(first))
    bands = decode_npy(npy_bytes(second))
    assert decode._parse_npy_header_cached.cache_info().hits >= before + 1
    np.testing.assert_array_equal(bands[IDS[0]], second[IDS[0]])


@pytest.mark.parametrize(
    ("payload_of", "match"),
    [
        (lambda p: p[: len(p) - 1], "bytes"),  # truncated data
        (lambda p: p[:40], "NPY"),  # truncated inside the header
        (lambda p: p + b"\0", "bytes"),  # extra bytes
        (lambda p: b"garbage" * 20, "NPY"),
        (lambda p: b"", "NPY"),
        (lambda p: b"\x93NUMPY\x09\x00" + p[8:], "version"),
        # The header's stated length: past the end, or cutting the header short.
        (lambda p: p[:8] + (60_000).to_bytes(2, "little") + p[10:], "NPY"),
        (lambda p: p[:8] + (20).to_bytes(2, "little") + p[10:], "NPY"),
    ],
    ids=["truncated", "truncated-header", "extra-bytes", "garbage", "empty", "bad-version",
         "header-length-too-long", "header-length-too-short"],
)
def test_npy_damaged_payloads_are_bad(payload_of, match):
    with pytest.raises(BadPayload, match=match):
        decode_npy(payload_of(npy_bytes(record_array())))


@pytest.mark.parametrize(
    ("record", "match"),
    [
        (record_array(ids=["B4", "NDVI", "QB"]), "fields"),
        (
            record_array(ids=["NDVI", "B4", "QA"], dtypes=[DTYPES[1], DTYPES[0], DTYPES[2]]),
            "fields",
        ),
        (record_array(ids=IDS[:2], dtypes=DTYPES[:2]), "fields"),
        (record_array(dtypes=[np.dtype("int16"), DTYPES[1], DTYPES[2]]), "int16"),
        (record_array(dtypes=[DTYPES[0], np.dtype("float64"), DTYPES[2]]), "float64"),
        (record_array(shape=(W, H)), "shape"),
        (record_array(shape=(H * W,)), "shape"),
        (np.zeros((H, W), dtype=np.uint16), "record"),
    ],
    ids=[
        "wrong-name",
        "wrong-order",
        "missing-band",
        "wrong-int-type",
        "wrong-float-type",
        "transposed",
        "flat",
        "not-structured",
    ],
)
def test_npy_wrong_content_is_bad(record, match):
    with pytest.raises(BadPayload, match=match):
        decode_npy(npy_bytes(record))


def test_npy_fortran_order_is_bad():
    record = np.asfortranarray(record_array())
    with pytest.raises(BadPayload, match="Fortran"):
        decode_npy(npy_bytes(record))


def test_bad_payload_is_retryable():
    with pytest.raises(RetryableError):
        decode_npy(b"nope")


def test_unknown_format_is_a_programming_error():
    with pytest.raises(ValueError, match="PNG"):
        decode_pixels(b"", "PNG", IDS, DTYPES, H, W)


# --------------------------------------------------------------------------- GeoTIFF


def geotiff_bytes(stack: np.ndarray) -> bytes:
    count, height, width = stack.shape
    with MemoryFile() as memfile:
        with memfile.open(
            driver="GTiff",
            count=count,
            height=height,
            width=width,
            dtype=stack.dtype,
            crs="EPSG:32633",
            transform=Affine(10, 0, 600000, 0, -10, 5200000),
        ) as dataset:
            dataset.write(stack)
        return memfile.read()


def test_geotiff_round_trip():
    stack = np.random.default_rng(1).integers(0, 9000, size=(2, H, W)).astype(np.uint16)
    bands = decode_pixels(geotiff_bytes(stack), "GEO_TIFF", ["B4", "B3"], [np.uint16] * 2, H, W)
    assert list(bands) == ["B4", "B3"]
    np.testing.assert_array_equal(bands["B4"], stack[0])
    np.testing.assert_array_equal(bands["B3"], stack[1])
    assert bands["B3"].dtype == np.uint16


@pytest.mark.parametrize(
    ("ids", "dtype", "height", "width", "match"),
    [
        (["B4"], np.uint16, H, W, "bands"),
        (["B4", "B3", "B2"], np.uint16, H, W, "bands"),
        (["B4", "B3"], np.int16, H, W, "type"),
        (["B4", "B3"], np.uint16, H + 1, W, "expected"),
    ],
    ids=["fewer-bands", "more-bands", "wrong-type", "wrong-size"],
)
def test_geotiff_mismatch_is_bad(ids, dtype, height, width, match):
    stack = np.ones((2, H, W), dtype=np.uint16)
    with pytest.raises(BadPayload, match=match):
        decode_pixels(geotiff_bytes(stack), "GEO_TIFF", ids, [dtype] * len(ids), height, width)


@pytest.mark.parametrize("cut", [0, 10, 300])
def test_geotiff_garbage_or_truncated_is_bad(cut):
    payload = geotiff_bytes(np.ones((1, 64, 64), dtype=np.uint16))[:cut] if cut else b"junk" * 9
    with pytest.raises(BadPayload):
        decode_pixels(payload, "GEO_TIFF", ["B"], [np.uint16], 64, 64)


def test_geotiff_cannot_carry_mixed_types():
    with pytest.raises(ValueError, match="one data type"):
        decode_pixels(b"", "GEO_TIFF", IDS, DTYPES, H, W)


# --------------------------------------------------------------------------- NPY, as it arrives


def receive(payload: bytes, cuts=(), ids=IDS, dtypes=DTYPES, height=H, width=W, allocate=None):
    """Feed ``payload`` to an NpyReceiver in pieces cut at ``cuts``; its bands."""
    receiver = (NpyReceiver(ids, dtypes, height, width) if allocate is None
                else NpyReceiver(ids, dtypes, height, width, allocate))
    edges = [0, *sorted(c for c in cuts if 0 < c < len(payload)), len(payload)]
    for start, end in itertools.pairwise(edges):
        receiver.feed(payload[start:end])
    return receiver.finish()


@settings(max_examples=150, deadline=None)
@given(
    dtypes=st.lists(st.sampled_from(["u1", "<u2", ">u2", "<i4", ">f4", "<f8", "<i8"]),
                    min_size=1, max_size=5),
    height=st.integers(1, 7),
    width=st.integers(1, 9),
    cuts=st.lists(st.integers(0, 800), max_size=12),
    seed=st.integers(0, 2**16),
)
def test_npy_received_in_any_pieces_equals_the_whole_decode(dtypes, height, width, cuts, seed):
    ids = [f"b{i}" for i in range(len(dtypes))]
    record = record_array(ids, [np.dtype(d) for d in dtypes], (height, width), seed)
    payload = npy_bytes(record)
    native = [np.dtype(d).newbyteorder("=") for d in dtypes]
    whole = decode_npy(payload, ids, native, height, width)
    got = receive(payload, cuts, ids, native, height, width)
    assert list(got) == ids
    for band in ids:
        assert got[band].dtype == whole[band].dtype and got[band].flags.c_contiguous
        np.testing.assert_array_equal(got[band], whole[band])


def test_npy_received_one_byte_at_a_time():
    payload = npy_bytes(record_array())
    bands = receive(payload, cuts=range(len(payload)))
    for band in IDS:
        np.testing.assert_array_equal(bands[band], record_array()[band])


def test_npy_received_into_the_arrays_allocate_gives():
    given: list[np.ndarray] = []

    def allocate(shape, dtype):
        given.append(np.full(shape, 77, dtype=dtype))
        return given[-1]

    bands = receive(npy_bytes(record_array()), cuts=[100, 131], allocate=allocate)
    assert [id(a) for a in bands.values()] == [id(a) for a in given]
    for band in IDS:
        np.testing.assert_array_equal(bands[band], record_array()[band])


def test_npy_receiver_refuses_an_allocation_it_cannot_fill():
    with pytest.raises(ValueError, match="C-contiguous"):
        receive(npy_bytes(record_array()), allocate=lambda s, d: np.empty(s[::-1], d).T)


@pytest.mark.parametrize("cuts", [(), (1,), (64, 65, 200)], ids=["whole", "1", "many"])
@pytest.mark.parametrize(
    ("payload_of", "match"),
    [
        (lambda p: p[: len(p) - 1], "records"),  # truncated data
        (lambda p: p[: len(p) - 9], "records"),  # a record short
        (lambda p: p[:40], "header"),  # truncated inside the header
        (lambda p: p + b"\0", "past"),  # extra bytes
        (lambda p: p + b"\0" * 40, "past"),
        (lambda p: b"garbage" * 20, "NPY"),
        (lambda p: b"", "header"),
        (lambda p: b"\x93NUMPY\x09\x00" + p[8:], "version"),
        (lambda p: p[:8] + (60_000).to_bytes(2, "little") + p[10:], "NPY"),
        (lambda p: p[:8] + (20).to_bytes(2, "little") + p[10:], "NPY"),
    ],
    ids=["truncated", "record-short", "truncated-header", "extra-byte", "extra-record",
         "garbage", "empty", "bad-version", "header-length-too-long",
         "header-length-too-short"],
)
def test_npy_received_damaged_payloads_are_bad(payload_of, match, cuts):
    with pytest.raises(BadPayload, match=match):
        receive(payload_of(npy_bytes(record_array())), cuts)


@pytest.mark.parametrize(
    ("record", "match"),
    [
        (record_array(ids=["B4", "NDVI", "QB"]), "fields"),
        (record_array(ids=IDS[:2], dtypes=DTYPES[:2]), "fields"),
        (record_array(dtypes=[np.dtype("int16"), DTYPES[1], DTYPES[2]]), "int16"),
        (record_array(shape=(W, H)), "shape"),
        (np.zeros((H, W), dtype=np.uint16), "record"),
        (np.asfortranarray(record_array()), "Fortran"),
    ],
    ids=["wrong-name", "missing-band", "wrong-int-type", "transposed", "not-structured",
         "fortran"],
)
def test_npy_received_wrong_content_is_bad_before_any_array_is_made(record, match):
    made: list[tuple] = []
    with pytest.raises(BadPayload, match=match):
        receive(npy_bytes(record), cuts=[3, 70],
                allocate=lambda s, d: made.append((s, d)) or np.empty(s, d))
    assert made == []


@settings(max_examples=60, deadline=None)
@given(
    bands=st.integers(1, 3),
    cut_fractions=st.lists(st.floats(0, 1), max_size=20),
    seed=st.integers(0, 2**16),
)
def test_npy_received_in_large_and_small_pieces_equals_the_whole_decode(
    bands, cut_fractions, seed
):
    """Pieces larger than what the receiver gathers (copied straight from the piece) and
    smaller ones (gathered first), with records cut anywhere."""
    ids = [f"b{i}" for i in range(bands)]
    dtypes = [np.dtype(d) for d in ("<u2", "u1", "<f4")[:bands]]
    record = record_array(ids, dtypes, (150, 301), seed)  # 90 to 315 KB
    payload = npy_bytes(record)
    cuts = [int(f * len(payload)) for f in cut_fractions]
    got = receive(payload, cuts, ids, dtypes, 150, 301)
    for band in ids:
        np.testing.assert_array_equal(got[band], record[band])


def test_npy_received_with_many_bands_in_pieces():
    ids = [f"b{i}" for i in range(70)]
    dtypes = [np.dtype("<i2")] * 70
    record = record_array(ids, dtypes, (40, 50), seed=3)
    payload = npy_bytes(record)
    got = receive(payload, range(0, len(payload), 997), ids, dtypes, 40, 50)
    for band in ids:
        np.testing.assert_array_equal(got[band], record[band])


@pytest.mark.parametrize("decoder", ["whole", "received"])
def test_npy_padded_records_are_bad(decoder):
    """Unnamed padding (numpy hides it from the fields) would let a header make each record,
    and so the body the receiver gathers, any size."""
    padded = np.dtype({"names": IDS, "formats": DTYPES, "offsets": [0, 2, 6], "itemsize": 4096})
    record = np.zeros((H, W), dtype=padded)
    with pytest.raises(BadPayload, match="records of 4,096 bytes, expected 7"):
        if decoder == "whole":
            decode_npy(npy_bytes(record))
        else:
            receive(npy_bytes(record), cuts=[50])

