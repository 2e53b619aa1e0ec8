"""A hostile or broken server must not take the client down (issue #9).

Every misbehaviour comes from ``tests/hostile_server.py`` on 127.0.0.1, port 0. What each test
holds bulkpix to: memory bounded by what a correct answer can be (and the run's ``memory_mb``),
no wait longer than ``retries.max_wait``, metadata it cannot use refused in one line before
anything is written, no terminal escapes from the server reaching a terminal or a record, and
a 400 split only along the axis that helps.
"""

from __future__ import annotations

import asyncio
import json
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from bulkpix.cli import main
from bulkpix.ee.auth import NoAuth
from bulkpix.ee.client import MAX_ERROR_BYTES, EEClient
from bulkpix.ee.decode import max_payload_bytes
from bulkpix.errors import (
    BadMetadata,
    BadPayload,
    QuotaExceeded,
    RequestInvalid,
    RequestTooLarge,
    ServerError,
    TooManyBands,
    printable,
)
from bulkpix.job import parse_job
from bulkpix.pipeline import run_job
from bulkpix.store.record import TileRecord
from bulkpix.transfer.limits import Governor
from tests.conftest import write_job
from tests.hostile_server import (
    ASSET,
    ESCAPES,
    HostileServer,
    deeply_nested_json,
    good_metadata,
    hostile_server,
    hostile_server_thread,
)

MiB = 2**20
# What a test may allocate beyond what it is owed: aiohttp's buffers, the event loop, numpy.
MARGIN = 16 * MiB
CONTROL = ("\x1b", "\x07", "\x9b", "\x00")


def pixel_body(bands: int = 2, height: int = 32, width: int = 32) -> dict[str, Any]:
    return {
        "fileFormat": "NPY",
        "bandIds": [f"B{i + 1}" for i in range(bands)],
        "grid": {"dimensions": {"width": width, "height": height}},
    }


def correct_bound(bands: int = 2, height: int = 32, width: int = 32) -> int:
    ids = [f"B{i + 1}" for i in range(bands)]
    return max_payload_bytes("NPY", ids, [np.dtype("uint16")] * bands, height, width)


@pytest.fixture
async def server() -> AsyncIterator[HostileServer]:
    async with hostile_server() as s:
        yield s


def client_for(server: HostileServer, **kwargs: Any) -> EEClient:
    return EEClient(server.url, auth=NoAuth(), governor=Governor(4, qps=1e6), **kwargs)


@pytest.fixture
def traced() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


def peak_mib() -> float:
    return tracemalloc.get_traced_memory()[1] / MiB


# -- memory: the client ----------------------------------------------------------------------


async def test_a_correct_answer_fits_its_bound(server: HostileServer) -> None:
    async with client_for(server) as client:
        payload = await client.get_pixels(ASSET, pixel_body(), max_bytes=correct_bound())
    assert len(payload) <= correct_bound()
    assert server.request_headers[-1]["Accept-Encoding"] == "identity"


async def test_a_declared_terabyte_is_a_bad_payload_before_any_read(
    server: HostileServer, traced: None
) -> None:
    server.pixels = "huge_length"
    started = time.monotonic()
    async with client_for(server) as client:
        with pytest.raises(BadPayload, match="declares 1,000,000,000,000 bytes"):
            await client.get_pixels(ASSET, pixel_body(), max_bytes=correct_bound())
        # Without a bound from the caller, the most any getPixels answer can be still holds.
        with pytest.raises(BadPayload, match="declares"):
            await client.get_pixels(ASSET, pixel_body())
    assert time.monotonic() - started < 5
    assert peak_mib() < MARGIN / MiB


async def test_a_gzip_bomb_is_cut_at_the_bound(server: HostileServer, traced: None) -> None:
    server.pixels = "gzip_bomb"
    async with client_for(server) as client:
        with pytest.raises(BadPayload, match="expands past"):
            await client.get_pixels(ASSET, pixel_body(), max_bytes=correct_bound())
    assert server.request_headers[-1]["Accept-Encoding"] == "identity"
    assert peak_mib() < (correct_bound() + MARGIN) / MiB


async def test_a_body_of_no_declared_length_is_cut_at_the_bound(
    server: HostileServer, traced: None
) -> None:
    server.pixels = "endless"
    async with client_for(server) as client:
        with pytest.raises(BadPayload, match="runs past"):
            await client.get_pixels(ASSET, pixel_body(), max_bytes=correct_bound())
    assert peak_mib() < (correct_bound() + MARGIN) / MiB


@pytest.mark.parametrize(
    ("mode", "match"),
    [("huge_length", "declares"), ("gzip_bomb", "expands past"), ("endless", "runs past")],
)
async def test_a_body_passed_on_as_it_arrives_is_bounded_alike(
    server: HostileServer, traced: None, mode: str, match: str
) -> None:
    """``read_into`` (the pipeline's NPY path) keeps every bound ``read_pixels`` keeps."""
    server.pixels = mode
    passed_on = 0

    def sink(piece: bytes) -> None:
        nonlocal passed_on
        passed_on += len(piece)

    async with (
        client_for(server) as client,
        client.stream_pixels(ASSET, pixel_body(), max_bytes=correct_bound()) as body,
    ):
        with pytest.raises(BadPayload, match=match):
            await body.read_into(sink)
    assert passed_on <= correct_bound()
    assert peak_mib() < (correct_bound() + MARGIN) / MiB


async def test_a_correct_body_is_passed_on_whole_in_order(server: HostileServer) -> None:
    async with client_for(server) as client:
        whole = await client.get_pixels(ASSET, pixel_body(), max_bytes=correct_bound())
        pieces: list[bytes] = []
        async with client.stream_pixels(ASSET, pixel_body(), max_bytes=correct_bound()) as body:
            count = await body.read_into(pieces.append)
    assert count == len(whole) and b"".join(pieces) == whole


async def test_a_huge_error_body_is_read_only_in_part(server: HostileServer, traced: None) -> None:
    server.pixels = "huge_error"
    async with client_for(server) as client:
        with pytest.raises(ServerError) as info:
            await client.get_pixels(ASSET, pixel_body())
    assert len(str(info.value)) < 400
    assert peak_mib() < (MAX_ERROR_BYTES + MARGIN) / MiB


def test_an_error_body_nested_too_deep_fails_the_tiles_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out.zarr"
    with hostile_server_thread(pixels="huge_nested_error") as server:
        job = write_job(
            tmp_path / "job.yaml",
            asset=ASSET,
            output=str(output),
            endpoint=server.url,
            credentials="none",
            chunk=16,
            tile=[32, 32],
            concurrency=2,
            retries={"max_attempts": 2, "backoff_base": 0.01, "backoff_cap": 0.05},
        )
        assert main(["run", "--quiet", str(job)]) == 1
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err + captured.out
        assert "4 tile(s) failed" in captured.err and "HTTP 500" in captured.err
        assert len(server.pixel_requests) == 8  # each tile retried, as a 500 is
    assert main(["status", str(output)]) == 1  # not finished, and not said to be
    out = capsys.readouterr().out
    assert "incomplete" in out and "Traceback" not in out


# -- memory: a whole run -----------------------------------------------------------------------


def _job(server: HostileServer, output: Path, **keys: Any) -> Any:
    return parse_job(
        {
            "asset": ASSET,
            "output": str(output),
            "endpoint": server.url,
            "credentials": "none",
            "chunk": 16,
            "tile": [32, 32],
            "concurrency": 4,
            "retries": {
                "max_attempts": 2,
                "backoff_base": 0.01,
                "backoff_cap": 0.05,
                "max_wait": 0.2,
            },
            **keys,
        }
    )


@pytest.mark.parametrize("mode", ["huge_length", "gzip_bomb", "endless", "huge_error"])
async def test_a_run_stays_within_memory_mb(
    server: HostileServer, tmp_path: Path, traced: None, mode: str
) -> None:
    server.pixels = mode
    job = _job(server, tmp_path / "out.zarr", memory_mb=16)
    stats = await run_job(job)
    assert stats.failed == stats.total == 4  # each tile failed, none crashed the run
    reasons = [why for item in stats.items for why in item.failed.values()]
    assert all("gave up after retries" in why for why in reasons)
    assert peak_mib() < job.memory_mb + MARGIN / MiB


# -- waits -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "asked"),
    [("retry_after_day", 86400.0), ("retry_after_1e300", 1e300), ("retry_after_2099", 2e9)],
)
async def test_retry_after_is_capped_at_max_wait(
    server: HostileServer, mode: str, asked: float
) -> None:
    server.pixels = mode
    async with client_for(server, max_wait_s=5.0) as client:
        with pytest.raises((QuotaExceeded, ServerError)) as info:
            await client.get_pixels(ASSET, pixel_body())
    assert info.value.retry_after == 5.0
    assert info.value.asked_wait is not None and info.value.asked_wait >= min(asked, 2e9)


@pytest.mark.parametrize("mode", ["retry_after_day", "retry_after_1e300", "retry_after_2099"])
async def test_a_run_told_to_wait_forever_ends_and_says_so_once(
    server: HostileServer, tmp_path: Path, mode: str
) -> None:
    server.pixels = mode
    job = _job(server, tmp_path / "out.zarr")
    started = time.monotonic()
    stats = await asyncio.wait_for(run_job(job), timeout=30)
    assert time.monotonic() - started < 10
    assert stats.failed == 4
    long_waits = [n for n in stats.notices if "asked to wait" in n]
    assert len(long_waits) == 1, stats.notices
    assert "0.2 s at most" in long_waits[0]


async def test_the_metadata_call_is_capped_too(server: HostileServer, tmp_path: Path) -> None:
    server.metadata_retry_after = "86400"
    server.metadata_failures = 1
    job = _job(server, tmp_path / "out.zarr")
    started = time.monotonic()
    stats = await asyncio.wait_for(run_job(job), timeout=30)
    assert time.monotonic() - started < 10
    assert stats.ok
    assert any("asked to wait 86,400 s" in n for n in stats.notices)


def test_the_cli_prints_the_long_wait_notice_once(tmp_path: Path, capfd: Any) -> None:
    with hostile_server_thread(pixels="retry_after_day") as server:
        job = write_job(
            tmp_path / "job.yaml",
            asset=ASSET,
            output=str(tmp_path / "out.zarr"),
            endpoint=server.url,
            credentials="none",
            chunk=16,
            tile=[32, 32],
            retries={"max_attempts": 2, "backoff_cap": 0.05, "max_wait": 0.1},
        )
        assert main(["run", str(job)]) == 1
    err = capfd.readouterr().err
    assert err.count("asked to wait 86,400 s") == 1


# -- metadata bulkpix cannot use ----------------------------------------------------------------


def _band(**changes: Any) -> dict[str, Any]:
    metadata = good_metadata()
    metadata["bands"][0].update(changes)
    return metadata


def _grid(**changes: Any) -> dict[str, Any]:
    metadata = good_metadata()
    grid = json.loads(json.dumps(metadata["bands"][0]["grid"]))
    for key, value in changes.items():
        section, _, field = key.partition("__")
        grid[section][field] = value
    for band in metadata["bands"]:
        band["grid"] = grid
    return metadata


def _without_band_id() -> dict[str, Any]:
    metadata = good_metadata()
    del metadata["bands"][0]["id"]
    return metadata


def _crs(crs: str) -> dict[str, Any]:
    metadata = good_metadata()
    for band in metadata["bands"]:
        band["grid"] = {**band["grid"], "crsCode": crs}
    return metadata


BAD_METADATA: list[tuple[str, Any, str]] = [
    ("band without id", _without_band_id(), "band 1 has no 'id'"),
    ("bands as a dict", {**good_metadata(), "bands": {"id": "B1"}}, "'bands' is a object"),
    ("bands as a string", {**good_metadata(), "bands": "B1,B2"}, "'bands' is a string"),
    ("width 0", _grid(dimensions__width=0), "width is 0"),
    ("height non-numeric", _grid(dimensions__height="tall"), "height 'tall' is not a whole"),
    ("scaleX 0", _grid(affineTransform__scaleX=0), "degenerate"),
    ("scaleX NaN", _grid(affineTransform__scaleX="NaN"), "scaleX is nan"),
    ("band id with NUL", _band(id="B\x001"), "control characters"),
    ("band named zarr.json", _band(id="zarr.json"), "reserves"),
    ("band id with a slash", _band(id="../B1"), "path separator"),
    ("duplicate band ids", _band(id="B2"), "appears more than once"),
    ("crs EPSG:0", _crs("EPSG:0"), "'EPSG:0' is not one bulkpix can describe"),
    ("nested 100,000 deep", deeply_nested_json(), "nests too deep"),
]


@pytest.fixture(scope="module")
def metadata_server() -> Iterator[HostileServer]:
    with hostile_server_thread() as server:
        yield server


@pytest.mark.parametrize(
    ("name", "metadata", "expected"), BAD_METADATA, ids=[c[0] for c in BAD_METADATA]
)
def test_metadata_bulkpix_cannot_use_is_one_line_and_writes_nothing(
    metadata_server: HostileServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    metadata: Any,
    expected: str,
) -> None:
    if isinstance(metadata, bytes):
        metadata_server.metadata_raw = metadata
    else:
        metadata_server.metadata_raw = None
        metadata_server.metadata = metadata
    output = tmp_path / "out.zarr"
    job = write_job(
        tmp_path / "job.yaml",
        asset=ASSET,
        output=str(output),
        endpoint=metadata_server.url,
        credentials="none",
        chunk=16,
    )
    pixels_before = len(metadata_server.pixel_requests)
    code = main(["run", str(job), "--quiet"])
    captured = capsys.readouterr()
    assert code == 1, captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("bulkpix: error: ")
    assert expected in lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert not output.exists()
    assert len(metadata_server.pixel_requests) == pixels_before


async def test_bad_metadata_is_not_retried(server: HostileServer) -> None:
    server.metadata_raw = deeply_nested_json()
    async with client_for(server) as client:
        with pytest.raises(BadMetadata):
            await client.get_asset(ASSET)
    assert server.metadata_requests == 1


# -- terminal escapes --------------------------------------------------------------------------


def test_printable_strips_control_sequences_whole() -> None:
    assert printable(f"bad{ESCAPES}thing") == "bad thing"
    assert printable("a\u202eb\x00c\x9b31md\x7fe\tf\ng") == "abcde f g"
    assert printable("x" * 50, limit=10) == "xxxxxxx..."


def test_server_escapes_reach_no_terminal_and_no_record(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out.zarr"
    with hostile_server_thread(pixels="escapes") as server:
        job = write_job(
            tmp_path / "job.yaml",
            asset=ASSET,
            output=str(output),
            endpoint=server.url,
            credentials="none",
            chunk=16,
            tile=[32, 32],
        )
        assert main(["run", str(job)]) == 1
    run_output = capfd.readouterr()
    assert main(["status", str(output)]) == 1
    status_output = capfd.readouterr()
    failed = asyncio.run(TileRecord(zarr.storage.LocalStore(str(output)), "").failed())
    assert len(failed) == 4
    for text in [run_output.out, run_output.err, status_output.out, *failed.values()]:
        assert not any(c in text for c in CONTROL), repr(text)
    assert all("bad request really" in why for why in failed.values())
    assert "bad request really" in run_output.err and "bad request really" in status_output.out


# -- which 400 is too large -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        (
            "Total request size (56623104 bytes) must be less than or equal to 50331648 bytes.",
            RequestTooLarge,
        ),
        (
            "Grid dimensions (40000 x 10 pixels) must be less than or equal to 32768 pixels on "
            "each side.",
            RequestTooLarge,
        ),
        ("Number of bands (2000) must be less than or equal to 1024.", TooManyBands),
        ("Scale must be less than or equal to 1e6.", RequestInvalid),
    ],
)
async def test_only_the_limits_on_size_and_bands_split(
    server: HostileServer, message: str, kind: type[Exception]
) -> None:
    from aiohttp import web

    async def refuse(request: web.Request, body: dict[str, Any]) -> web.Response:
        return web.json_response(
            {"error": {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}},
            status=400,
        )

    server._pixels = refuse  # type: ignore[method-assign]
    async with client_for(server) as client:
        with pytest.raises(RequestInvalid) as info:
            await client.get_pixels(ASSET, pixel_body())
    assert type(info.value) is kind


def _requests(server: HostileServer) -> list[tuple[int, int, int]]:
    """(height, width, bands) of every getPixels request."""
    return [
        (r["grid"]["dimensions"]["height"], r["grid"]["dimensions"]["width"], len(r["bandIds"]))
        for r in server.pixel_requests
    ]


def _assert_pixels(output: Path, bands: int) -> None:
    group = zarr.open_group(str(output), mode="r")
    for index in range(bands):
        values = group[f"B{index + 1}"][:]
        assert values.shape == (48, 64)
        assert (values == index + 1).all()  # each band came from its own request


async def test_a_size_400_splits_windows_in_the_pool(server: HostileServer, tmp_path: Path) -> None:
    server.pixels = "too_large_size"
    server.max_request_pixels = 16 * 16
    output = tmp_path / "out.zarr"
    stats = await run_job(_job(server, output, concurrency=2))
    assert stats.ok, [i.failed for i in stats.items]
    sizes = _requests(server)
    refused = [s for s in sizes if s[0] * s[1] > 16 * 16]
    assert refused == [(32, 32, 2), (32, 32, 2), (16, 32, 2), (16, 32, 2)]  # the four tiles
    assert all(b == 2 for _, _, b in sizes)  # never cut by bands: the window was the problem
    _assert_pixels(output, bands=2)
    # Every tile is recorded as finished, and a rerun asks for nothing.
    again = await run_job(_job(server, output))
    assert again.ok and again.finished == 4 and len(server.pixel_requests) == len(sizes)


async def test_a_band_count_400_splits_bands_not_windows(
    server: HostileServer, tmp_path: Path
) -> None:
    server.pixels = "too_large_bands"
    server.metadata = good_metadata(bands=3)
    output = tmp_path / "out.zarr"
    stats = await run_job(_job(server, output))
    assert stats.ok, [i.failed for i in stats.items]
    sizes = _requests(server)
    windows = {(h, w) for h, w, _ in sizes}
    assert windows == {(32, 32), (16, 32)}  # the tiles' own windows, never cut
    assert sorted({b for _, _, b in sizes}) == [1, 2, 3]  # 3 -> 1 + 2 -> 1 + 1 + 1
    _assert_pixels(output, bands=3)


async def test_a_band_count_400_for_one_band_fails_without_splitting(
    server: HostileServer, tmp_path: Path
) -> None:
    # The service refusing even one band: nothing left to cut, each tile fails once.
    from aiohttp import web

    async def refuse(request: web.Request, body: dict[str, Any]) -> web.Response:
        message = f"Number of bands ({len(body['bandIds'])}) must be less than or equal to 0."
        return web.json_response(
            {"error": {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}},
            status=400,
        )

    server._pixels = refuse  # type: ignore[method-assign]
    stats = await run_job(_job(server, tmp_path / "out.zarr"))
    assert stats.failed == 4
    # Each tile: 2 bands, then 1 + 1; no window was cut.
    assert sorted(_requests(server)).count((32, 32, 2)) == 2
    assert {(h, w) for h, w, _ in _requests(server)} == {(32, 32), (16, 32)}
    assert len(server.pixel_requests) == 4 * 3
    reasons = [why for item in stats.items for why in item.failed.values()]
    assert all(why.startswith("2 of 2 parts failed") for why in reasons), reasons


async def test_a_failed_part_is_all_a_rerun_fetches_of_a_split_tile(
    server: HostileServer, tmp_path: Path
) -> None:
    from aiohttp import web

    server.pixels = "too_large_size"
    server.max_request_pixels = 16 * 16
    answer = HostileServer._pixels.__get__(server)
    broken = {"on": True}

    async def one_part_broken(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        affine = body["grid"]["affineTransform"]
        dims = body["grid"]["dimensions"]
        # The second 16 x 16 part of the first tile: 500 every time, while broken.
        first_tile_second_part = (
            dims == {"width": 16, "height": 16}
            and affine["translateX"] == 600160.0
            and affine["translateY"] == 5200000.0
        )
        if broken["on"] and first_tile_second_part:
            return web.Response(status=500, text="broken")
        return await answer(request, body)

    server._pixels = one_part_broken  # type: ignore[method-assign]
    output = tmp_path / "out.zarr"
    stats = await run_job(_job(server, output))
    assert stats.failed == 1 and stats.finished == 3
    [reason] = stats.items[0].failed.values()
    assert reason.startswith("gave up after retries: 1 of 4 parts failed")

    broken["on"] = False
    server.pixel_requests.clear()
    again = await run_job(_job(server, output))
    assert again.ok and again.finished == 4
    # The tile (refused again for its size) and then only its missing part.
    assert _requests(server) == [(32, 32, 2), (16, 16, 2)]
    _assert_pixels(output, bands=2)
